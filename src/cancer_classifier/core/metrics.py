"""Classification metrics on held-out predictions, with seeded bootstrap confidence intervals."""

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    jaccard_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

HEADLINE = ("accuracy", "roc_auc", "sensitivity", "specificity", "precision", "f1", "jaccard", "brier")


def _specificities(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """One-vs-rest specificity of every class: true negatives over all negatives."""
    matrix = confusion_matrix(y_true, y_pred, labels=range(n_classes))
    negatives = matrix.sum() - matrix.sum(axis=1)
    false_positives = matrix.sum(axis=0) - np.diag(matrix)
    return (negatives - false_positives) / np.maximum(negatives, 1)


def headline_metrics(y_true: np.ndarray, proba: np.ndarray, positive: int) -> dict[str, float]:
    """Two classes: metrics of ``positive`` (the cancer class). More: macro averages over classes."""
    n_classes = proba.shape[1]
    y_pred = proba.argmax(axis=1)
    present = len(np.unique(y_true))
    # a bootstrap resample can miss a class: its one-vs-rest ROC-AUC, and so the macro average, is undefined
    if present < 2 or (n_classes > 2 and present < n_classes):
        auc = float("nan")
    elif n_classes == 2:
        auc = roc_auc_score(y_true == positive, proba[:, positive])
    else:
        auc = roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=range(n_classes))
    if n_classes == 2:
        truth, predicted = y_true == positive, y_pred == positive
        scores = {
            "sensitivity": recall_score(truth, predicted, zero_division=0),
            "specificity": recall_score(~truth, ~predicted, zero_division=0),
            "precision": precision_score(truth, predicted, zero_division=0),
            "f1": f1_score(truth, predicted, zero_division=0),
            "jaccard": jaccard_score(truth, predicted, zero_division=0),
            "brier": np.mean((proba[:, positive] - truth) ** 2),
        }
    else:
        macro = {"average": "macro", "labels": range(n_classes), "zero_division": 0}
        scores = {
            "sensitivity": recall_score(y_true, y_pred, **macro),
            "specificity": _specificities(y_true, y_pred, n_classes).mean(),
            "precision": precision_score(y_true, y_pred, **macro),
            "f1": f1_score(y_true, y_pred, **macro),
            "jaccard": jaccard_score(y_true, y_pred, **macro),
            "brier": np.mean(((proba - np.eye(n_classes)[y_true]) ** 2).sum(axis=1)),
        }
    scores |= {"accuracy": accuracy_score(y_true, y_pred), "roc_auc": auc}
    return {name: float(scores[name]) for name in HEADLINE}


def per_class_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    y_pred = proba.argmax(axis=1)
    labels = range(len(classes))
    sensitivity = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    specificity = _specificities(y_true, y_pred, len(classes))
    return {
        name: {
            "sensitivity": float(sensitivity[i]),
            "specificity": float(specificity[i]),
            "roc_auc": float(roc_auc_score(y_true == i, proba[:, i]))
            if 0 < (y_true == i).sum() < len(y_true)
            else float("nan"),
            "support": int((y_true == i).sum()),
        }
        for i, name in enumerate(classes)
    }


def bootstrap_intervals(
    y_true: np.ndarray, proba: np.ndarray, positive: int, resamples: int, seed: int, level: float = 0.95
) -> dict[str, list[float]]:
    """Percentile intervals of each headline metric over resamples of the test set (with replacement)."""
    rng = np.random.default_rng(seed)
    draws = [
        headline_metrics(y_true[i], proba[i], positive) for i in rng.integers(0, len(y_true), (resamples, len(y_true)))
    ]
    tail = (1 - level) / 2 * 100
    return {
        name: [float(np.nanpercentile(values, tail)), float(np.nanpercentile(values, 100 - tail))]
        for name in HEADLINE
        for values in [np.array([d[name] for d in draws])]
    }


def with_bounds(name: str, value: float, interval: list[float]) -> dict[str, float]:
    """A metric and its 95% interval as three rounded scalars: ``dvc metrics show`` and ``dvc exp show``
    drop lists, so each bound is a number of its own (``roc_auc_ci95_low``, ``roc_auc_ci95_high``)."""
    low, high = interval
    return {name: round(value, 4), f"{name}_ci95_low": round(low, 4), f"{name}_ci95_high": round(high, 4)}


def scalar_scores(metrics: dict[str, float], intervals: dict[str, list[float]]) -> dict[str, float]:
    """Each metric followed by its interval's bounds, as the metric files hold them."""
    scores: dict[str, float] = {}
    for name, value in metrics.items():
        scores |= with_bounds(name, value, intervals[name])
    return scores
