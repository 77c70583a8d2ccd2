"""Activation bounds: a bounded MA model stays finite on any input, and its clamps are what fuse/ONNX compute."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

import mabert
from conftest import make_realistic, tiny_bert_config, tiny_distilbert_config
from mabert.bounds import ActivationBound, activation_bounds, calibrate_bounds, relu_clamp
from mabert.export import audit, export_onnx, onnx_feed
from mabert.fuse import fuse

FAMILIES = {"bert": tiny_bert_config, "distilbert": tiny_distilbert_config}


def _model(family, std=0.15, **overrides):
    torch.manual_seed(0)
    if family == "bert":
        overrides.setdefault("pooler_act", "relu")
    config = FAMILIES[family](softmax_mask_mode="masked", activation_bounds=True, **overrides)
    return make_realistic(AutoModelForSequenceClassification.from_config(config), std=std)


def _adversarial_inputs(vocab=64, length=16):
    """Random ids at full length, one token repeated, padded and unpadded rows, the longest input."""
    g = torch.Generator().manual_seed(7)
    batches = [torch.randint(5, vocab, (8, length), generator=g),
               torch.arange(5, vocab)[:, None].repeat(1, length),
               torch.full((2, length), vocab - 1)]
    for ids in batches:
        mask = torch.ones_like(ids)
        mask[1::2, length // 3:] = 0
        yield ids, torch.ones_like(ids)
        yield ids, mask


def _set_all(model, value):
    for bound in activation_bounds(model):
        bound.low.fill_(-value)
        bound.high.fill_(value)


def test_relu_clamp_is_clamp():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)[:, None].repeat(1, 3)
    low, high = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 0.5, 3.0], dtype=torch.float64)
    torch.testing.assert_close(relu_clamp(x, low, high), torch.clamp(x, low, high), rtol=0, atol=1e-15)


@pytest.mark.parametrize("attention", ["approximator", "poly"])
@pytest.mark.parametrize("family", FAMILIES)
def test_bounded_model_is_finite_where_the_unbounded_one_overflows(family, attention):
    # weights large enough to blow up layer by layer
    model = _model(family, std=0.5, num_hidden_layers=4, attention_kind=attention)
    ids = torch.full((1, 16), 7)
    with torch.no_grad():
        unbounded = model(ids).logits  # bounds unset: the stream grows layer by layer
        if attention == "approximator":  # the reference behaviour overflows
            assert not torch.isfinite(unbounded).all()
        else:  # PolySoftmax's weights stay in [0, 1], but the feed-forward layers still grow the stream
            assert unbounded.abs().max() > 1e4
        _set_all(model, 3.0)
        for ids, mask in _adversarial_inputs():
            out = model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
            assert all(torch.isfinite(t).all() for t in (*out.hidden_states, *out.attentions, out.logits))
            assert out.logits.abs().max() <= 3.0
            assert max(h.abs().max() for h in out.hidden_states) <= 3.0


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_and_onnx_compute_the_same_clamps(family, tmp_path):
    import onnxruntime as ort

    model = _model(family, std=0.25, num_hidden_layers=4)
    _set_all(model, 0.5)  # tight enough that about a fifth of the stream is clamped
    fused = fuse(model)  # also checks the fold, clamps included, in float64
    path = export_onnx(fused, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for ids, mask in _adversarial_inputs():
        with torch.no_grad():
            want = model(ids, attention_mask=mask).logits
            got = fused(ids, attention_mask=mask)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(session.run(None, onnx_feed(session, ids.numpy(), mask.numpy()))[0], want.numpy(),
                                   atol=1e-4, rtol=1e-4)
    report = audit(path)
    assert report["passed"] and report["op_counts"]["Relu"] >= 4 * 2 * 2  # two clamps per layer, two ReLUs each


def _calibration_batches(vocab=64):
    g = torch.Generator().manual_seed(3)
    for length in (4, 9, 16):
        ids = torch.randint(5, vocab, (16, length), generator=g)
        yield {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.mark.parametrize("family", FAMILIES)
def test_calibration_covers_training_data_and_changes_nothing_there(family):
    model = _model(family)
    unbounded = _model(family)  # same seed, bounds never set
    forward = lambda m, b: m(**b)  # noqa: E731
    assert calibrate_bounds(model, list(_calibration_batches()), forward) == len(activation_bounds(model))
    assert all(b.is_set and (b.low < b.high).all() for b in activation_bounds(model))
    assert model.logit_bound.is_set
    with torch.no_grad():
        for batch in _calibration_batches():
            torch.testing.assert_close(model(**batch).logits, unbounded(**batch).logits, rtol=0, atol=0)


def test_bounds_are_identity_in_training_and_survive_save_load(tmp_path):
    model = _model("bert")
    _set_all(model, 0.01)
    ids = torch.randint(5, 64, (2, 8))
    model.train()
    torch.manual_seed(0)
    train_out = model(ids).logits
    assert train_out.abs().max() > 0.01  # not clamped while training
    model.eval().save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    for a, b in zip(activation_bounds(model), activation_bounds(loaded)):
        torch.testing.assert_close(a.low, b.low)
        torch.testing.assert_close(a.high, b.high)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_released_layout_has_no_bounds():
    """Bounds are opt-in: the released checkpoints' configs build models without them (strict loading)."""
    model = mabert.MABertForSequenceClassification(tiny_bert_config())
    assert not activation_bounds(model) and model.logit_bound is None
    assert not any("bound" in key for key in model.state_dict())
    assert isinstance(_model("bert").bert.embeddings.LayerNorm.bound, ActivationBound)


def test_a_channel_that_overflows_on_all_calibration_data_takes_the_range_before_it():
    """Calibration ignores inf; a stream channel with no finite value takes the same channel's range at the bound
    before, so the overflow that made it inf is clamped at inference instead of passed on."""

    class Chain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second = ActivationBound(3), ActivationBound(3)

        def forward(self, x):
            x = self.first(x)
            return self.second(x * torch.tensor([1.0, 1e39, 2.0]))  # channel 1 overflows to ±inf in fp32

    chain = Chain().eval()
    batches = [torch.randn(8, 3, generator=torch.Generator().manual_seed(i)) + 0.5 for i in range(3)]
    assert calibrate_bounds(chain, batches, lambda m, x: m(x)) == 2
    torch.testing.assert_close(chain.second.low[1], chain.first.low[1])
    torch.testing.assert_close(chain.second.high[1], chain.first.high[1])
    assert chain.second.high[2] == pytest.approx(2 * chain.first.high[2].item(), rel=0.3)
    with torch.no_grad():
        assert torch.isfinite(chain(torch.tensor([[1e6, -1e6, 3.0]]))).all()
