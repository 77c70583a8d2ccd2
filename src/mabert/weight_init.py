"""Weight initialisation shared by the MA model families."""
from __future__ import annotations

from torch import nn

from .bounds import ActivationBound
from .powernorm import PowerNorm


def init_ma_weights(module: nn.Module, std: float) -> None:
    if isinstance(module, nn.Linear):
        module.weight.data.normal_(mean=0.0, std=std)
        if module.bias is not None:
            module.bias.data.zero_()
    elif isinstance(module, nn.Embedding):
        module.weight.data.normal_(mean=0.0, std=std)
        if module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
    elif isinstance(module, (nn.LayerNorm, PowerNorm)):
        module.weight.data.fill_(1.0)
        module.bias.data.zero_()
        if isinstance(module, PowerNorm):
            module.reset_statistics()
    elif isinstance(module, ActivationBound):  # unset until calibrated (e.g. a new head on a general model)
        module.low.fill_(float("-inf"))
        module.high.fill_(float("inf"))
