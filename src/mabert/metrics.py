"""GLUE metrics (scikit-learn / scipy)."""
from __future__ import annotations

import numpy as np
from scipy.special import softmax
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def compute_metrics(metric: str, predictions, labels) -> dict:
    """predictions: class ids (classification) or scores (regression)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if metric == "accuracy":
        return {"accuracy": float(accuracy_score(labels, predictions))}
    if metric == "f1_accuracy":
        return {"f1": float(f1_score(labels, predictions)), "accuracy": float(accuracy_score(labels, predictions))}
    if metric == "matthews":
        return {"matthews_correlation": float(matthews_corrcoef(labels, predictions))}
    if metric == "pearson_spearman":
        return {"pearson": float(pearsonr(predictions, labels)[0]), "spearman": float(spearmanr(predictions, labels)[0])}
    raise ValueError(f"unknown metric {metric!r}")


def headline(metrics: dict) -> tuple[str, float]:
    """The one number to compare models by."""
    for key in ("accuracy", "matthews_correlation", "pearson"):
        if key in metrics:
            return key, metrics[key]
    key = next(iter(metrics))
    return key, metrics[key]


DECIDED_MARGIN = 0.2  # the teacher's top-class probability minus the runner-up's (two classes: p ≥ 0.6)


def teacher_agreement(student_logits, teacher_logits) -> dict:
    """Classification logits (N, C ≥ 2) of a student and its teacher: how often their classes agree, on all
    inputs and on those the teacher decides (top two probabilities ≥ DECIDED_MARGIN apart; None when it decides
    none). Out of domain a teacher is often undecided (measured: a quarter of news headlines), and there any
    small change flips its class; agreement where it decides says whether the student follows its real
    predictions."""
    student_logits, teacher_logits = np.asarray(student_logits), np.asarray(teacher_logits)
    agree = student_logits.argmax(-1) == teacher_logits.argmax(-1)
    top_two = np.sort(softmax(teacher_logits, axis=-1), axis=-1)[:, -2:]
    decided = (top_two[:, 1] - top_two[:, 0]) >= DECIDED_MARGIN
    return {"agreement": float(agree.mean()), "teacher_decided_share": float(decided.mean()),
            "agreement_where_teacher_decided": float(agree[decided].mean()) if decided.any() else None}
