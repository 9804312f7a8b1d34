"""Stage 4: score the trained model on the held-out test split only, with intervals and plots."""

import csv
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import keras
import matplotlib.pyplot as plt
import numpy as np
from dvclive import Live
from sklearn.calibration import calibration_curve
from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve

from cancer_classifier.components.dataset import data_report, image_batches, split_files
from cancer_classifier.components.metrics import bootstrap_intervals, headline_metrics, per_class_metrics
from cancer_classifier.components.model_card import build_model_card, render_markdown
from cancer_classifier.components.shortcut_audit import shortcut_audit
from cancer_classifier.entity import EvaluationConfig
from cancer_classifier.modeling import after_harmonise, harmonise_layer, load_classifier
from cancer_classifier.utils.common import atomic_directory, load_json, save_json, sha256_file
from cancer_classifier.utils.logging import logger

PREDICT_BATCH = 16


def _curves(ax_roc, ax_pr, ax_cal, truth: np.ndarray, score: np.ndarray, name: str) -> None:
    fpr, tpr, _ = roc_curve(truth, score)
    precision, recall, _ = precision_recall_curve(truth, score)
    observed, predicted = calibration_curve(truth, score, n_bins=5, strategy="quantile")
    ax_roc.plot(fpr, tpr, label=name)
    ax_pr.plot(recall, precision, label=name)
    ax_cal.plot(predicted, observed, marker="o", label=name)


def save_plots(out: Path, y_true: np.ndarray, proba: np.ndarray, classes: list[str], positive: int) -> None:
    """ROC, precision-recall, calibration and normalised confusion matrix as PNG files."""
    figures = {name: plt.subplots(figsize=(5, 4.5)) for name in ("roc", "precision_recall", "calibration")}
    shown = [positive] if len(classes) == 2 else range(len(classes))
    for i in shown:
        _curves(*(figures[n][1] for n in figures), y_true == i, proba[:, i], classes[i])
    labels = {
        "roc": ("false positive rate", "true positive rate (sensitivity)"),
        "precision_recall": ("recall (sensitivity)", "precision"),
        "calibration": ("mean predicted probability", "observed frequency"),
    }
    for name, (fig, ax) in figures.items():
        if name != "precision_recall":
            ax.plot([0, 1], [0, 1], ls=":", c="grey")
        ax.set(xlabel=labels[name][0], ylabel=labels[name][1], title=f"{name.replace('_', '-')} (held-out test)")
        ax.legend(loc="lower right" if name == "roc" else "best")
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
    matrix = confusion_matrix(y_true, proba.argmax(axis=1), labels=range(len(classes)))
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.6 * len(classes) + 2.5, 1.4 * len(classes) + 2))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    for (r, c), count in np.ndenumerate(matrix):
        ax.text(
            c,
            r,
            f"{count}\n{normalised[r, c]:.0%}",
            ha="center",
            va="center",
            color="white" if normalised[r, c] > 0.5 else "black",
        )
    ax.set(
        xticks=range(len(classes)),
        yticks=range(len(classes)),
        xlabel="predicted",
        ylabel="actual",
        title="confusion matrix (held-out test)",
    )
    ax.set_xticklabels(classes, rotation=30, ha="right")
    ax.set_yticklabels(classes)
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=110)
    plt.close(fig)


