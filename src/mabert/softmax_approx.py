"""Technique 1: a 2-layer ReLU network that stands in for softmax on each attention-score row; and, as options
beyond the paper with no parameters, ReLU attention (ReLU(scores) / L) and PolySoftmax (softmax itself evaluated
with matrix arithmetic and ReLU)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .choices import ATTENTION_KINDS, MASK_MASKED, MASK_MODES, MASK_MULTIPLY  # noqa: F401 (re-exported)


class SoftmaxApproximator(nn.Module):
    """Linear(L→h) → ReLU → Linear(h→L) applied to the last axis of the attention scores.

    `input_size` (L) is the longest key length the network accepts. A shorter row of length T is
    treated exactly as if it were padded with zero scores to L (the first layer only reads the
    first T columns of W1, the second only produces the first T outputs), so no padding is
    materialised and any T ≤ L works.

    Masking (`mask_mode`):
    - "multiply": the upstream MA-BERT rule: scores × 0/1 key mask before the network, output
      left as is. Bit-compatible with the released checkpoints when T == L.
    - "masked": same input, but outputs at padded keys are zeroed as well, so a sequence gives the
      same result for its real tokens whether or not it is padded.
    """

    def __init__(self, input_size: int = 128, hidden_size: int = 128, mask_mode: str = MASK_MULTIPLY):
        super().__init__()
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        self.input_size = input_size
        self.mask_mode = mask_mode
        # Named as upstream (`linear_relu_stack.0` / `.2`) so released state dicts load unchanged.
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(input_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, input_size)
        )

    def forward(self, scores: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """scores: (..., T) with T ≤ L; key_mask: 0/1, broadcastable to scores (e.g. (B, 1, 1, T))."""
        length = scores.shape[-1]
        if length > self.input_size:
            raise ValueError(
                f"sequence length {length} exceeds the softmax approximator's input size {self.input_size}; "
                f"truncate inputs to {self.input_size} tokens or build the model with a larger softmax_input_size"
            )
        if key_mask is not None:
            scores = scores * key_mask
        first, second = self.linear_relu_stack[0], self.linear_relu_stack[2]
        if length == self.input_size:
            probs = self.linear_relu_stack(scores)
        else:
            hidden = torch.relu(nn.functional.linear(scores, first.weight[:, :length], first.bias))
            probs = nn.functional.linear(hidden, second.weight[:length], second.bias[:length])
        if self.mask_mode == MASK_MASKED and key_mask is not None:
            probs = probs * key_mask
        return probs


def check_length(length: int, input_size: int) -> None:
    if length > input_size:
        raise ValueError(f"sequence length {length} exceeds this model's length L = {input_size}; "
                         f"truncate inputs to {input_size} tokens")


class ReLUAttention(nn.Module):
    """ReLU(scores) / L: attention weights from matrix arithmetic and ReLU with no network at all (an option beyond
    the paper; reported to match softmax in vision transformers). Padded keys get weight 0 (scores × 0/1 mask, then
    ReLU(0) = 0), so a sequence gives the same result padded or not. The divisor is the constant L, not the row's
    length, so that inference stays matrix arithmetic; the model learns the scale in KD. Per row it costs T·d
    multiply-adds where the approximator costs about 2·h·d, so it is cheaper whenever T < 2h."""

    def __init__(self, input_size: int = 128):
        super().__init__()
        self.input_size = input_size

    def forward(self, scores: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_length(scores.shape[-1], self.input_size)
        if key_mask is not None:
            scores = scores * key_mask
        return torch.relu(scores) / self.input_size


class MaskedSoftmax(nn.Module):
    """Softmax over the real keys: what ReLU attention replaces, blended out during the KD hand-over."""

    def forward(self, scores: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        if key_mask is not None:
            scores = scores.masked_fill(key_mask == 0, torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1)


# PolySoftmax's constants. A weight below e^-20 (2e-9) of the row's largest is set to that value, far below what
# any attention product can see. exp(x) = p(x/32)^32 with p a degree-4 polynomial fitted to make the largest error
# of the weight, |p(x/32)^32 − e^x| on [−20, 0], least (1e-8; a linear program on the relative error of p weighted
# by 32·e^x): as close as the Taylor polynomial squared 6 times (1.1e-8) with one squaring fewer; softmax's
# weights stay within 2e-6 in fp32 (tests/test_poly_softmax.py).
POLY_FLOOR = 20.0
POLY_SQUARINGS = 5
POLY_EXP_POLYNOMIAL = (0.999999999702239, 0.999999820487647, 0.499985578896141, 0.166318863740523,
                       0.0386557789935772)
POLY_NEWTON_STEPS = 3
# padded keys' scores become −10⁴, so the row maximum is a real key's unless every real score is below that (then
# the row's weights are ~0 instead of summing to 1: still finite; activation bounds keep scores far from it)
POLY_MASK_SHIFT = 1e4


def _exp_above_floor_coefficients() -> list[float]:
    """Coefficients in z of p((z − POLY_FLOOR) / 2^k): the shift and the scale are folded into the polynomial, so exp
    costs its four products and sums and the squarings, nothing more. All five are positive (as exp's derivatives
    are), so Horner's sums do not cancel."""
    scale, offset = 0.5 ** POLY_SQUARINGS, -POLY_FLOOR * 0.5 ** POLY_SQUARINGS
    terms = len(POLY_EXP_POLYNOMIAL)
    return [sum(POLY_EXP_POLYNOMIAL[k] * math.comb(k, j) * scale ** j * offset ** (k - j) for k in range(j, terms))
            for j in range(terms)]


