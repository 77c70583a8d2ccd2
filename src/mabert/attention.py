"""Scaled dot-product attention whose softmax may be the MA approximator; shared by both model families."""
from __future__ import annotations

import math

import torch
from torch import nn

from .choices import ATTENTION_APPROXIMATOR, ATTENTION_POLY, ATTENTION_RELU, MASK_MULTIPLY
from .errors import MABertError
from .powernorm import real_tokens
from .softmax_approx import PolySoftmax, ReLUAttention, SoftmaxApproximator


def check_heads(width: int, num_heads: int) -> None:
    if num_heads <= 0 or width % num_heads:
        raise MABertError(
            f"hidden size {width} is not divisible by {num_heads} attention heads; set num_attention_heads "
            "to a divisor of the hidden size (the released checkpoints use 12)"
        )


def attention_reads_padding(config) -> bool:
    """Whether padded keys get nonzero attention weight, so real tokens read padding rows: the paper's approximator
    with the released multiply masking (a padded key's weight is whatever the network outputs for a score of 0).
    Exact softmax, ReLU attention, PolySoftmax and the "masked" mode give padded keys weight 0."""
    return (bool(getattr(config, "use_softmax_approx", False))
            and getattr(config, "attention_kind", ATTENTION_APPROXIMATOR) == ATTENTION_APPROXIMATOR
            and getattr(config, "softmax_mask_mode", "") == MASK_MULTIPLY)


def norm_statistics_scope(config, attention_mask: torch.Tensor | None):
    """Context in which PowerNorm's training statistics skip padding rows, unless attention reads them (multiply
    masking): then they are part of the computation and count, as in the reference."""
    return real_tokens(None if attention_reads_padding(config) else attention_mask)


def build_approximator(config) -> SoftmaxApproximator | ReLUAttention | PolySoftmax:
    kind = getattr(config, "attention_kind", ATTENTION_APPROXIMATOR)
    if kind == ATTENTION_RELU:
        return ReLUAttention(config.softmax_input_size)
    if kind == ATTENTION_POLY:
        return PolySoftmax(config.softmax_input_size)
    return SoftmaxApproximator(
        config.softmax_input_size, config.softmax_hidden_layer_size, config.softmax_mask_mode
    )


class ApproximatorSlot:
    """Holds a layer's approximator. A shared one is referenced, not registered, so that it is saved
    once (under the model's `softmax`) instead of once per layer."""

    def __init__(self, owner: nn.Module, config, shared: SoftmaxApproximator | None):
        self.shared = shared
        if config.use_softmax_approx and shared is None:
            owner.softmax = build_approximator(config)

    def get(self, owner: nn.Module) -> SoftmaxApproximator | None:
        return self.shared if self.shared is not None else getattr(owner, "softmax", None)


def attention_probabilities(
    scores: torch.Tensor, key_mask: torch.Tensor | None, approximator: SoftmaxApproximator | None
) -> torch.Tensor:
    """Attention weights from raw (scaled) scores. key_mask is 0/1 of shape (B, 1, 1, T) or None."""
    if approximator is not None:
        return approximator(scores, key_mask)
    if key_mask is not None:
        scores = scores.masked_fill(key_mask == 0, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1)


def multi_head_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    num_heads: int,
    key_mask: torch.Tensor | None,
    approximator: SoftmaxApproximator | None,
    dropout: nn.Dropout,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, H·d) projections → context (B, T, H·d) and weights (B, H, T, T)."""
    batch, length, width = query.shape
    head_dim = width // num_heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, -1, num_heads, head_dim).transpose(1, 2)

    scores = torch.matmul(split(query), split(key).transpose(-1, -2)) / math.sqrt(head_dim)
    probs = attention_probabilities(scores, key_mask, approximator)
    context = torch.matmul(dropout(probs), split(value))
    return context.transpose(1, 2).reshape(batch, length, width), probs


def run_layers(layers, hidden_states: torch.Tensor, key_mask: torch.Tensor | None):
    """Apply encoder layers that return (hidden, attention weights); collect every hidden state and map."""
    all_hidden, all_probs = [hidden_states], []
    for layer in layers:
        hidden_states, probs = layer(hidden_states, key_mask)
        all_hidden.append(hidden_states)
        all_probs.append(probs)
    return hidden_states, tuple(all_hidden), tuple(all_probs)


def request_attention_maps(model) -> None:
    """Make a Hugging Face model return its attention maps (KD needs the teacher's); SDPA kernels do not."""
    # a transformers-version check (set_attn_implementation is recent), not a model-family one
    if hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("eager")
            return
        except Exception:  # older/other models: fall back to the config switch
            pass
    model.config._attn_implementation = "eager"
