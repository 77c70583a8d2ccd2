"""Fit a softmax approximator to reproduce softmax on attention-score rows."""
from __future__ import annotations

import torch
from torch import nn

from .batches import make_loader, model_inputs
from .data import tokenize
from .kd_losses import layer_map
from .powernorm import PowerNorm, calibrate_running_phi
from .registry import layer_parts
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
    targets: torch.Tensor | None = None,
    row_weights: torch.Tensor | None = None,
    anneal: bool = False,
) -> float:
    """Train on (rows, key_mask) of shape (N, L) to match `targets` (default: masked softmax), each row's squared
    error weighted by `row_weights` (N, 1) if given, the learning rate cosine-annealed to 0 with `anneal`;
    returns the final (weighted) MSE on all rows."""
    generator = torch.Generator().manual_seed(seed)
    targets = softmax_targets(rows, key_mask) if targets is None else targets

    def loss_of(got, index):
        if row_weights is None:
            return nn.functional.mse_loss(got, targets[index])
        return ((got - targets[index]) ** 2 * row_weights[index]).mean()

    optimizer = torch.optim.Adam(approximator.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if anneal else None
    approximator.train()
    for _ in range(steps):
        index = torch.randint(0, rows.shape[0], (min(batch_size, rows.shape[0]),), generator=generator)
        loss = loss_of(approximator(rows[index], key_mask[index]), index)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
    approximator.eval()
    with torch.no_grad():
        return loss_of(approximator(rows, key_mask), slice(None)).item()


def init_approximator(approximator: SoftmaxApproximator, steps: int = 300, seed: int = 0) -> float:
    """Start an approximator near softmax using synthetic rows (before any real-data fitting)."""
    generator = torch.Generator().manual_seed(seed)
    rows = synthetic_score_rows(8192, approximator.input_size, generator)
    key_mask = (rows != 0).to(rows.dtype)
    return fit_approximator(approximator, rows, key_mask, steps=steps, seed=seed)


def _query_key_modules(teacher: nn.Module) -> list[tuple[nn.Module, nn.Module, int]]:
    """(query Linear, key Linear, heads) per teacher layer, in order."""
    found = [(parts.query, parts.key, parts.num_heads) for parts in layer_parts(teacher)]
    if not found:
        raise ValueError("teacher has no BERT/DistilBERT self-attention modules")
    return found


@torch.no_grad()
def collect_score_rows(teacher: nn.Module, batches, length: int, rows_per_layer: int = 20000, seed: int = 0,
                       keep_fraction: float | None = None):
    """The teacher's real scaled attention-score rows per layer, zero-padded to `length`, on the CPU.
    batches: iterable of dicts with input_ids / attention_mask (and token_type_ids), moved to the model's device.
    With `keep_fraction`, each batch's rows are thinned to about that share as they come (memory: a long corpus
    has millions of rows per layer). Returns per layer (rows (N, L), key_mask (N, L))."""
    generator = torch.Generator().manual_seed(seed)
    thinning = torch.Generator().manual_seed(seed + 1)
    device = next(teacher.parameters()).device
    modules = _query_key_modules(teacher)
    captured: dict[int, dict[str, torch.Tensor]] = {}
    hooks = []
    for index, (query, key, _) in enumerate(modules):
        hooks.append(query.register_forward_hook(lambda m, i, o, index=index: captured.setdefault(index, {}).__setitem__("q", o)))
        hooks.append(key.register_forward_hook(lambda m, i, o, index=index: captured.setdefault(index, {}).__setitem__("k", o)))
    per_layer = [([], []) for _ in modules]
    teacher.eval()
    try:
        for batch in batches:
            mask = batch["attention_mask"].to(device)
            if mask.shape[1] > length:
                raise ValueError(f"batch length {mask.shape[1]} exceeds the approximator length {length}")
            teacher(**{k: v.to(device) for k, v in batch.items()
                       if k in ("input_ids", "attention_mask", "token_type_ids")})
            for index, (_, _, heads) in enumerate(modules):
                q, k = captured[index]["q"], captured[index]["k"]
                batch_size, tokens, width = q.shape
                q = q.view(batch_size, tokens, heads, -1).transpose(1, 2)
                k = k.view(batch_size, tokens, heads, -1).transpose(1, 2)
                scores = (q @ k.transpose(-1, -2)) / (width // heads) ** 0.5
                keys = mask[:, None, None, :].to(scores.dtype).expand_as(scores)
                real_rows = mask[:, None, :].expand(batch_size, heads, tokens).reshape(-1).bool()
                if keep_fraction is not None:
                    real_rows &= (torch.rand(real_rows.shape, generator=thinning) < keep_fraction).to(device)
                rows = (scores * keys).reshape(-1, tokens)[real_rows].cpu()
                keys = keys.reshape(-1, tokens)[real_rows].cpu()
                per_layer[index][0].append(nn.functional.pad(rows, (0, length - tokens)))
                per_layer[index][1].append(nn.functional.pad(keys, (0, length - tokens)))
    finally:
        for hook in hooks:
            hook.remove()
    result = []
    for rows, keys in per_layer:
        rows, keys = torch.cat(rows), torch.cat(keys)
        if rows.shape[0] > rows_per_layer:
            pick = torch.randperm(rows.shape[0], generator=generator)[:rows_per_layer]
            rows, keys = rows[pick], keys[pick]
        result.append((rows, keys))
    return result


def has_learnt_approximators(model: nn.Module) -> bool:
    """Whether every layer's attention is the paper's approximator (ReLU attention and PolySoftmax learn nothing
    to fit to softmax or to calibrate)."""
    return all(isinstance(parts.approximator, SoftmaxApproximator) for parts in layer_parts(model))


def fit_student_approximators(student: nn.Module, teacher_rows, steps: int = 400, seed: int = 0) -> list[float]:
    """Fit each student approximator on the rows of the teacher layer it maps to (all rows if shared).
    Returns the MSE to softmax per student layer."""
    if not has_learnt_approximators(student):
        return []  # ReLU attention, PolySoftmax: nothing to fit
    approximators = [parts.approximator for parts in layer_parts(student)]
    mapping = layer_map(len(approximators), len(teacher_rows))
    if approximators and all(a is approximators[0] for a in approximators):
        rows = torch.cat([teacher_rows[t - 1][0] for t in mapping])
        keys = torch.cat([teacher_rows[t - 1][1] for t in mapping])
        fit_approximator(approximators[0], rows, keys, steps=steps, seed=seed)
    else:
        for approx, t in zip(approximators, mapping):
            fit_approximator(approx, *teacher_rows[t - 1], steps=steps, seed=seed)
    errors = []
    with torch.no_grad():
        for approx, t in zip(approximators, mapping):
            rows, keys = teacher_rows[t - 1]
            errors.append(nn.functional.mse_loss(approx(rows, keys), softmax_targets(rows, keys)).item())
    return errors


def fit_to_teacher(student: nn.Module, teacher: nn.Module, tokenizer, texts, count: int = 512, steps: int = 400,
                   seed: int = 0) -> dict:
    """The step between conversion and KD: fit the student's approximators on the teacher's real score rows for
    the first `count` of `texts` (a dataset with text_a[/text_b]); for a student whose PowerNorms are untrained,
    also set their φ from the same texts (inference would otherwise divide by the initial φ = 1). A student with
    ReLU attention has nothing to fit: the teacher's score rows are then not collected."""
    length = student.config.softmax_input_size
    loader = make_loader(tokenize(texts.select(range(min(len(texts), count))), tokenizer, length), tokenizer, 32)
    has_approximators = has_learnt_approximators(student)
    rows = collect_score_rows(teacher, loader, length, seed=seed) if has_approximators else []
    errors = fit_student_approximators(student, rows, steps=steps, seed=seed) if has_approximators else []
    norms = [m for m in student.modules() if isinstance(m, PowerNorm)]
    calibrated = bool(norms) and all(int(n.iters.item()) == 0 for n in norms)
    if calibrated:
        calibrate_running_phi(student, loader, lambda model, batch: model(**model_inputs(model, batch)))
    return {"approximator_mse_per_layer": errors, "score_rows_per_layer": int(rows[0][0].shape[0]) if rows else 0,
            "phi_calibrated": calibrated}
