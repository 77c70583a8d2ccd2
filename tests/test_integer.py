"""Integer-only export: ONNX Runtime reproduces the NumPy reference bit for bit, the integers approximate the fp32
model, no float tensor is computed inside the graph, and the CLI writes and checks it."""
from fractions import Fraction

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import make_realistic, tiny_bert_config, tiny_distilbert_config
from mabert.bounds import calibrate_bounds
from mabert.errors import MABertError
from mabert.export import audit, export_integer_onnx, export_onnx, ort_session
from mabert.fuse import fuse
from mabert.integer_model import add_step, build_integer_model
from mabert.integer_onnx import read_integer_onnx, save_integer_onnx
from mabert.integer_reference import integer_logits, requantize

CONFIGS = {
    "bert-approximator-bounded": lambda: tiny_bert_config(softmax_mask_mode="masked", pooler_act="relu",
                                                          activation_bounds=True),
    "bert-shared-identity-pooler": lambda: tiny_bert_config(softmax_mask_mode="masked", share_softmax_nn=True,
                                                            pooler_act="identity"),
    "bert-multiply-unmasked-outputs": lambda: tiny_bert_config(pooler_act="relu"),
    "bert-relu-attention": lambda: tiny_bert_config(softmax_mask_mode="masked", attention_kind="relu",
                                                    pooler_act="relu", activation_bounds=True),
    "distilbert-approximator": lambda: tiny_distilbert_config(softmax_mask_mode="masked", activation_bounds=True),
}


def _feeds(count=24, vocab=64, longest=16, seed=0):
    """Single-row inputs of varied lengths, as text calibration gives them."""
    generator = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        length = int(generator.integers(2, longest + 1))
        ids = generator.integers(5, vocab, (1, length)).astype(np.int64)
        feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    return feeds


