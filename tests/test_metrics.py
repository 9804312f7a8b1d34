"""Metrics on cases small enough to check by hand, and the bootstrap's behaviour."""

import warnings

import numpy as np
import pytest

from cancer_classifier.core.metrics import (
    bootstrap_intervals,
    headline_metrics,
    per_class_metrics,
    scalar_scores,
    with_bounds,
)


def test_two_class_metrics_of_the_positive_class():
    # positive = class 0; predictions: 3 TP, 1 FN, 1 FP, 3 TN
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p0 = np.array([0.9, 0.8, 0.7, 0.4, 0.6, 0.3, 0.2, 0.1])
    m = headline_metrics(y, np.column_stack([p0, 1 - p0]), positive=0)
    assert m["sensitivity"] == 0.75 and m["specificity"] == 0.75 and m["precision"] == 0.75
    assert m["accuracy"] == 0.75 and m["jaccard"] == pytest.approx(3 / 5)
    assert m["roc_auc"] == pytest.approx(15 / 16)  # one of 16 positive-negative pairs misordered
    assert m["brier"] == pytest.approx(np.mean((p0 - (y == 0)) ** 2))


def test_multiclass_metrics_are_macro_averages():
    y = np.array([0, 1, 2, 2])
    proba = np.eye(3)[[0, 1, 2, 1]] * 0.9 + 0.1 / 3
    m = headline_metrics(y, proba, positive=0)
    assert m["accuracy"] == 0.75
    assert m["sensitivity"] == pytest.approx((1 + 1 + 0.5) / 3)
    per_class = per_class_metrics(y, proba, ["a", "b", "c"])
    assert per_class["c"]["sensitivity"] == 0.5 and per_class["b"]["specificity"] == pytest.approx(2 / 3)


def test_bootstrap_interval_is_seeded_contains_the_estimate_and_narrows_with_data():
    rng = np.random.default_rng(0)

    def case(n):
        y = rng.integers(0, 2, n)
        score = np.clip(y * 0.3 + rng.uniform(0, 0.7, n), 0, 1)
        return y, np.column_stack([1 - score, score])

    y, proba = case(60)
    first = bootstrap_intervals(y, proba, positive=1, resamples=300, seed=1)
    assert first == bootstrap_intervals(y, proba, positive=1, resamples=300, seed=1)
    estimate = headline_metrics(y, proba, positive=1)
    for name, (low, high) in first.items():
        assert low <= estimate[name] <= high
    y_big, proba_big = case(1000)
    wide, narrow = first["roc_auc"], bootstrap_intervals(y_big, proba_big, 1, 300, 1)["roc_auc"]
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 2


def test_the_metric_files_hold_each_interval_bound_as_a_scalar():
    """`dvc metrics show` and `dvc exp show` drop lists: each bound is a number of its own."""
    metrics, intervals = {"roc_auc": 0.91234, "brier": 0.05}, {"roc_auc": [0.85, 0.96789], "brier": [0.01, 0.1]}
    expected = {
        "roc_auc": 0.9123, "roc_auc_ci95_low": 0.85, "roc_auc_ci95_high": 0.9679,
        "brier": 0.05, "brier_ci95_low": 0.01, "brier_ci95_high": 0.1,
    }
    assert scalar_scores(metrics, intervals) == expected
    assert with_bounds("baseline_roc_auc", 0.5, [0.3, 0.7]) == {
        "baseline_roc_auc": 0.5, "baseline_roc_auc_ci95_low": 0.3, "baseline_roc_auc_ci95_high": 0.7
    }


def test_roc_auc_of_a_sample_missing_a_class_is_undefined_not_a_warning():
    """A bootstrap resample of a multi-class test set can miss a class: its ROC-AUC is nan, quietly."""
    proba = np.random.default_rng(0).dirichlet([1, 1, 1], 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(headline_metrics(np.array([0, 1, 1, 0, 1, 0]), proba, positive=0)["roc_auc"])
        assert not np.isnan(headline_metrics(np.array([0, 1, 2, 0, 1, 2]), proba, positive=0)["roc_auc"])