def log_dvclive(
    out: Path, scores: dict, y_true: np.ndarray, proba: np.ndarray, classes: list[str], positive: int
) -> None:
    """Metrics and DVC plot data (ROC, PR, calibration, confusion) through dvclive."""
    with Live(dir=str(out / "dvclive"), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        for name, value in scores.items():
            live.summary[name] = value
        names = [classes[i] for i in y_true]
        live.log_sklearn_plot("confusion_matrix", names, [classes[i] for i in proba.argmax(axis=1)])
        truth, score = (y_true == positive).astype(int), proba[:, positive]
        if len(classes) == 2:
            for kind in ("roc", "precision_recall", "calibration"):
                live.log_sklearn_plot(kind, truth, score)


class Evaluation:
    def __init__(self, config: EvaluationConfig) -> None:
        self.config = config

    def predict_test(self, model: keras.Model) -> tuple[list[str], np.ndarray, np.ndarray]:
        paths, y_true = split_files(self.config.data_dir, "test")
        batches = image_batches(paths, harmonise_layer(model), PREDICT_BATCH)
        proba = after_harmonise(model).predict(batches, verbose=1)
        return paths, y_true, proba.astype(np.float64)

    def run(self) -> dict:
        config = self.config
        data = data_report(config.data_dir)
        info = data["dataset"]
        classes = info["classes"]
        positive = classes.index(config.positive_class)
        model = load_classifier(config.model_dir / "model.keras")
        paths, y_true, proba = self.predict_test(model)
        scores = headline_metrics(y_true, proba, positive)
        intervals = bootstrap_intervals(y_true, proba, positive, config.bootstrap_resamples, config.seed)
        audit = shortcut_audit(
            config.data_dir, harmonise_layer(model), positive, config.bootstrap_resamples, config.seed
        )
        baseline = audit["metadata"]
        report = {
            "split": "test (held out: never used for training or early stopping)",
            "test_images": len(y_true),
            "classes": classes,
            "positive_class": config.positive_class if len(classes) == 2 else None,
            "averaging": "positive class" if len(classes) == 2 else "macro over classes",
            "demo": info["demo"],
            "metrics": scores,
            "ci95": intervals,
            "bootstrap_resamples": config.bootstrap_resamples,
            "per_class": per_class_metrics(y_true, proba, classes),
            "confusion_matrix": confusion_matrix(y_true, proba.argmax(axis=1), labels=range(len(classes))).tolist(),
            "baseline": baseline,
            "input_baseline": audit["model_input"],
            "harmonised": harmonise_layer(model).harmonise,
            "model_sha256": sha256_file(config.model_dir / "model.keras"),  # register checks it scored this model
            "shortcut_warning": baseline["metrics"]["roc_auc"] >= scores["roc_auc"] - config.shortcut_margin,
        }
        card = build_model_card(
            report,
            data,
            load_json(config.base_model_dir / "base_model_info.json"),
            load_json(config.model_dir / "training_info.json"),
        )
        with atomic_directory(config.root_dir) as out:
            save_json(out / "evaluation.json", report)
            save_json(out / "model_card.json", card)
            (out / "model_card.md").write_text(render_markdown(card))
            with open(out / "predictions.csv", "w", newline="") as file:
                writer = csv.writer(file)
                writer.writerow(["file", "label", "predicted", *[f"p_{c}" for c in classes]])
                for path, truth, p in zip(paths, y_true, proba):
                    writer.writerow([Path(path).name, classes[truth], classes[p.argmax()], *np.round(p, 6)])
            save_plots(out, y_true, proba, classes, positive)
            log_dvclive(out, scores, y_true, proba, classes, positive)
        self.write_scores(report)
        logger.info("held-out test (%d images): %s", len(y_true), {k: round(v, 4) for k, v in scores.items()})
        return report

    def write_scores(self, report: dict) -> None:
        """The DVC metric file (headline numbers, intervals, the shortcut baseline), replaced atomically."""
        partial = self.config.scores_path.with_suffix(".json.partial")
        save_json(
            partial,
            {
                **{k: round(v, 4) for k, v in report["metrics"].items()},
                "ci95": {k: [round(a, 4), round(b, 4)] for k, (a, b) in report["ci95"].items()},
                "baseline_roc_auc": round(report["baseline"]["metrics"]["roc_auc"], 4),
                "baseline_roc_auc_ci95": [round(v, 4) for v in report["baseline"]["ci95"]["roc_auc"]],
                "input_baseline_roc_auc": round(report["input_baseline"]["metrics"]["roc_auc"], 4),
                "shortcut_warning": report["shortcut_warning"],
                "test_images": report["test_images"],
                "demo": report["demo"],
            },
        )
        os.replace(partial, self.config.scores_path)
