import math

import pytest
import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from mabert.kd_losses import KDWeights, attention_mse, kd_loss, layer_map, masked_mse, soft_cross_entropy
from mabert.metrics import compute_metrics


def test_accuracy_and_f1_by_hand():
    preds, labels = [1, 0, 1, 1, 0], [1, 0, 0, 1, 1]
    # tp=2, fp=1, fn=1 → precision 2/3, recall 2/3, f1 2/3; 3 of 5 right
    assert compute_metrics("f1_accuracy", preds, labels) == pytest.approx({"f1": 2 / 3, "accuracy": 0.6})
    assert compute_metrics("accuracy", preds, labels) == pytest.approx({"accuracy": 0.6})


def test_matthews_by_hand():
    preds, labels = [1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1]
    tp, tn, fp, fn = 2, 2, 1, 1
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert compute_metrics("matthews", preds, labels)["matthews_correlation"] == pytest.approx(mcc)


def test_pearson_spearman_by_hand():
    preds, labels = [1.0, 2.0, 3.0, 5.0], [1.0, 3.0, 2.0, 4.0]
    mp, ml = sum(preds) / 4, sum(labels) / 4
    cov = sum((p - mp) * (l - ml) for p, l in zip(preds, labels))
    pearson = cov / math.sqrt(sum((p - mp) ** 2 for p in preds) * sum((l - ml) ** 2 for l in labels))
    # ranks: preds 1,2,3,4; labels 1,3,2,4 → d² = 0,1,1,0 → 1 - 6·2/(4·15)
    got = compute_metrics("pearson_spearman", preds, labels)
    assert got["pearson"] == pytest.approx(pearson)
    assert got["spearman"] == pytest.approx(1 - 6 * 2 / (4 * 15))


def test_layer_map():
    assert layer_map(6, 6) == [1, 2, 3, 4, 5, 6]
    assert layer_map(3, 6) == [2, 4, 6]
    assert layer_map(4, 12) == [3, 6, 9, 12]
    with pytest.raises(ValueError):
        layer_map(7, 6)


def test_soft_term_is_t_squared_kl_by_hand():
    s, t, temp = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([[0.2, 1.0, 3.0]]), 2.0
    p = torch.softmax(t / temp, -1)
    cross_entropy = -(p * (s / temp - torch.logsumexp(s / temp, -1, keepdim=True))).sum()
    entropy = -(p * torch.log(p)).sum()
    want = (cross_entropy - entropy) * temp ** 2
    torch.testing.assert_close(soft_cross_entropy(s, t, temp), want)


def test_masked_terms_ignore_padding():
    mask = torch.tensor([[1, 1, 0]])
    a, b = torch.zeros(1, 3, 2), torch.zeros(1, 3, 2)
    b[0, 0] = torch.tensor([1.0, 3.0])
    b[0, 2] = 100.0  # padding: must not count
    assert masked_mse(a, b, mask).item() == pytest.approx((1 + 9) / (2 * 2))
    sa, sb = torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)
    sb[0, 0, 0, 1] = 2.0
    sb[0, 1, 2, :] = 50.0  # padded query row
    sb[0, 1, :, 2] = 50.0  # padded key column
    assert attention_mse(sa, sb, mask).item() == pytest.approx(4 / (2 * 4))


def _outputs(logits, hidden, attn):
    return SequenceClassifierOutput(logits=logits, hidden_states=hidden, attentions=attn)


def test_kd_total_combines_terms():
    torch.manual_seed(0)
    mask = torch.ones(2, 4, dtype=torch.long)
    s = _outputs(torch.randn(2, 3), tuple(torch.randn(2, 4, 8) for _ in range(3)), tuple(torch.rand(2, 2, 4, 4) for _ in range(2)))
    t = _outputs(torch.randn(2, 3), tuple(torch.randn(2, 4, 8) for _ in range(5)), tuple(torch.rand(2, 2, 4, 4) for _ in range(4)))
    labels = torch.tensor([0, 2])
    w = KDWeights(alpha=0.7, temperature=3.0, beta=0.5)
    terms = kd_loss(s, t, labels, mask, w, num_labels=3)
    hidden = sum(((s.hidden_states[i] - t.hidden_states[j]) ** 2).mean() for i, j in [(0, 0), (1, 2), (2, 4)])
    attention = sum(((s.attentions[i] - t.attentions[j]) ** 2).mean() for i, j in [(0, 1), (1, 3)])
    torch.testing.assert_close(terms["hidden"], hidden)
    torch.testing.assert_close(terms["attention"], attention)
    torch.testing.assert_close(terms["task"], torch.nn.functional.cross_entropy(s.logits, labels))
    want = 0.7 * soft_cross_entropy(s.logits, t.logits, 3.0) + 0.3 * terms["task"] + 0.5 * (hidden + 100 * attention)
    torch.testing.assert_close(terms["total"], want)


def test_regression_soft_term_is_mse_between_predictions():
    mask = torch.ones(2, 3, dtype=torch.long)
    hs = tuple(torch.zeros(2, 3, 4) for _ in range(2))
    at = (torch.zeros(2, 1, 3, 3),)
    s = _outputs(torch.tensor([[1.0], [2.0]]), hs, at)
    t = _outputs(torch.tensor([[1.5], [1.0]]), hs, at)
    terms = kd_loss(s, t, torch.tensor([0.0, 2.0]), mask, KDWeights(), num_labels=1)
    assert terms["soft"].item() == pytest.approx((0.25 + 1.0) / 2)
    assert terms["task"].item() == pytest.approx((1.0 + 0.0) / 2)


def test_unlabelled_examples_get_every_term_but_the_task_one():
    """Teacher-labelled augmentation: label IGNORE_LABEL (NaN for regression) drops the task term only."""
    from mabert.kd_losses import IGNORE_LABEL

    torch.manual_seed(0)
    mask = torch.ones(3, 4, dtype=torch.long)
    s = _outputs(torch.randn(3, 2), tuple(torch.randn(3, 4, 8) for _ in range(2)), (torch.rand(3, 2, 4, 4),))
    t = _outputs(torch.randn(3, 2), tuple(torch.randn(3, 4, 8) for _ in range(2)), (torch.rand(3, 2, 4, 4),))
    terms = kd_loss(s, t, torch.tensor([1, IGNORE_LABEL, 0]), mask, KDWeights(), num_labels=2)
    torch.testing.assert_close(terms["task"], torch.nn.functional.cross_entropy(s.logits[[0, 2]], torch.tensor([1, 0])))
    torch.testing.assert_close(terms["soft"], soft_cross_entropy(s.logits, t.logits, 15.0))  # all three rows
    only_unlabelled = kd_loss(s, t, torch.full((3,), IGNORE_LABEL), mask, KDWeights(), num_labels=2)
    assert only_unlabelled["task"].item() == 0.0 and torch.isfinite(only_unlabelled["total"])
    r = _outputs(torch.tensor([[1.0], [2.0], [0.0]]), s.hidden_states, s.attentions)
    rt = _outputs(torch.tensor([[1.5], [1.0], [3.0]]), t.hidden_states, t.attentions)
    reg = kd_loss(r, rt, torch.tensor([0.0, float("nan"), 1.0]), mask, KDWeights(), num_labels=1)
    assert reg["task"].item() == pytest.approx((1.0 + 1.0) / 2)
    assert reg["soft"].item() == pytest.approx((0.25 + 1.0 + 9.0) / 3)
