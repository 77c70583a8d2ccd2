"""Technique 4: knowledge transfer from a baseline teacher.

loss = α·CE(student/T, softmax(teacher/T)) + (1−α)·task + β·(Σ hidden MSE + 100·Σ attention MSE)
For regression (one output) the soft-logit term is an MSE between the two predictions instead. Examples without
a label (IGNORE_LABEL, or NaN for regression: teacher-labelled augmentation) get every term but the task one.
Hidden states and attention maps are compared on real tokens only; a student with fewer layers
reads every k-th teacher layer (`layer_map`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ATTENTION_WEIGHT = 100.0
IGNORE_LABEL = -100  # cross-entropy's ignore_index: an example with no label


@dataclass
class KDWeights:
    alpha: float = 0.9
    temperature: float = 15.0
    beta: float = 1.0


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer (1-based; 0 = embeddings) matched to each student layer 1..S, evenly spaced."""
    if student_layers > teacher_layers:
        raise ValueError(f"student has more layers ({student_layers}) than the teacher ({teacher_layers})")
    return [round((i + 1) * teacher_layers / student_layers) for i in range(student_layers)]


def soft_cross_entropy(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """Cross-entropy to the teacher's softened distribution less its entropy (i.e. the KL divergence: same
    gradient, but 0 at a perfect match so the curve shows progress), scaled by T² (Hinton et al.) so the
    gradient does not shrink as 1/T² and the soft term still teaches at T = 15."""
    targets = torch.softmax(teacher_logits / temperature, dim=-1)
    log_targets = torch.log_softmax(teacher_logits / temperature, dim=-1)
    kl = (targets * (log_targets - torch.log_softmax(student_logits / temperature, dim=-1))).sum(-1).mean()
    return kl * temperature ** 2


def masked_mse(student, teacher, token_mask) -> torch.Tensor:
    """MSE over real tokens: token_mask (B, T) broadcast over the feature axis."""
    weight = token_mask[..., None].to(student.dtype)
    return ((student - teacher) ** 2 * weight).sum() / (weight.sum() * student.shape[-1]).clamp_min(1)


def attention_mse(student, teacher, token_mask) -> torch.Tensor:
    """MSE between (B, H, T, T) maps over real query rows and real key columns."""
    m = token_mask.to(student.dtype)
    weight = m[:, None, :, None] * m[:, None, None, :]
    return ((student - teacher) ** 2 * weight).sum() / (weight.sum() * student.shape[1]).clamp_min(1)


def representation_loss(student_out, teacher_out, attention_mask) -> dict[str, torch.Tensor]:
    """Σ hidden-state MSE (embeddings and every mapped layer) and Σ attention-map MSE, unweighted."""
    s_layers = len(student_out.hidden_states) - 1
    mapping = layer_map(s_layers, len(teacher_out.hidden_states) - 1)
    hidden = masked_mse(student_out.hidden_states[0], teacher_out.hidden_states[0].detach(), attention_mask)
    attention = hidden.new_zeros(())
    for s, t in enumerate(mapping, start=1):
        hidden = hidden + masked_mse(student_out.hidden_states[s], teacher_out.hidden_states[t].detach(),
                                     attention_mask)
        attention = attention + attention_mse(student_out.attentions[s - 1], teacher_out.attentions[t - 1].detach(),
                                              attention_mask)
    return {"hidden": hidden, "attention": attention}


def kd_loss(student_out, teacher_out, labels, attention_mask, weights: KDWeights = KDWeights(),
            num_labels: int = 2) -> dict[str, torch.Tensor]:
    """All loss terms and their weighted total."""
    s_logits, t_logits = student_out.logits, teacher_out.logits.detach()
    labelled = torch.isfinite(labels) if num_labels == 1 else labels != IGNORE_LABEL
    if num_labels == 1:
        soft = nn.functional.mse_loss(s_logits.squeeze(-1), t_logits.squeeze(-1))
        task = nn.functional.mse_loss(s_logits.squeeze(-1)[labelled], labels[labelled].to(s_logits.dtype))
    else:
        soft = soft_cross_entropy(s_logits, t_logits, weights.temperature)
        task = nn.functional.cross_entropy(s_logits[labelled], labels[labelled])
    if not labelled.any():  # a batch of augmentation only
        task = s_logits.new_zeros(())
    terms = {"soft": soft, "task": task}
    if weights.beta:
        terms.update(representation_loss(student_out, teacher_out, attention_mask))
    else:
        terms["hidden"] = terms["attention"] = s_logits.new_zeros(())
    hidden, attention = terms["hidden"], terms["attention"]
    terms["total"] = (weights.alpha * soft + (1 - weights.alpha) * task
                      + weights.beta * (hidden + ATTENTION_WEIGHT * attention))
    return terms
