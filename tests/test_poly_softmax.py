"""PolySoftmax (attention_kind="poly"): softmax evaluated with matrix arithmetic and ReLU. Its parts against the
functions they stand for, the whole against torch.softmax, and the model built with it: padding, the hand-over,
saving, fitting, ONNX at every length and the audit. Fusion parity runs in test_fuse_export (CONFIGS)."""
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

import mabert
from conftest import assert_reloads_identically, make_realistic, padded_pair, tiny_bert_config, tiny_bert_teacher
from mabert.errors import MABertError
from mabert.export import audit, export_onnx, onnx_feed
from mabert.fuse import fuse
from mabert.handover import HandOver
from mabert.softmax_approx import (POLY_FLOOR, PolySoftmax, exp_above_floor, reciprocal_between_one_and, relu_max,
                                   row_max)


def _masked_softmax(scores, mask):
    return torch.softmax(scores.masked_fill(mask == 0, float("-inf")), dim=-1)


def test_relu_max_and_the_tournament_are_the_maximum():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, generator=g), torch.randn(50, generator=g)
    torch.testing.assert_close(relu_max(a, b), torch.maximum(a, b), rtol=0, atol=1e-7)
    for width in range(1, 41):  # every width up to 40 with the levels a length-40 model uses: one graph for all
        x = torch.randn(3, width, generator=g) * 10
        torch.testing.assert_close(row_max(x, math.ceil(math.log2(40))), x.max(-1, keepdim=True).values,
                                   rtol=0, atol=1e-5)
    assert row_max(torch.randn(2, 9, generator=g), 2).shape[-1] == 3  # too few levels leave more than one: 9, 5, 3


def test_exp_and_reciprocal_are_accurate_over_their_ranges():
    x = torch.linspace(-POLY_FLOOR, 0, 20001, dtype=torch.float64)
    error = (exp_above_floor(x + POLY_FLOOR) - torch.exp(x)).abs()
    # what a weight can be off by (the polynomial's fit: 9.5e-9), and near the row's largest weight, relatively
    assert error.max() < 1.2e-8 and (error / torch.exp(x))[x > -1].max() < 1e-7
    s = torch.linspace(1, 128, 50001, dtype=torch.float64)[:, None]
    assert ((reciprocal_between_one_and(s, 128) * s - 1).abs().max()) < 1e-7
    # lengths that are not powers of two, and the smallest model (one key)
    assert ((reciprocal_between_one_and(s[s <= 100][:, None], 100) * s[s <= 100][:, None] - 1).abs().max()) < 1e-7
    torch.testing.assert_close(reciprocal_between_one_and(torch.ones(3, 1), 1), torch.ones(3, 1))


@pytest.mark.parametrize("length", [1, 2, 3, 7, 16, 33, 100, 128])
@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0, 1e3])
def test_poly_softmax_is_softmax_over_the_real_keys(length, scale):
    g = torch.Generator().manual_seed(length)
    scores = torch.randn(2, 3, length, length, generator=g) * scale
    mask = (torch.rand(2, 1, 1, length, generator=g) > 0.3).float()
    mask[..., 0] = 1  # [CLS] is always a real key
    got = PolySoftmax(128)(scores, mask)
    torch.testing.assert_close(got, _masked_softmax(scores, mask), rtol=0, atol=2e-6)
    assert torch.equal(got * (1 - mask), torch.zeros_like(got))  # padded keys get exactly 0


def test_poly_softmax_is_bounded_on_any_finite_scores():
    """Rows are weights in [0, 1] whatever the scores' size, summing to 1 while a real key scores above −10⁴:
    nothing to extrapolate, unlike a fitted approximator, so attention cannot feed growth of the stream."""
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(2, 2, 9, 9, generator=g) * torch.tensor([1e-3, 1e2, 1e6, 1e30]).repeat(3)[:9]
    scores[1, 0, :, 6:] = 1e30  # padded keys far above the real ones
    scores[1, 1] = -1e6 - torch.rand(9, 9, generator=g)  # every real key below the padded keys' −10⁴
    mask = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0, 0], dtype=torch.float)[None, None, None]
    got = PolySoftmax(16)(scores, mask)
    assert torch.isfinite(got).all() and (got >= 0).all() and (got <= 1 + 1e-6).all()
    assert torch.equal(got[..., 6:], torch.zeros_like(got[..., 6:]))
    sums = got.sum(-1)
    sums[1, 1] = 1.0  # the one row with no real key above −10⁴: finite and bounded, not normalised
    torch.testing.assert_close(sums, torch.ones(2, 2, 9), rtol=0, atol=1e-6)


