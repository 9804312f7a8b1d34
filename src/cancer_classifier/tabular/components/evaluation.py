"""Tabular stage 3: score the model on the held-out test split with the chest-CT metric set, and
cross-validate it on the training split where the data is small.

Cross-validation refits a fresh copy of the saved Pipeline (preprocessing included) per fold, so
every fold's scaling and encoding see only that fold's training rows.
"""

import os

import numpy as np
from sklearn.base import clone
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import StratifiedKFold

from cancer_classifier.core.io import atomic_directory, save_json
from cancer_classifier.core.logging import logger
from cancer_classifier.core.metrics import bootstrap_intervals, headline_metrics, scalar_scores
from cancer_classifier.core.plots import log_dvclive, save_plots
from cancer_classifier.entity.tabular import TabularEvaluationConfig
from cancer_classifier.tabular.components.data import load_split
from cancer_classifier.tabular.model import TabularModel


def cross_validate(model: TabularModel, frame, labels: np.ndarray, folds: int, seed: int, positive: int) -> dict:
    """Out-of-fold metrics (pooled) and each fold's ROC-AUC, refitting the whole Pipeline per fold."""
    out_of_fold = np.zeros((len(labels), 2))
    fold_auc = []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (fit_rows, held_rows) in enumerate(splitter.split(frame, labels), start=1):
        pipeline = clone(model.pipeline).fit(frame.iloc[fit_rows], labels[fit_rows])
        out_of_fold[held_rows] = pipeline.predict_proba(frame.iloc[held_rows])
        fold_auc.append(headline_metrics(labels[held_rows], out_of_fold[held_rows], positive)["roc_auc"])
        logger.info("cross-validation fold %d/%d: ROC-AUC %.4f", fold, folds, fold_auc[-1])
    return {
        "folds": folds,
        "split": "training split only (the test split is never seen)",
        "metrics": headline_metrics(labels, out_of_fold, positive),
        "fold_roc_auc": fold_auc,
        "roc_auc_mean": float(np.mean(fold_auc)),
        "roc_auc_sd": float(np.std(fold_auc, ddof=1)),
    }


class TabularEvaluation:
    def __init__(self, config: TabularEvaluationConfig) -> None:
        self.config = config

    def run(self) -> dict:
        config = self.config
        model = TabularModel.load(config.model_dir)
        classes = model.classes
        positive = classes.index(model.metadata["positive_class"])
        test, y_true = load_split(config.data_dir, "test")
        proba = model.predict_proba(test)
        scores = headline_metrics(y_true, proba, positive)
        logger.info("%s: %d bootstrap resamples of the test rows", config.task.name, config.bootstrap_resamples)
        train, y_train = load_split(config.data_dir, "train")
        majority = int(np.bincount(y_train, minlength=2).argmax())
        report = {
            "task": config.task.name,
            "kind": config.task.kind,
            "split": "test (held out: never used for fitting, preprocessing or model choice)",
            "test_rows": len(y_true),
            "classes": classes,
            "positive_class": classes[positive],
            "model": model.metadata["model"]["kind"],
            "metrics": scores,
            "ci95": bootstrap_intervals(y_true, proba, positive, config.bootstrap_resamples, config.seed),
            "bootstrap_resamples": config.bootstrap_resamples,
            "confusion_matrix": confusion_matrix(y_true, proba.argmax(axis=1), labels=range(2)).tolist(),
            # What a model that always answers the training split's majority class scores here.
            "majority_class": classes[majority],
            "majority_class_accuracy": float(np.mean(y_true == majority)),
            "cross_validation": None,
        }
        if config.cv_folds:
            report["cross_validation"] = cross_validate(model, train, y_train, config.cv_folds, config.seed, positive)
        with atomic_directory(config.root_dir) as out:
            save_json(out / "evaluation.json", report)
            save_plots(out, y_true, proba, classes, positive)
            log_dvclive(out, scores, y_true, proba, classes, positive)
        self.write_scores(report)
        rounded = {k: round(v, 4) for k, v in scores.items()}
        logger.info("%s held-out test (%d rows): %s", config.task.name, len(y_true), rounded)
        return report

    def write_scores(self, report: dict) -> None:
        """The task's DVC metric file: headline numbers, interval bounds, the majority baseline, CV ROC-AUC."""
        path = self.config.scores_path
        path.parent.mkdir(parents=True, exist_ok=True)
        cv = report["cross_validation"]
        partial = path.with_suffix(".json.partial")
        save_json(partial, {
            **scalar_scores(report["metrics"], report["ci95"]),
            "majority_class_accuracy": round(report["majority_class_accuracy"], 4),
            "cv_roc_auc_mean": round(cv["roc_auc_mean"], 4) if cv else None,
            "cv_roc_auc_sd": round(cv["roc_auc_sd"], 4) if cv else None,
            "test_rows": report["test_rows"],
            "model": report["model"],
        })
        os.replace(partial, path)
