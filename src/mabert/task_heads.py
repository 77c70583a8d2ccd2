"""Pieces shared by the task heads of both model families."""
from __future__ import annotations

import torch
from torch import nn

from .choices import POOLER_IDENTITY, POOLER_RELU, POOLER_TANH


def pooler_activation(name: str) -> nn.Module:
    return {POOLER_TANH: nn.Tanh(), POOLER_RELU: nn.ReLU(), POOLER_IDENTITY: nn.Identity()}[name]


def sequence_classification_loss(logits: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    """Regression (MSE) when num_labels == 1, else single- or multi-label classification."""
    if config.problem_type is None:
        if config.num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
    if config.problem_type == "single_label_classification":
        return nn.functional.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))
    return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def key_mask_from(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, T) 0/1 padding mask → (B, 1, 1, T) multiplicative key mask."""
    if attention_mask is None:
        return None
    return attention_mask[:, None, None, :].to(dtype)