POLY_EXP_COEFFICIENTS = _exp_above_floor_coefficients()


def relu_max(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return b + torch.relu(a - b)


def row_max(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Maximum over the last axis by a tournament of ReLU maxima: each level takes the max of the row's first and
    last ⌈w/2⌉ entries (overlapping when w is odd, which the max does not mind). `levels` = ⌈log2 L⌉ levels reach
    width 1 for any row of length ≤ L, so the traced ONNX graph has one fixed shape for every length."""
    for _ in range(levels):
        width = x.shape[-1]
        half = (width + 1) // 2
        x = relu_max(x[..., :half], x[..., width - half:])
    return x


def exp_above_floor(z: torch.Tensor) -> torch.Tensor:
    """exp(z − POLY_FLOOR) for z in [0, POLY_FLOOR] (within 1e-8): a degree-4 polynomial of (z − POLY_FLOOR)/2^k,
    squared k times (products and sums)."""
    e = POLY_EXP_COEFFICIENTS[-1]
    for coefficient in reversed(POLY_EXP_COEFFICIENTS[:-1]):  # Horner
        e = coefficient + z * e
    for _ in range(POLY_SQUARINGS):
        e = e * e
    return e


def reciprocal_between_one_and(s: torch.Tensor, top: int) -> torch.Tensor:
    """1/s for s in [1, top] without division: a ReLU interpolant through (2^k, 2^-k) (at most 12.5 % high) refined
    by Newton's r ← r·(2 − s·r), which squares the relative error each step (0.125 → 1.6e-2 → 2.4e-4 → 6e-8)."""
    knots = [2.0 ** k for k in range(1, max(1, math.ceil(math.log2(top))))]
    r = 1.5 - 0.5 * s
    if knots:
        points = s.new_tensor(knots)
        slope_changes = s.new_tensor([3.0 / (2.0 * k * k) for k in knots])
        r = r + torch.relu(s - points) @ slope_changes[:, None]
    for _ in range(POLY_NEWTON_STEPS):
        r = r * (2.0 - s * r)
    return r


class PolySoftmax(nn.Module):
    """Softmax itself, written in matrix arithmetic and ReLU (an option beyond the paper): the row maximum by a ReLU
    tournament, exp of the shifted scores (floored at −20 with a ReLU) by squaring a polynomial, the row sum by a
    product with a ones vector, and its reciprocal by Newton's iteration — no division, no transcendental op, no
    parameters, so there is nothing to fit or calibrate and it is as exact at every length as softmax (weights
    within 2e-6). Padded keys get weight 0; weights are finite and in [0, 1] for any finite scores, and sum to 1
    when some real key scores above −10⁴. It costs a few dozen elementwise passes over the score matrix."""

    def __init__(self, input_size: int = 128):
        super().__init__()
        self.input_size = input_size
        self.levels = max(1, math.ceil(math.log2(input_size)))

    def forward(self, scores: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        length = scores.shape[-1]
        check_length(length, self.input_size)
        if key_mask is not None:
            scores = scores * key_mask + (key_mask - 1.0) * POLY_MASK_SHIFT
        # scores − max floored at −POLY_FLOOR, kept shifted up by it (z ∈ [0, floor]: exp_above_floor takes it so).
        # Subtracting the max first keeps the max's z exactly POLY_FLOOR at any magnitude; max − floor rounds above 2^25.
        above_floor = torch.relu(scores - row_max(scores, self.levels) + POLY_FLOOR)
        weights = exp_above_floor(above_floor)
        if key_mask is not None:
            weights = weights * key_mask
        total = weights @ weights.new_ones(length, 1)  # ≥ 1: the maximum contributes exp(0) = 1
        return weights * reciprocal_between_one_and(total, self.input_size)
