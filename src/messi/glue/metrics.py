"""GLUE's official metrics, computed with scikit-learn and scipy."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from ..datasets import Task


def compute_metrics(task: Task, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Task metrics from model outputs.

    predictions : (m, num_labels) logits, or (m,) / (m, 1) scores for STS-B.
    labels : (m,) class ids, or float scores for STS-B.
    Returns e.g. {"accuracy": ...}, {"f1": ..., "accuracy": ...}, {"pearson": ..., "spearman": ...}.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if task.is_regression:
        scores = predictions.reshape(-1).astype(np.float64)
        return {"pearson": float(pearsonr(scores, labels)[0]), "spearman": float(spearmanr(scores, labels)[0])}
    pred = predictions.argmax(-1) if predictions.ndim == 2 else predictions
    out = {}
    for name in task.metrics:
        if name == "matthews":
            out[name] = float(matthews_corrcoef(labels, pred))
        elif name == "f1":
            out[name] = float(f1_score(labels, pred))
        elif name == "accuracy":
            out[name] = float(accuracy_score(labels, pred))
    return out


def glue_score(metrics: dict[str, float]) -> float:
    """One number per task, as the GLUE board does: the mean of the task's metrics, in percent."""
    return 100.0 * float(np.mean(list(metrics.values())))
