"""Gradual hand-over from BERT's LayerNorm/GELU to MA-BERT's PowerNorm/ReLU during KD.

Switching a converted student to PowerNorm and ReLU at once loses the teacher's representation: on MiniLM-L6 /
Rotten Tomatoes the converted student predicts one class, and 200 KD steps at the specified loss do not undo it.
Here each PowerNorm runs blended with a frozen LayerNorm holding the same initial weights, and each FFN ReLU with
the original activation, and ReLU attention (if chosen) with softmax: out = (1−λ)·old(x) + λ·new(x), λ rising
linearly from 0 to 1 over the first part of training. (The approximator needs no blend: it is fitted to softmax
before KD.) From then on the student is pure MA-BERT; `remove()` puts the plain modules back, so nothing of the
blend is saved. Only PowerNorms still untrained (iters == 0) are handed over: an MA-trained model (e.g. a
released checkpoint) is left as it is.
"""
from __future__ import annotations

from torch import nn
from transformers.activations import ACT2FN

from .powernorm import PowerNorm
from .registry import family_of, layer_parts
from .softmax_approx import MaskedSoftmax, ReLUAttention


class _Blend(nn.Module):
    def __init__(self, old: nn.Module, new: nn.Module, schedule: "HandOver"):
        super().__init__()
        self.old, self.new = old, new
        self._schedule = [schedule]  # a list: not registered as a submodule

    def forward(self, *inputs):
        lam = self._schedule[0].lam
        if lam >= 1.0:
            return self.new(*inputs)
        if lam <= 0.0 and not self.training:
            return self.old(*inputs)
        # in training the new branch always runs, so PowerNorm statistics warm up from the first step
        return (1.0 - lam) * self.old(*inputs) + lam * self.new(*inputs)


def _layer_norm_like(norm: PowerNorm) -> nn.LayerNorm:
    layer_norm = nn.LayerNorm(norm.num_features, eps=norm.eps).to(norm.weight.device)
    layer_norm.load_state_dict({"weight": norm.weight.detach().clone(), "bias": norm.bias.detach().clone()})
    layer_norm.requires_grad_(False)  # frozen: a temporary crutch, and DDP must not wait for its unused grads
    return layer_norm


def _original_activation(config) -> str:
    """The base model's activation, which a converted student's config keeps (for its MLM head)."""
    return getattr(config, family_of(config).config.activation, None)


class HandOver:
    """Installs the blends into `model` (in place); call `set_progress(step, total_steps)` before each step and
    `remove()` before saving."""

    def __init__(self, model: nn.Module, fraction: float):
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"hand-over fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction
        self.lam = 0.0
        self.count = 0  # blends installed (kept after remove(), for the run summary)
        self._installed: list[tuple[nn.Module, str, _Blend]] = []
        config = model.config
        old_act = _original_activation(config)
        swap_activation = old_act in ACT2FN and old_act != config.ffn_hidden_act
        layers = layer_parts(model)
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, PowerNorm):
                    self._install(parent, name, _Blend(_layer_norm_like(child), child, self))
                elif isinstance(child, ReLUAttention):
                    self._install(parent, name, _Blend(MaskedSoftmax(), child, self))
        for parts in layers if swap_activation else ():
            self._install(parts.ffn_activation_owner, parts.ffn_activation_attr,
                          _Blend(ACT2FN[old_act], parts.ffn_activation, self))

    @staticmethod
    def applies_to(model: nn.Module) -> bool:
        """True for a student whose PowerNorms were never trained (a fresh conversion)."""
        norms = [m for m in model.modules() if isinstance(m, PowerNorm)]
        return bool(norms) and all(int(n.iters.item()) == 0 for n in norms)

    def _install(self, parent: nn.Module, name: str, blend: _Blend) -> None:
        setattr(parent, name, blend)
        self._installed.append((parent, name, blend))
        self.count += 1

    def set_progress(self, step: int, total_steps: int) -> None:
        self.lam = min(1.0, step / max(1.0, self.fraction * total_steps))

    def remove(self) -> None:
        for parent, name, blend in self._installed:
            setattr(parent, name, blend.new)
        self._installed.clear()
        self.lam = 1.0
