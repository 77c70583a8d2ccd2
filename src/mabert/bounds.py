"""Activation bounds: per-channel clamps that keep an MA model's inference bounded on every input.

LayerNorm renormalises the residual stream whatever its size; PowerNorm at inference is a fixed affine map, so a
stream that grows on an unusual input is not pulled back: attention scores grow with its square, the approximator
(a ReLU network) extrapolates linearly, and the growth compounds layer by layer until inf/NaN. An
`ActivationBound` after every PowerNorm (and on the logits) clamps each channel to the range it showed on
training data, widened by a margin. With the stream bounded at every layer, every activation downstream is a
finite function of a bounded input, whatever the tokens.

At inference clamp(x, lo, hi) = hi − ReLU((hi − lo) − ReLU(x − lo)): still matrix arithmetic + ReLU (and, unlike
lo + ReLU(x − lo) − ReLU(x − hi), exact for a huge x in fp32, where x − lo and x − hi round to the same number). In training
mode the bound is the identity (the statistics it is calibrated from only exist once the weights are final).
"""
from __future__ import annotations

import torch
from torch import nn


class ActivationBound(nn.Module):
    """Clamps the last axis per channel to [low, high] in eval mode; ±inf (the initial value) means unset."""

    def __init__(self, num_features: int):
        super().__init__()
        self.register_buffer("low", torch.full((num_features,), float("-inf")))
        self.register_buffer("high", torch.full((num_features,), float("inf")))

    @property
    def is_set(self) -> bool:
        return bool(torch.isfinite(self.low).all() and torch.isfinite(self.high).all())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return x
        return torch.clamp(x, self.low.to(x.dtype), self.high.to(x.dtype))


def relu_clamp(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """clamp(x, low, high) written with ReLU only (what the fused graph computes); needs finite bounds."""
    return high - torch.relu((high - low) - torch.relu(x - low))


def activation_bounds(model: nn.Module) -> list[ActivationBound]:
    return [m for m in model.modules() if isinstance(m, ActivationBound)]


@torch.no_grad()
def calibrate_bounds(model: nn.Module, batches, forward, margin: float = 0.5) -> int:
    """Set every ActivationBound of `model` from the per-channel range of its inputs over `batches`, widened on
    each side by `margin` × that range. Runs `forward(model, batch)` in eval mode. Progressive, as inference
    will be: each bound is updated from a batch just before it clamps that batch, so the bounds downstream see
    their inputs as inference will give them, and an upstream overflow (a stream that grows on an unusual input)
    reaches them clamped instead of as inf/NaN. Non-finite values are ignored; a channel that never had a finite
    value takes the range of the same channel at the bound before (every bound but the logits' bounds the same
    residual stream), so a model that overflows somewhere on its data is still bounded everywhere. Returns the
    number of bounds set (every channel finite; 0 if the model has none)."""
    bounds = activation_bounds(model)
    if not bounds:
        return 0
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    previous: dict[int, ActivationBound] = {}  # width → the bound that ran last in this forward
    inf = float("inf")

    def update(bound, args):
        values = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        finite = torch.isfinite(values)
        low = torch.where(finite, values, inf).min(dim=0).values
        high = torch.where(finite, values, -inf).max(dim=0).values
        if id(bound) in seen:
            low, high = torch.minimum(low, seen[id(bound)][0]), torch.maximum(high, seen[id(bound)][1])
        seen[id(bound)] = (low, high)
        known = torch.isfinite(low) & torch.isfinite(high)
        spread = (high - low).where(known, torch.zeros_like(low))
        # a constant channel still gets some room: a hundredth of the largest channel range of this bound
        spread = torch.maximum(spread, spread.max().clamp_min(1e-3) * 1e-2)
        before = previous.get(bound.low.numel())
        fallback_low = before.low.double() if before is not None else torch.full_like(low, -inf)
        fallback_high = before.high.double() if before is not None else torch.full_like(high, inf)
        bound.low.copy_(torch.where(known, low - margin * spread, fallback_low).to(bound.low.dtype))
        bound.high.copy_(torch.where(known, high + margin * spread, fallback_high).to(bound.high.dtype))
        previous[bound.low.numel()] = bound

    for bound in bounds:
        bound.low.fill_(-inf)
        bound.high.fill_(inf)
    hooks = [b.register_forward_pre_hook(update) for b in bounds]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            previous.clear()
            forward(model, batch)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return sum(b.is_set for b in bounds)
