"""What users meet: task metrics per input length, and agreement with the teacher on text the student was not
trained on (with both models' logit ranges)."""
from __future__ import annotations

import numpy as np
import torch

from .attention import request_attention_maps
from .batches import make_loader, pads_to_full_length
from .data import tokenize
from .errors import MABertError
from .kd_losses import attention_mse, layer_map, masked_mse
from .longtext import document_logits, max_length_of
from .metrics import compute_metrics, teacher_agreement
from .predict import torch_call
from .registry import model_input_names

LENGTH_EDGES = (32, 64, 128)  # token-length buckets: ≤32, 33–64, 65–128


def _inputs(model, batch) -> dict:
    """The entries of `batch` the model takes (mabert.registry: DistilBERT has no token_type_ids)."""
    return {k: batch[k] for k in model_input_names(model) if k in batch}


@torch.no_grad()
def predict_logits(model, tokenizer, dataset, batch_size: int = 64, max_length: int = 128):
    """(logits (N, C), labels (N,) or None, token lengths (N,)) in dataset order."""

    model.eval()
    max_length = min(max_length, getattr(model.config, "softmax_input_size", max_length))
    encoded = tokenize(dataset, tokenizer, max_length)
    loader = make_loader(encoded, tokenizer, batch_size, pad_to=pads_to_full_length(model))
    logits, labels, lengths = [], [], []
    for batch in loader:
        logits.append(model(**_inputs(model, batch)).logits.float())
        lengths.append(batch["attention_mask"].sum(-1))
        if "labels" in batch:
            labels.append(batch["labels"])
    logits = torch.cat(logits).numpy()
    return logits, (torch.cat(labels).numpy() if labels else None), torch.cat(lengths).numpy()


def predictions_of(logits: np.ndarray) -> np.ndarray:
    return logits[:, 0] if logits.shape[1] == 1 else logits.argmax(-1)


def metrics_by_length(logits, labels, lengths, metric: str, edges=LENGTH_EDGES) -> dict:
    """Task metrics per token-length bucket (empty buckets left out), each with its example count."""
    out, low = {}, 0
    for high in edges:
        picked = (lengths > low) & (lengths <= high)
        if picked.sum() >= 2:
            out[f"{low + 1}-{high}"] = {"examples": int(picked.sum()),
                                        **compute_metrics(metric, predictions_of(logits[picked]), labels[picked])}
        low = high
    return out


def compare_with_teacher(student, teacher, tokenizer, dataset, batch_size: int = 64) -> dict:
    """On (unlabelled) text: how often the student's prediction is the teacher's, and both models' logit ranges.
    Regression tasks report the mean absolute difference of the predictions instead of agreement."""
    s_logits, _, lengths = predict_logits(student, tokenizer, dataset, batch_size)
    t_logits, _, _ = predict_logits(teacher, tokenizer, dataset, batch_size)
    finite = np.isfinite(s_logits).all(-1)
    result = {"examples": len(s_logits), "median_tokens": float(np.median(lengths)),
              "student_non_finite": int((~finite).sum()),
              "student_max_abs_logit": float(np.abs(s_logits[finite]).max()) if finite.any() else float("inf"),
              "teacher_max_abs_logit": float(np.abs(t_logits).max())}
    if s_logits.shape[1] == 1:
        result["mean_abs_difference"] = float(np.abs(s_logits[:, 0] - t_logits[:, 0]).mean())
    else:
        result.update(teacher_agreement(s_logits, t_logits))
    return result


def _finite_logits(model, tokenizer, dataset, batch_size):
    """predict_logits, refusing non-finite logits (argmax would score them as a class)."""
    logits, labels, lengths = predict_logits(model, tokenizer, dataset, batch_size)
    _refuse_non_finite(model, logits)
    return logits, labels, lengths


def _refuse_non_finite(model, logits) -> None:
    bad = int((~np.isfinite(logits).all(-1)).sum())
    if bad:
        name = getattr(model, "name_or_path", "") or type(model).__name__
        raise MABertError(f"model {name} gives non-finite logits (NaN/inf) on {bad} of {len(logits)} examples; its "
                          "weights are broken or its activations overflow (an MA model: calibrate its activation "
                          "bounds by training it with mabert), so no metric was computed")


def evaluate(model, tokenizer, dataset, task, batch_size: int = 64) -> dict:
    """The task's metrics (GLUE conventions)."""
    logits, labels, _ = _finite_logits(model, tokenizer, dataset, batch_size)
    return compute_metrics(task.metric, predictions_of(logits), labels)


def evaluate_long_documents(model, tokenizer, dataset, task, strategy: str, stride: int | None = None,
                            batch_size: int = 64) -> dict:
    """The task's metrics with inputs longer than the model's L split per `strategy` (see mabert.longtext)."""

    model.eval()
    pairs = dataset["text_b"] if "text_b" in dataset.column_names else None
    logits = document_logits(torch_call(model), tokenizer, dataset["text_a"], max_length_of(model.config), strategy,
                             stride, pairs, batch_size, pads_to_full_length(model))
    _refuse_non_finite(model, logits)
    return compute_metrics(task.metric, predictions_of(logits), np.asarray(dataset["label"]))


def evaluate_with_lengths(model, tokenizer, dataset, task, batch_size: int = 64) -> dict:
    """The task's metrics overall and per token-length bucket (`by_length`)."""
    logits, labels, lengths = _finite_logits(model, tokenizer, dataset, batch_size)
    return {**compute_metrics(task.metric, predictions_of(logits), labels),
            "by_length": metrics_by_length(logits, labels, lengths, task.metric)}


@torch.no_grad()
def layer_errors(student, teacher, tokenizer, dataset, batch_size: int = 32) -> dict:
    """Per mapped layer: hidden-state MSE (embeddings first) and attention-map MSE of the student against the
    teacher on `dataset` (real tokens only), averaged over batches."""

    student.eval()
    teacher.eval()
    request_attention_maps(teacher)
    loader = make_loader(tokenize(dataset, tokenizer, student.config.softmax_input_size), tokenizer, batch_size)
    hidden, attention, batches = None, None, 0
    for batch in loader:
        mask = batch["attention_mask"]
        s_out = student(**_inputs(student, batch), output_hidden_states=True, output_attentions=True)
        t_out = teacher(**_inputs(teacher, batch), output_hidden_states=True, output_attentions=True)
        mapping = [0] + layer_map(len(s_out.hidden_states) - 1, len(t_out.hidden_states) - 1)
        h = [masked_mse(s_out.hidden_states[s], t_out.hidden_states[t], mask).item() for s, t in enumerate(mapping)]
        a = [attention_mse(s_out.attentions[s - 1], t_out.attentions[t - 1], mask).item()
             for s, t in enumerate(mapping) if s]
        hidden = h if hidden is None else [x + y for x, y in zip(hidden, h)]
        attention = a if attention is None else [x + y for x, y in zip(attention, a)]
        batches += 1
    return {"hidden_mse": [x / batches for x in hidden], "attention_mse": [x / batches for x in attention]}
