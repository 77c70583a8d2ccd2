"""Fit a softmax approximator to reproduce softmax on attention-score rows."""
from __future__ import annotations

import torch
from torch import nn

from .softmax_approx import SoftmaxApproximator


def synthetic_score_rows(count: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Score rows like BERT's: random real length T ≤ L, Gaussian scores of random spread, zeros after T."""
    lengths = torch.randint(1, length + 1, (count, 1), generator=generator)
    spread = torch.empty(count, 1).uniform_(0.3, 4.0, generator=generator)
    rows = torch.randn(count, length, generator=generator) * spread
    positions = torch.arange(length)[None, :]
    return rows * (positions < lengths)


def softmax_targets(rows: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Softmax over each row's real keys, zero on padded keys (what the approximator should output)."""
    return torch.softmax(rows.masked_fill(key_mask == 0, float("-inf")), dim=-1).nan_to_num(0.0)


def fit_approximator(
    approximator: SoftmaxApproximator,
    rows: torch.Tensor,
    key_mask: torch.Tensor,
    steps: int = 300,
    batch_size: int = 512,
    lr: float = 3e-3,
    seed: int = 0,
) -> float:
    """Train on (rows, key_mask) of shape (N, L) to match masked softmax; returns final MSE on all rows."""
    generator = torch.Generator().manual_seed(seed)
    targets = softmax_targets(rows, key_mask)
    optimizer = torch.optim.Adam(approximator.parameters(), lr=lr)
    approximator.train()
    for _ in range(steps):
        index = torch.randint(0, rows.shape[0], (min(batch_size, rows.shape[0]),), generator=generator)
        loss = nn.functional.mse_loss(approximator(rows[index], key_mask[index]), targets[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    approximator.eval()
    with torch.no_grad():
        return nn.functional.mse_loss(approximator(rows, key_mask), targets).item()


def init_approximator(approximator: SoftmaxApproximator, steps: int = 300, seed: int = 0) -> float:
    """Start an approximator near softmax using synthetic rows (before any real-data fitting)."""
    generator = torch.Generator().manual_seed(seed)
    rows = synthetic_score_rows(8192, approximator.input_size, generator)
    key_mask = (rows != 0).to(rows.dtype)
    return fit_approximator(approximator, rows, key_mask, steps=steps, seed=seed)
