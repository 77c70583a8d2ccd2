import numpy as np
import pytest
import torch

from mabert import SoftmaxApproximator


def reference(scores, mask, w1, b1, w2, b2, mode):
    """Upstream rule written out in numpy: scores×mask, zero-pad to L, Linear-ReLU-Linear, keep T columns."""
    length, full = scores.shape[-1], w1.shape[1]
    x = scores * mask
    padded = np.concatenate([x, np.zeros(x.shape[:-1] + (full - length,))], axis=-1)
    out = (np.maximum(padded @ w1.T + b1, 0) @ w2.T + b2)[..., :length]
    return out * mask if mode == "masked" else out


@pytest.mark.parametrize("mode", ["multiply", "masked"])
@pytest.mark.parametrize("length", [16, 11, 1])
def test_matches_independent_computation(mode, length):
    torch.manual_seed(0)
    approx = SoftmaxApproximator(16, 24, mode)
    scores = torch.randn(2, 3, 5, length)
    mask = (torch.rand(2, 1, 1, length) > 0.3).float()
    mask[..., 0] = 1
    got = approx(scores, mask).detach().numpy()
    w1, b1 = approx.linear_relu_stack[0].weight.detach().numpy(), approx.linear_relu_stack[0].bias.detach().numpy()
    w2, b2 = approx.linear_relu_stack[2].weight.detach().numpy(), approx.linear_relu_stack[2].bias.detach().numpy()
    want = reference(scores.numpy().astype(np.float64), mask.numpy(), w1, b1, w2, b2, mode)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_masked_mode_is_padding_independent():
    torch.manual_seed(1)
    approx = SoftmaxApproximator(16, 24, "masked")
    short = torch.randn(1, 2, 7, 7)
    padded = torch.zeros(1, 2, 7, 16)
    padded[..., :7] = short
    padded[..., 7:] = torch.randn(1, 2, 7, 9) * 5  # garbage scores for padded keys
    mask = torch.zeros(1, 1, 1, 16)
    mask[..., :7] = 1
    a = approx(short, torch.ones(1, 1, 1, 7))
    b = approx(padded, mask)
    torch.testing.assert_close(b[..., :7], a, atol=1e-6, rtol=0)
    assert torch.all(b[..., 7:] == 0)


def test_too_long_is_a_clear_error():
    approx = SoftmaxApproximator(8, 8)
    with pytest.raises(ValueError, match="exceeds the softmax approximator's input size 8"):
        approx(torch.zeros(1, 1, 1, 9))


def test_fitting_brings_it_close_to_softmax():
    from mabert.fitting import init_approximator, softmax_targets, synthetic_score_rows

    torch.manual_seed(0)
    approx = SoftmaxApproximator(16, 32, "masked")
    rows = synthetic_score_rows(512, 16, torch.Generator().manual_seed(5))
    mask = (rows != 0).float()
    targets = softmax_targets(rows, mask)
    before = torch.nn.functional.mse_loss(approx(rows, mask), targets).item()
    init_approximator(approx, steps=300)
    after = torch.nn.functional.mse_loss(approx(rows, mask), targets).item()
    assert after < before / 5
