"""Technique 1: a 2-layer ReLU network that stands in for softmax on each attention-score row; and, as an option
beyond the paper, ReLU attention (ReLU(scores) / L), which has no parameters."""
from __future__ import annotations

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
        if scores.shape[-1] > self.input_size:
            raise ValueError(f"sequence length {scores.shape[-1]} exceeds this model's length L = {self.input_size}; "
                             f"truncate inputs to {self.input_size} tokens")
        if key_mask is not None:
            scores = scores * key_mask
        return torch.relu(scores) / self.input_size


class MaskedSoftmax(nn.Module):
    """Softmax over the real keys: what ReLU attention replaces, blended out during the KD hand-over."""

    def forward(self, scores: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        if key_mask is not None:
            scores = scores.masked_fill(key_mask == 0, torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1)
