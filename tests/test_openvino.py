import csv
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

pytest.importorskip("openvino")

from conftest import default_sigint, make_realistic, tiny_bert_config, tiny_distilbert_config  # noqa: E402
from mabert.cli import main  # noqa: E402
from mabert.errors import MABertError  # noqa: E402
from mabert.export import export_onnx  # noqa: E402
from mabert.fuse import fuse  # noqa: E402
from mabert.openvino_runtime import (export_openvino, length_limit, openvino_call, openvino_candidates,  # noqa: E402
                                     openvino_profile, read_model)
from mabert.predict import onnx_call  # noqa: E402

CONFIGS = {
    "bert-masked": lambda: tiny_bert_config(softmax_mask_mode="masked", pooler_act="relu"),
    "bert-multiply-tanh-pooler": lambda: tiny_bert_config(),
    "distilbert-masked": lambda: tiny_distilbert_config(softmax_mask_mode="masked"),  # no token_type_ids input
}


def padded_batch(rows, length, seed=0, vocab=64):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (rows, length))
    mask = np.ones_like(ids)
    for row in range(1, rows):  # row 0 full, the others padded to different lengths
        mask[row, int(rng.integers(2, length + 1)):] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def calibration(count=32, seed=1):
    """Unpadded single-row inputs of varied lengths (what text_calibration_feeds gives)."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        length = int(rng.integers(4, 17))
        ids = rng.integers(5, 64, (1, length))
        feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    return feeds


def fused_onnx(tmp_path, config, seed=0, name="m.onnx"):
    model = make_realistic(AutoModelForSequenceClassification.from_config(config), seed=seed)
    return export_onnx(fuse(model), tmp_path / name)


@pytest.mark.parametrize("name", CONFIGS)
def test_fp32_matches_onnx_runtime_on_padded_batches(name, tmp_path):
    onnx_path = fused_onnx(tmp_path, CONFIGS[name]())
    info = export_openvino(onnx_path, tmp_path / "ov")
    assert info["max_sequence_length"] == 16
    assert {"openvino_model.xml", "openvino_model.bin"} <= {p.name for p in (tmp_path / "ov").iterdir()}
    model = read_model(tmp_path / "ov")
    assert length_limit(model) == 16
    assert all(port.get_partial_shape().is_dynamic and port.get_partial_shape()[0].is_dynamic
               and port.get_partial_shape()[1].is_dynamic for port in model.inputs)
    ort, ov = onnx_call(onnx_path, threads=1), openvino_call(tmp_path / "ov", threads=1)
    for rows, length in ((3, 16), (5, 9)):  # dynamic batch and sequence axes
        feed = padded_batch(rows, length, seed=length)
        got = ov(feed)
        assert got.shape == (rows, 2) and got.dtype == np.float32
        np.testing.assert_allclose(got, ort(feed), atol=1e-5, rtol=1e-4)
    with pytest.raises(MABertError, match="longer than this MA model takes"):
        ov(padded_batch(2, 20))


def test_plain_bert_converts_and_matches(tmp_path):
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=48)).eval()
    onnx_path = export_onnx(bert, tmp_path / "bert.onnx")
    export_openvino(onnx_path, tmp_path / "ov")
    assert length_limit(read_model(tmp_path / "ov")) is None
    ov, ort = openvino_call(tmp_path / "ov"), onnx_call(onnx_path)
    for length in (24, 7):
        feed = padded_batch(3, length)
        np.testing.assert_allclose(ov(feed), ort(feed), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attention", ["approximator", "poly"])
def test_int8_is_quantized_finite_and_agrees_with_fp32(tmp_path, attention):
    config = tiny_bert_config(softmax_mask_mode="masked", pooler_act="relu", num_labels=3, attention_kind=attention)
    onnx_path = fused_onnx(tmp_path, config, seed=1)
    info = export_openvino(onnx_path, tmp_path / "ov", int8=True, calibration_feeds=calibration())
    assert "openvino_model_int8.xml" in info["files"]
    quantized = read_model(tmp_path / "ov" / "openvino_model_int8.xml")
    assert any(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    assert length_limit(quantized) == 16
    fp32 = openvino_call(tmp_path / "ov", threads=1)
    int8 = openvino_call(tmp_path / "ov" / "openvino_model_int8.xml", threads=1)
    feeds = [padded_batch(8, length, seed=length) for length in (16, 12, 9, 5)]
    want = np.concatenate([fp32(f) for f in feeds])
    got = np.concatenate([int8(f) for f in feeds])
    assert got.shape == want.shape == (32, 3) and np.isfinite(got).all()
    # measured: agreement 0.95-1.0 and max error ~0.1 of the largest logit on such models (seeds 0-2)
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.8
    assert np.abs(got - want).max() <= 0.25 * np.abs(want).max()
    assert not np.allclose(got, want, atol=1e-6)  # it really runs quantized
    if attention == "poly":  # its attention (scores, softmax, ·v) stays fp32
        names = [op.get_friendly_name() for op in quantized.get_ops() if op.get_type_name() == "FakeQuantize"]
        assert names and not any("/approximator/" in name for name in names)


def test_int8_needs_calibration(tmp_path):
    onnx_path = fused_onnx(tmp_path, CONFIGS["bert-masked"]())
    with pytest.raises(MABertError, match="calibration"):
        export_openvino(onnx_path, tmp_path / "ov", int8=True)
    assert not (tmp_path / "ov").exists()


def test_refuses_to_replace_the_folder_holding_its_input(tmp_path):
    (tmp_path / "exp").mkdir()
    onnx_path = fused_onnx(tmp_path / "exp", CONFIGS["bert-masked"]())
    with pytest.raises(MABertError, match="input"):
        export_openvino(onnx_path, tmp_path / "exp")
    assert onnx_path.is_file()


def test_missing_openvino_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino → ImportError
    with pytest.raises(MABertError, match=r"OpenVINO is not installed: pip install 'mabert\[openvino\]'"):
        openvino_call(tmp_path)


def test_candidates_and_profile(tmp_path):
    ma_onnx = fused_onnx(tmp_path, CONFIGS["bert-masked"](), name="ma.onnx")
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                                    num_attention_heads=4, intermediate_size=48)).eval()
    bert_onnx = export_onnx(bert, tmp_path / "bert.onnx")
    candidates = openvino_candidates(ma_onnx, bert_onnx, calibration(16), tmp_path / "work", threads=1)
    assert set(candidates) == {("ma", "fp32"), ("ma", "int8"), ("bert", "fp32"), ("bert", "int8")}
    feed = padded_batch(4, 12)
    for key, (call, xml) in candidates.items():
        logits = call(feed)
        assert logits.shape == (4, 2) and np.isfinite(logits).all() and xml.is_file(), key
    np.testing.assert_allclose(candidates["ma", "fp32"][0](feed), onnx_call(ma_onnx)(feed), atol=1e-5, rtol=1e-4)
    assert set(openvino_candidates(ma_onnx, bert_onnx, None, tmp_path / "work2", 1)) == {("ma", "fp32"),
                                                                                         ("bert", "fp32")}
    times = openvino_profile(candidates["ma", "int8"][1], feed, threads=1, runs=2)
    assert times and all(ms >= 0 for ms in times.values())
    assert list(times.values()) == sorted(times.values(), reverse=True)


# --- CLI: mabert export --openvino, mabert predict on the IR ---------------------------------------------------
@pytest.fixture
def model_dir(tmp_path, tiny_vocab):
    from test_predict import model_dir as make_model_dir

    return make_model_dir(tmp_path, tiny_vocab)


def test_cli_export_openvino_and_int8_refusal(tmp_path, model_dir, capsys):
    model, path = model_dir
    assert main(["export", str(path), str(tmp_path / "exp"), "--openvino", "--int8"]) == 2
    assert "--calibration-texts" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()
    assert main(["export", str(path), str(tmp_path / "m.onnx"), "--openvino"]) == 2
    assert main(["export", str(path), str(tmp_path / "exp"), "--calibration-texts", str(tmp_path / "t.txt")]) == 2
    assert not (tmp_path / "exp").exists() and not (tmp_path / "m.onnx").exists()

    (tmp_path / "texts.txt").write_text("the movie was great\nbad plot and boring acting\ni liked the story .\n"
                                        "a very good film\nit is not fun\nterrible acting , hated it\n")
    assert main(["export", str(path), str(tmp_path / "exp"), "--openvino", "--int8",
                 "--calibration-texts", str(tmp_path / "texts.txt")]) == 0
    names = {p.name for p in (tmp_path / "exp").iterdir()}
    assert {"model.onnx", "model_quantized.onnx", "openvino_model.xml", "openvino_model.bin",
            "openvino_model_int8.xml", "openvino_model_int8.bin", "config.json", "README.md"} <= names
    assert "openvino_model_int8.xml" in capsys.readouterr().out
    assert "OpenVINO IR: openvino_model.xml, openvino_model_int8.xml" in (tmp_path / "exp" / "README.md").read_text()


@pytest.mark.parametrize("int8", [False, True])
def test_optimum_intel_runs_the_export_dir_in_pipeline(tmp_path, model_dir, int8):
    optimum_intel = pytest.importorskip("optimum.intel")
    from transformers import BertTokenizerFast, pipeline

    from test_longtext import reference_logits

    model, path = model_dir
    (tmp_path / "texts.txt").write_text("the movie was great\nbad plot and boring acting\ni liked the story .\n" * 3)
    assert main(["export", str(path), str(tmp_path / "exp"), "--openvino", "--int8",
                 "--calibration-texts", str(tmp_path / "texts.txt")]) == 0
    assert "OVModelForSequenceClassification" in (tmp_path / "exp" / "README.md").read_text()
    ov_model = optimum_intel.OVModelForSequenceClassification.from_pretrained(
        str(tmp_path / "exp"), file_name="openvino_model_int8.xml" if int8 else "openvino_model.xml",
        ov_config={"INFERENCE_PRECISION_HINT": "f32"})  # as mabert's own OpenVINO runs: never a reduced precision
    tokenizer = BertTokenizerFast.from_pretrained(tmp_path / "exp")
    classify = pipeline("text-classification", model=ov_model, tokenizer=tokenizer, top_k=None)
    texts = ["the movie was great", "i hated the boring plot", "good", " ".join(["the movie was great"] * 10)]
    for text, scores in zip(texts, classify(texts, truncation=True)):  # the last is cut to L by truncation=True
        want = torch.softmax(torch.from_numpy(reference_logits(model, tokenizer, text, "truncate")[0]), -1)
        got = {s["label"]: s["score"] for s in scores}
        np.testing.assert_allclose([got["neg"], got["pos"]], want.numpy(), atol=0.05 if int8 else 1e-4)


def test_cli_predict_openvino_matches_onnx(tmp_path, model_dir):
    from test_longtext import long_text

    model, path = model_dir
    assert main(["export", str(path), str(tmp_path / "exp"), "--openvino"]) == 0
    texts = [long_text(n, n) for n in (3, 25, 9, 14, 1, 7)]
    (tmp_path / "in.csv").write_text("text\n" + "\n".join(texts) + "\n")
    export_openvino(tmp_path / "exp" / "model.onnx", tmp_path / "ir-only")  # a folder whose only graph is the IR
    outputs = {}
    for name, target, extra in (("onnx", tmp_path / "exp", []),
                                ("openvino", tmp_path / "exp" / "openvino_model.xml", []),
                                ("ir-only", tmp_path / "ir-only", ["--tokenizer", str(tmp_path / "exp")])):
        assert main(["predict", str(target), "--input", str(tmp_path / "in.csv"), "--out", str(tmp_path / f"{name}.csv"),
                     "--long-text", "windows", "--batch-size", "4", "--threads", "1", *extra]) == 0
        with open(tmp_path / f"{name}.csv", newline="") as handle:
            outputs[name] = list(csv.DictReader(handle))
    for name in ("openvino", "ir-only"):
        assert [r["label"] for r in outputs[name]] == [r["label"] for r in outputs["onnx"]]
        np.testing.assert_allclose([float(r["prob_pos"]) for r in outputs[name]],
                                   [float(r["prob_pos"]) for r in outputs["onnx"]], atol=1e-5)


@pytest.mark.slow
def test_bench_times_openvino_beside_onnxruntime(tmp_path, capsys):
    from mabert.bench import fixed_workload, format_benchmark, random_pair, run_benchmark

    teacher, student = random_pair("tiny")
    report = run_benchmark(teacher, student, tmp_path, workloads=[fixed_workload(teacher.config.vocab_size, 2, 32)],
                           max_rounds=2, quiet=True, openvino=True)
    work = report["workloads"]["b2-s32"]
    rows = {row["name"]: row for row in work["candidates"]}
    openvino = {name for name, row in rows.items() if row["runtime"] == "openvino"}
    assert openvino == {"BERT OpenVINO fp32", "BERT OpenVINO int8 (NNCF)", "MA fused OpenVINO fp32",
                        "MA fused OpenVINO int8 (NNCF)"}
    pairs = {(r["candidate"]["name"], r["baseline"]["name"]) for r in work["ratios"]}
    assert {("MA fused OpenVINO fp32", "BERT OpenVINO fp32"),
            ("MA fused OpenVINO int8 (NNCF)", "BERT OpenVINO int8 (NNCF)")} <= pairs  # like with like
    assert all(0 < rows[name]["floor_share"] for name in openvino)
    profiled = {row["name"]: row["op_times_ms"] for row in report["op_profile"]["candidates"]}
    assert openvino <= set(profiled) and all(profiled[name] for name in openvino)
    assert "MA fused OpenVINO int8 (NNCF) vs BERT OpenVINO int8 (NNCF)" in format_benchmark(report)


def test_bench_without_openvino_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert main(["bench", "--shape", "tiny", "--openvino", "--out", str(tmp_path / "b")]) == 2
    assert "OpenVINO is not installed" in capsys.readouterr().err and not (tmp_path / "b").exists()


CTRL_C_AFTER_OPENVINO = r'''
import gc, signal, sys
import numpy as np
from mabert.openvino_runtime import openvino_call
calls = [openvino_call(sys.argv[1], threads=1) for _ in range(2)]  # as `mabert bench` does: several models
for call in calls:
    call({"input_ids": np.full((1, 4), 7), "attention_mask": np.ones((1, 4), dtype=np.int64)})
del calls, call
gc.collect()  # the compiled models, and with them the CPU plugins they loaded, are gone
try:
    signal.raise_signal(signal.SIGINT)
except KeyboardInterrupt:
    print("interrupted cleanly")
'''


def test_ctrl_c_after_openvino_is_a_clean_interrupt(tmp_path):
    """Each OpenVINO Core's CPU plugin gives the main thread an alternate signal stack; with two Cores gone (as after
    `mabert bench --openvino`) the installed one was freed memory and a Ctrl-C crashed the process with SIGSEGV
    (this test: exit -11). mabert keeps one Core for the process, so the plugin and its stack stay alive."""
    ma_onnx = fused_onnx(tmp_path, CONFIGS["bert-masked"](), name="ma.onnx")
    export_openvino(ma_onnx, tmp_path / "ov")
    done = subprocess.run([sys.executable, "-c", CTRL_C_AFTER_OPENVINO, str(tmp_path / "ov")], capture_output=True,
                          text=True, timeout=120, preexec_fn=default_sigint)
    assert done.returncode == 0 and done.stdout.strip() == "interrupted cleanly", (done.returncode, done.stderr[-500:])
