import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

import mabert
from conftest import VECTORS, make_realistic, require_shared, tiny_bert_config, tiny_distilbert_config
from mabert.errors import MABertError
from mabert.export import audit, export_onnx, onnx_feed
from mabert.fuse import (check_fold, fold_norm_into_tables, fold_norm_into_writer, fp32_deviation, fuse,
                         scale_linear)

CONFIGS = {
    "bert-multiply": lambda: tiny_bert_config(),
    "bert-masked-shared-relu-pooler": lambda: tiny_bert_config(softmax_mask_mode="masked", share_softmax_nn=True,
                                                               pooler_act="relu"),
    "distilbert-masked": lambda: tiny_distilbert_config(softmax_mask_mode="masked"),
    "bert-relu-attention": lambda: tiny_bert_config(softmax_mask_mode="masked", attention_kind="relu",
                                                    pooler_act="relu"),
    "distilbert-relu-attention": lambda: tiny_distilbert_config(attention_kind="relu"),
    "bert-poly-attention": lambda: tiny_bert_config(attention_kind="poly", pooler_act="relu"),
    "distilbert-poly-attention": lambda: tiny_distilbert_config(attention_kind="poly", activation_bounds=True),
}


def _padded_batch(length, vocab=64):
    torch.manual_seed(3)
    ids = torch.randint(5, vocab, (3, length))
    mask = torch.ones(3, length, dtype=torch.long)
    mask[1, length // 2:] = 0
    mask[2, 2:] = 0
    return ids, mask


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("reassociate", [True, False])
def test_fused_matches_unfused_on_padded_batches(name, reassociate):
    model = make_realistic(AutoModelForSequenceClassification.from_config(CONFIGS[name]()))
    fused = fuse(model, reassociate=reassociate)
    assert not any(isinstance(m, mabert.PowerNorm) for m in fused.modules())
    for length in (16, 7):
        ids, mask = _padded_batch(length)
        with torch.no_grad():
            want = model(ids, attention_mask=mask).logits
            got = fused(ids, attention_mask=mask)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_fuses_released_checkpoint_exactly():
    folder = require_shared(VECTORS / "D-ma-bert-seqcls")
    model = mabert.from_original_checkpoint(folder / "state_dict.pt", original_config=folder / "config.json")
    io = torch.load(folder / "io.pt", weights_only=True)
    with torch.no_grad():
        got = fuse(model)(io["input_ids"], io["attention_mask"], io["token_type_ids"])
    torch.testing.assert_close(got, io["logits"], atol=1e-5, rtol=0)


def test_folds_are_exact_in_float64():
    """Each fold against the computation it replaces, on random float64 data."""
    g = torch.Generator().manual_seed(0)
    x, h = torch.randn(5, 6, dtype=torch.float64, generator=g), torch.randn(5, 4, dtype=torch.float64, generator=g)
    w, b = torch.randn(4, 6, dtype=torch.float64, generator=g), torch.randn(4, dtype=torch.float64, generator=g)
    s, t = torch.rand(4, dtype=torch.float64, generator=g) + 0.1, torch.randn(4, dtype=torch.float64, generator=g)
    fw, fb = fold_norm_into_writer(w, b, s, t)
    torch.testing.assert_close(h * s + x @ fw.T + fb, s * (h + x @ w.T + b) + t, rtol=0, atol=1e-12)
    qw, qb = scale_linear(w, b, 0.125)
    torch.testing.assert_close(x @ qw.T + qb, 0.125 * (x @ w.T + b), rtol=0, atol=1e-12)
    word, pos, typ = (torch.randn(n, 4, dtype=torch.float64, generator=g) for n in (7, 3, 2))
    fword, fpos, ftyp = fold_norm_into_tables(word, pos, typ, s, t)
    torch.testing.assert_close(fword[5] + fpos[1] + ftyp[1], s * (word[5] + pos[1] + typ[1]) + t, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", CONFIGS)
def test_fold_check_is_exact_and_catches_a_wrong_fold(name, monkeypatch):
    model = make_realistic(AutoModelForSequenceClassification.from_config(CONFIGS[name]()))
    assert check_fold(model) < 1e-12
    import mabert.fuse as fuse_module

    # a fold that is wrong by one part in a million is a bug the float64 check must see
    monkeypatch.setattr(fuse_module, "scale_linear", lambda w, b, f: (w * f * (1 + 1e-6), b * f))
    with pytest.raises(MABertError, match="fold is wrong"):
        fuse(model)


def test_fp32_deviation_is_measured_not_failed():
    model = make_realistic(AutoModelForSequenceClassification.from_config(CONFIGS["bert-multiply"]()))
    fused = fuse(model)
    deviation = fp32_deviation(model, fused, [_padded_batch(16), _padded_batch(9)])
    assert 0 < deviation < 1e-5
    nan_fused = lambda ids, attention_mask=None, token_type_ids=None: torch.full((ids.shape[0], 2), float("nan"))
    assert fp32_deviation(model, nan_fused, [_padded_batch(16)]) == float("inf")


def test_zero_scale_channel_still_fuses():
    """The fold multiplies by the norm scales (it never divides), so a dead channel is fine."""
    model = make_realistic(AutoModelForSequenceClassification.from_config(CONFIGS["bert-multiply"]()))
    model.bert.encoder.layer[0].output.LayerNorm.weight.data[3] = 0.0
    fused = fuse(model)
    ids, mask = _padded_batch(16)
    with torch.no_grad():
        torch.testing.assert_close(fused(ids, attention_mask=mask), model(ids, attention_mask=mask).logits,
                                   atol=1e-5, rtol=1e-4)


def test_refuses_what_cannot_be_fused_exactly():
    with pytest.raises(MABertError, match="only PowerNorm"):
        fuse(AutoModelForSequenceClassification.from_config(tiny_bert_config(norm_type="layer")))
    with pytest.raises(MABertError, match="real softmax"):
        fuse(AutoModelForSequenceClassification.from_config(tiny_bert_config(use_softmax_approx=False)))


@pytest.mark.parametrize("name", CONFIGS)
def test_onnx_matches_pytorch_and_passes_audit(name, tmp_path):
    import onnxruntime as ort

    model = make_realistic(AutoModelForSequenceClassification.from_config(CONFIGS[name]()))
    path = export_onnx(fuse(model), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for length in (16, 9):  # dynamic sequence axis
        ids, mask = _padded_batch(length)
        feed = onnx_feed(session, ids.numpy(), mask.numpy())
        with torch.no_grad():
            want = model(ids, attention_mask=mask).logits.numpy()
        np.testing.assert_allclose(session.run(None, feed)[0], want, atol=1e-5, rtol=1e-4)
    report = audit(path)
    has_tanh = model.config.to_dict().get("pooler_act") == "tanh"
    assert report["passed"] is (not has_tanh), report
    if has_tanh:
        assert report["forbidden"] == {"Tanh": 1}  # the BERT pooler, reported by name
    assert report["op_counts"]["MatMul"] > 0 and "Softmax" not in report["op_counts"]


def test_plain_bert_fails_audit_naming_ops(tmp_path, capsys):
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                                    num_attention_heads=4, intermediate_size=48)).eval()
    path = export_onnx(bert, tmp_path / "bert.onnx")
    report = audit(path)
    assert not report["passed"]
    assert {"Softmax", "Erf", "Tanh"} <= set(report["forbidden"])
    assert {"LayerNormalization", "Sqrt"} & set(report["forbidden"])
    from mabert.cli import main

    assert main(["audit", str(path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "Softmax" in out


def test_cli_fuse_export_audit(tmp_path, tiny_vocab):
    from mabert.cli import main

    model = make_realistic(AutoModelForSequenceClassification.from_config(
        tiny_bert_config(pooler_act="identity", softmax_mask_mode="masked")))
    model.save_pretrained(tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "m.onnx")]) == 0
    assert main(["audit", str(tmp_path / "m.onnx")]) == 0
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "x.onnx")]) == 2
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("attention", ["approximator", "poly"])
@pytest.mark.parametrize("percentile", [False, True])
def test_static_int8_follows_the_fp32_graph(tmp_path, percentile, attention):
    """Calibrated on feeds of varying batch size and length (percentile ranges stack every feed's activations,
    so the feeds are split into rows and padded), the int8 graph stays close to fp32 and passes the audit;
    with PolySoftmax the attention stays fp32."""
    import onnx

    from mabert.quantize import ATTENTION_SCOPE, POLY_SOFTMAX_SCOPE, onnx_predict, quantize_static_int8

    model = make_realistic(AutoModelForSequenceClassification.from_config(
        tiny_bert_config(softmax_mask_mode="masked", pooler_act="relu", attention_kind=attention)))
    fp32 = export_onnx(fuse(model), tmp_path / "m.onnx")
    generator = np.random.default_rng(0)
    feeds = [{"input_ids": generator.integers(5, 64, (batch, length)), "attention_mask": np.ones((batch, length), int)}
             for batch, length in ((4, 9), (3, 16), (1, 5), (4, 12))]
    int8 = quantize_static_int8(fp32, tmp_path / "q.onnx", feeds, percentile=percentile)
    batches = [_padded_batch(16), _padded_batch(9)]
    batches = [(ids.numpy(), mask.numpy()) for ids, mask in batches]
    want, got = onnx_predict(fp32, batches), onnx_predict(int8, batches)
    assert np.abs(got - want).max() < 0.15 * np.abs(want).max()
    assert audit(int8)["passed"]
    nodes = onnx.load(str(int8)).graph.node
    assert any(POLY_SOFTMAX_SCOPE in n.name for n in nodes) is (attention == "poly")
    if attention == "poly":
        assert not any(n.op_type.startswith("QLinear") for n in nodes if ATTENTION_SCOPE in n.name)
