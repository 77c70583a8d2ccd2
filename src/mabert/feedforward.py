"""Technique 2: the encoder feed-forward activation (GELU in BERT, ReLU in MA-BERT)."""
from __future__ import annotations

from torch import nn
from transformers.activations import ACT2FN

from .choices import FFN_ACTIVATIONS


def feedforward_activation(name: str) -> nn.Module:
    """The activation module for an encoder FFN; "relu" is the MA-BERT choice."""
    if name not in ACT2FN:
        raise ValueError(f"unknown FFN activation {name!r}; use one of: {', '.join(FFN_ACTIVATIONS)}")
    return ACT2FN[name]