def _padded_batches(vocab=64, seed=1):
    """Padded and full batches up to L, one token repeated, random ids."""
    generator = np.random.default_rng(seed)
    for length in (1, 7, 16):
        ids = generator.integers(5, vocab, (4, length)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[1, max(1, length // 2):] = 0
        mask[3, 1:] = 0
        yield ids, mask
    yield np.full((2, 16), vocab - 1, dtype=np.int64), np.ones((2, 16), dtype=np.int64)


def _model(name, seed=0):
    torch.manual_seed(seed)
    model = make_realistic(AutoModelForSequenceClassification.from_config(CONFIGS[name]()), seed=seed)
    if model.config.activation_bounds:
        batches = [(torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"])) for f in _feeds(seed=5)]
        calibrate_bounds(model, batches, lambda m, b: m(b[0], attention_mask=b[1]))
    return model.eval()


def _built(name):
    model = _model(name)
    fused = fuse(model)
    batches = [tuple(torch.from_numpy(f[k]) for k in ("input_ids", "attention_mask")) for f in _feeds()]
    return model, fused, *build_integer_model(fused, batches)


@pytest.mark.parametrize("name", CONFIGS)
def test_onnx_runtime_reproduces_the_reference_exactly(name, tmp_path):
    model, _, params, meta = _built(name)
    path = save_integer_onnx(params, meta, tmp_path / "int.onnx", {"max_sequence_length": "16"})
    read_params, read_meta = read_integer_onnx(path)
    assert read_meta == meta and read_params.keys() == params.keys()
    for key, value in params.items():  # every constant, decoded from the graph, is the one built
        np.testing.assert_array_equal(read_params[key], value, err_msg=key)
        assert read_params[key].dtype == value.dtype, key
    session = ort_session(path, 2)
    names = {i.name for i in session.get_inputs()}
    for clamp in ("classifier", *(k[:-len(".low")] for k in params if k.endswith(".low"))):
        room = params[f"{clamp}.high"].astype(np.int64) - params[f"{clamp}.low"]
        assert room.max() < 2 ** 31, clamp  # the graph's int32 hi − lo must not wrap
    for ids, mask in _padded_batches():
        types = (ids % 2) * mask  # both token types where the model has them
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        got_int, = session.run(["logits_int"], {k: v for k, v in feed.items() if k in names})
        want = integer_logits(params, meta, ids, mask, types)
        assert got_int.dtype == np.int32
        np.testing.assert_array_equal(got_int, want)
        got, = session.run(["logits"], {k: v for k, v in feed.items() if k in names})
        np.testing.assert_allclose(got, want * params["logit_scale"].astype(np.float64), rtol=1e-6)


@pytest.mark.parametrize("name", CONFIGS)
def test_integer_logits_approximate_the_fp32_model(name):
    model, fused, params, meta = _built(name)
    feeds = _feeds(count=16, seed=9)  # not the calibration inputs
    for feed in feeds:
        ids, mask = feed["input_ids"], feed["attention_mask"]
        with torch.no_grad():
            want = model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.double().numpy()
        got = integer_logits(params, meta, ids, mask) * params["logit_scale"].astype(np.float64)
        spread = np.abs(want).max() + 1e-3
        assert np.abs(got - want).max() <= 0.1 * spread, (name, got, want)


@pytest.mark.parametrize("name", ["bert-approximator-bounded", "distilbert-approximator", "bert-relu-attention"])
def test_padding_changes_no_bit_of_a_row(name):
    _, _, params, meta = _built(name)
    ids = np.random.default_rng(3).integers(5, 64, (1, 6)).astype(np.int64)
    alone = integer_logits(params, meta, ids, np.ones_like(ids))
    padded_ids = np.concatenate([ids, np.zeros((1, 10), np.int64)], axis=1)
    padded_mask = np.concatenate([np.ones_like(ids), np.zeros((1, 10), np.int64)], axis=1)
    np.testing.assert_array_equal(integer_logits(params, meta, padded_ids, padded_mask), alone)


def test_requantization_rounds_half_up_like_exact_rationals():
    """y = clamp(round-half-up(Σ acc·m + b)) for multipliers and bias as the step stores them."""
    params = {}
    generator = np.random.default_rng(0)
    m0, m1, bias = generator.uniform(-0.02, 0.02, 5), generator.uniform(0, 0.5, 5), generator.uniform(-3, 3, 5)
    add_step(params, "s", [m0, m1], bias, [2 ** 20, 127], np.full(5, -100, np.int32), np.full(5, 90, np.int32))
    acc0 = generator.integers(-2 ** 20, 2 ** 20, (50, 5))
    acc1 = generator.integers(-127, 128, (50, 5))
    got = requantize(params, "s", [acc0, acc1])
    shift = int(params["s.shift"])
    for row in range(50):
        for ch in range(5):
            exact = (Fraction(int(acc0[row, ch]) * int(params["s.m0"][ch]) + int(acc1[row, ch]) * int(params["s.m1"][ch])
                              + int(params["s.bias"][ch]), 2 ** shift) + Fraction(1, 2))
            want = min(max(exact.numerator // exact.denominator, -100), 90)
            assert got[row, ch] == want
    # and the stored integers are the real multipliers to within their rounding
    np.testing.assert_allclose(params["s.m0"] / 2.0 ** shift, m0, atol=2.0 ** -shift)


@pytest.mark.parametrize("name", CONFIGS)
def test_calibration_trace_is_the_fused_forward(name):
    """The float trace that calibrates the scales computes what the fused model computes."""
    from mabert.integer_model import _Ranges, _double_copy, _trace_layer

    _, fused, _, _ = _built(name)
    model = _double_copy(fused)
    ids, mask = next(iter(_padded_batches(seed=4)))
    ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
    keymask = model.key_mask(mask, torch.float64)
    r = model.embed(ids)
    with torch.no_grad():
        for layer in model.layers:
            torch.testing.assert_close(_trace_layer(layer, r, keymask, _Ranges(), "x"), layer(r, keymask),
                                       rtol=1e-12, atol=1e-12)
            r = layer(r, keymask)


def test_a_channel_that_never_fires_and_steps_that_cannot_fit(tmp_path):
    model = _model("bert-approximator-bounded")
    with torch.no_grad():  # one feed-forward channel that no input turns on
        for layer in model.bert.encoder.layer:
            layer.intermediate.dense.weight[3] = 0.0
            layer.intermediate.dense.bias[3] = -1.0
    fused = fuse(model)
    feeds = _feeds()
    params, meta = build_integer_model(fused, [tuple(torch.from_numpy(f[k]) for k in ("input_ids", "attention_mask"))
                                               for f in feeds])
    session = ort_session(save_integer_onnx(params, meta, tmp_path / "int.onnx", {}), 2)
    for ids, mask in _padded_batches():
        got, = session.run(["logits_int"], {"input_ids": ids, "attention_mask": mask,
                                            "token_type_ids": np.zeros_like(ids)})
        np.testing.assert_array_equal(got, integer_logits(params, meta, ids, mask))
    with pytest.raises(MABertError, match="do not fit int32"):
        add_step({}, "s", [np.array([4.0])], 0.0, [2 ** 28], np.int32(-127), np.int32(127))
    with pytest.raises(MABertError, match="calibration text"):
        build_integer_model(fused, [])
    with pytest.raises(MABertError, match="calibration text"):
        export_integer_onnx(model, tmp_path / "none.onnx", [])


def test_audit_counts_float_tensors(tmp_path):
    model, fused, params, meta = _built("bert-approximator-bounded")
    integer = audit(save_integer_onnx(params, meta, tmp_path / "int.onnx", {}))
    assert integer["passed"] and integer["float_activations"] == 0
    assert {"MatMulInteger", "DequantizeLinear"} <= integer["op_counts"].keys()
    assert "MatMul" not in integer["op_counts"]
    float_graph = audit(export_onnx(fused, tmp_path / "fp32.onnx"))
    assert float_graph["passed"] and float_graph["float_activations"] > 0


def test_export_refuses_what_has_no_integer_form(tmp_path):
    batch = (torch.from_numpy(_feeds()[0]["input_ids"]), torch.from_numpy(_feeds()[0]["attention_mask"]))
    with pytest.raises(MABertError, match="pooler"):  # BERT's default tanh pooler
        build_integer_model(fuse(make_realistic(AutoModelForSequenceClassification.from_config(
            tiny_bert_config(softmax_mask_mode="masked")))), [batch])
    plain = AutoModelForSequenceClassification.from_config(tiny_bert_config(use_softmax_approx=False))
    with pytest.raises(MABertError):
        export_integer_onnx(plain, tmp_path / "x.onnx", _feeds())
    assert not (tmp_path / "x.onnx").exists()


def test_a_graph_that_disagrees_with_its_reference_is_not_written(tmp_path, monkeypatch):
    import mabert.integer_onnx as integer_onnx

    model = _model("bert-approximator-bounded")
    real_graph = integer_onnx.integer_graph

    def off_by_one(params, meta):  # a graph-only constant (not read back into the reference) one unit off
        graph = real_graph(params, meta)
        for init in graph.graph.initializer:
            if init.name == "pooler.onnx_offset_quotient":
                from onnx import numpy_helper

                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 1, init.name))
        return graph

    monkeypatch.setattr(integer_onnx, "integer_graph", off_by_one)
    with pytest.raises(MABertError, match="does not reproduce"):
        export_integer_onnx(model, tmp_path / "int.onnx", _feeds())
    assert list(tmp_path.iterdir()) == []


def test_cli_exports_the_integer_graph_into_a_directory(tmp_path, tiny_vocab):
    from transformers import BertTokenizerFast

    from mabert.cli import main

    model = _model("bert-approximator-bounded")
    model.save_pretrained(tmp_path / "m")
    BertTokenizerFast(vocab_file=str(tiny_vocab)).save_pretrained(tmp_path / "m")
    texts = tmp_path / "texts.txt"
    texts.write_text("the movie was great\nnot fun and very boring\ni liked the acting .\n")
    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "m"), str(out), "--integer"]) == 2  # calibration texts are required
    assert not out.exists()
    assert main(["export", str(tmp_path / "m"), str(out), "--integer", "--calibration-texts", str(texts),
                 "--audit"]) == 0
    assert (out / "model_integer.onnx").is_file()
    card = (out / "README.md").read_text()
    assert "integer-only graph model_integer.onnx" in card and "NumPy reference" in card
    assert audit(out / "model_integer.onnx")["float_activations"] == 0
    single = tmp_path / "single.onnx"
    assert main(["export", str(tmp_path / "m"), str(single), "--integer", "--calibration-texts", str(texts),
                 "--audit"]) == 0
    params, meta = read_integer_onnx(single)
    assert meta["attention"] == "approximator" and meta["layers"] == 2
