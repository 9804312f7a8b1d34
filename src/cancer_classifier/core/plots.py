"""Plots: the evaluation's, which both tasks share (PNG files for people, dvclive plot data for
`dvc plots`), and training curves per epoch through dvclive."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
from dvclive import Live
from sklearn.calibration import calibration_curve
from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve


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


def log_curves(out: Path, curves: dict[str, list[float]]) -> None:
    """Per-epoch curves through dvclive, step 1 the first epoch: the curve ``head/train/loss`` becomes
    ``out/dvclive/plots/metrics/head/train/loss.tsv`` (columns step and loss), which dvc.yaml ``plots``
    can name. Curves may differ in length; no curve writes no file."""
    with Live(dir=str(out / "dvclive"), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        live.step = 1
        for epoch in range(max(map(len, curves.values()), default=0)):
            for name, values in curves.items():
                if epoch < len(values):
                    live.log_metric(name, float(values[epoch]))
            live.next_step()