def test_poly_softmax_errors_and_gradient():
    with pytest.raises(ValueError, match="exceeds this model's length L = 4"):
        PolySoftmax(4)(torch.zeros(1, 1, 5, 5))
    scores = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([1, 1, 1, 1, 0, 0], dtype=torch.float64)[None, None, None]
    assert torch.autograd.gradcheck(lambda s: PolySoftmax(8)(s, mask), (scores,))
    # its gradient is softmax's (what KD trains through)
    upstream = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    (PolySoftmax(8)(scores, mask) * upstream).sum().backward()
    poly_grad = scores.grad.clone()
    scores.grad = None
    (_masked_softmax(scores, mask) * upstream).sum().backward()
    torch.testing.assert_close(poly_grad, scores.grad, rtol=0, atol=1e-6)


def test_a_poly_student_has_no_attention_parameters_blend_or_fit(tmp_path):
    teacher = tiny_bert_teacher()
    student = mabert.convert(teacher, attention_kind="poly", softmax_input_size=16, pooler_act="tanh").eval()
    assert not any("softmax" in key for key in student.state_dict())
    with pytest.raises(ValueError, match="share_softmax_nn does not apply to attention_kind='poly'"):
        tiny_bert_config(attention_kind="poly", share_softmax_nn=True)
    ids, mask = padded_pair()
    with torch.no_grad():
        handover = HandOver(student, 0.5)
        assert handover.count == 5 + 2  # norms and FFN activations: the attention already is softmax
        # at λ = 0 the student is the teacher up to PolySoftmax's rounding
        torch.testing.assert_close(student(ids, attention_mask=mask).logits, teacher(ids, attention_mask=mask).logits,
                                   atol=1e-5, rtol=1e-5)
        handover.remove()
    assert_reloads_identically(student, tmp_path, ids, mask, "poly")


def test_padding_does_not_change_a_poly_model():
    model = make_realistic(AutoModelForSequenceClassification.from_config(
        tiny_bert_config(attention_kind="poly", pooler_act="relu"))).eval()
    ids = torch.randint(5, 64, (1, 6), generator=torch.Generator().manual_seed(2))
    padded = torch.cat([ids, torch.zeros(1, 10, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 10)], dim=1).long()
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask).logits, model(ids).logits, atol=1e-6, rtol=1e-6)


def test_onnx_of_a_poly_model_passes_the_audit_at_every_length(tmp_path):
    """The tournament's slices depend on the row length: one exported graph must be right for every length ≤ L,
    not only for the example length it was traced at (16)."""
    import onnxruntime as ort

    model = make_realistic(AutoModelForSequenceClassification.from_config(
        tiny_bert_config(attention_kind="poly", pooler_act="relu"))).eval()
    path = export_onnx(fuse(model), tmp_path / "m.onnx")
    report = audit(path)
    assert report["passed"], report
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(4)
    for length in (1, 2, 3, 5, 9, 12, 16):
        ids = torch.randint(5, 64, (2, length), generator=generator)
        mask = torch.ones(2, length, dtype=torch.long)
        mask[1, (length + 1) // 2:] = 0
        with torch.no_grad():
            want = model(ids, attention_mask=mask).logits.numpy()
        got = session.run(None, onnx_feed(session, ids.numpy(), mask.numpy()))[0]
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4, err_msg=f"length {length}")


def test_integer_export_refuses_poly_attention():
    from mabert.integer_model import build_integer_model

    model = make_realistic(AutoModelForSequenceClassification.from_config(
        tiny_bert_config(attention_kind="poly", pooler_act="relu"))).eval()
    batch = (torch.randint(5, 64, (1, 5)), torch.ones(1, 5, dtype=torch.long))
    with pytest.raises(MABertError, match="does not support PolySoftmax"):
        build_integer_model(fuse(model), [batch])
