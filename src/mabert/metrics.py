"""GLUE metrics (scikit-learn / scipy)."""
from __future__ import annotations

import numpy as np
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
