"""Stage 5: score the trained model on the held-out test split only (and an external test set if one
was ingested), with intervals and plots, through the scoring path the app serves, in both precisions.

float32 is the reference; bfloat16 (base only) may be served only where this stage measured that it
changes no more labels and ROC-AUC no more than ``evaluation.bfloat16_tolerance`` allows.
"""

import csv
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
from dvclive import Live
from sklearn.calibration import calibration_curve
from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve

from cancer_classifier.components.dataset import data_report, split_files
from cancer_classifier.components.metrics import bootstrap_intervals, headline_metrics, per_class_metrics
from cancer_classifier.components.model_card import build_model_card, render_markdown
from cancer_classifier.components.shortcut_audit import shortcut_audit
from cancer_classifier.entity import EvaluationConfig
from cancer_classifier.modeling import MODEL_FILE, PRECISIONS, harmonise_layer, load_classifier
from cancer_classifier.ood import REFERENCE_FILE, OODReference
from cancer_classifier.scoring import Scorer
from cancer_classifier.utils.common import atomic_directory, load_json, save_json, sha256_file
from cancer_classifier.utils.logging import logger

PREDICT_BATCH = 16
REFERENCE_PRECISION = "float32"
BFLOAT16 = "mixed_bfloat16"


def precision_agreement(y_true: np.ndarray, reference: np.ndarray, other: np.ndarray, positive: int) -> dict:
    """How far bfloat16's probabilities are from float32's for the same images."""
    difference = np.abs(reference - other).max(axis=1)
    changed = int((reference.argmax(axis=1) != other.argmax(axis=1)).sum())
    auc = [headline_metrics(y_true, p, positive)["roc_auc"] for p in (reference, other)]
    return {
        "images": int(len(y_true)),
        "label_changes": changed,
        "same_label_rate": 1 - changed / max(len(y_true), 1),
        "max_probability_difference": float(difference.max(initial=0)),
        "median_probability_difference": float(np.median(difference)) if len(difference) else 0.0,
        "roc_auc_change": float(auc[1] - auc[0]),
    }


def split_report(y_true: np.ndarray, proba: np.ndarray, classes: list[str], positive: int, config) -> dict:
    """Headline metrics with bootstrap intervals, per-class figures and the confusion matrix of one split."""
    return {
        "images": int(len(y_true)),
        "metrics": headline_metrics(y_true, proba, positive),
        "ci95": bootstrap_intervals(y_true, proba, positive, config.bootstrap_resamples, config.seed),
        "per_class": per_class_metrics(y_true, proba, classes),
        "confusion_matrix": confusion_matrix(y_true, proba.argmax(axis=1), labels=range(len(classes))).tolist(),
    }


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


def write_predictions(path: Path, scored: dict, classes: list[str], ood: OODReference | None) -> None:
    """One row per split, image and precision: what the app answers for the same file in that precision."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            [
                "split",
                "file",
                "label",
                "precision",
                "predicted",
                "in_distribution",
                "ood_score",
                *[f"p_{c}" for c in classes],
            ]
        )
        for split, (paths, y_true, by_precision) in scored.items():
            for precision, (features, proba) in by_precision.items():
                distances = ood.distances(features) if ood else [None] * len(paths)
                for path, truth, p, distance in zip(paths, y_true, proba, distances):
                    inside = "" if distance is None else distance <= ood.threshold
                    score = "" if distance is None else round(distance / max(ood.threshold, 1e-12), 3)
                    writer.writerow(
                        [
                            split,
                            Path(path).name,
                            classes[truth],
                            precision,
                            classes[p.argmax()],
                            inside,
                            score,
                            *np.round(p, 6),
                        ]
                    )


def scores_of_split(report: dict) -> dict:
    """A split's headline metrics and intervals, rounded for the metric file."""
    return {
        **{k: round(v, 4) for k, v in report["metrics"].items()},
        "ci95": {k: [round(a, 4), round(b, 4)] for k, (a, b) in report["ci95"].items()},
    }


def scores_of_agreement(serving: dict) -> dict:
    """bfloat16 against float32 on the test split: the served-precision check in the metric file."""
    test = serving["agreement"]["test"]
    return {
        "roc_auc": round(test["bfloat16_metrics"]["roc_auc"], 4),
        "label_changes": test["label_changes"],
        "max_probability_difference": round(test["max_probability_difference"], 4),
        "servable": BFLOAT16 in serving["servable"],
    }


class Evaluation:
    def __init__(self, config: EvaluationConfig) -> None:
        self.config = config

    def score_split(self, scorers: dict[str, Scorer], split: str) -> tuple[list[str], np.ndarray, dict]:
        """Paths, labels and ``{precision: (features, probabilities)}`` of one ingested split."""
        paths, y_true = split_files(self.config.data_dir, split)
        scored = {
            precision: tuple(a.astype(np.float64) for a in scorer.score_files(paths, PREDICT_BATCH, f"{split} split"))
            for precision, scorer in scorers.items()
        }
        return paths, y_true, scored

    def precision_verdict(self, agreements: dict[str, dict]) -> dict:
        """Which precisions may be served: bfloat16 only within the tolerance on every scored split."""
        config = self.config
        within = all(
            a["label_changes"] <= config.bfloat16_label_changes and abs(a["roc_auc_change"]) <= config.bfloat16_roc_auc
            for a in agreements.values()
        )
        tolerance = f"at most {config.bfloat16_label_changes} label change(s), ROC-AUC within {config.bfloat16_roc_auc}"
        measured = ", ".join(
            f"{split}: {a['label_changes']} label change(s), ROC-AUC {a['roc_auc_change']:+.4f}"
            for split, a in agreements.items()
        )
        verdict = (
            f"bfloat16 may be served ({measured}; allowed: {tolerance})"
            if within
            else f"bfloat16 is NOT served: it differs from float32 beyond the tolerance ({measured}; "
            f"allowed: {tolerance}); the app serves this model in float32"
        )
        (logger.info if within else logger.warning)(verdict)
        return {
            "reference": REFERENCE_PRECISION,
            "servable": list(PRECISIONS) if within else [REFERENCE_PRECISION],
            "verdict": verdict,
            "agreement": agreements,
        }

    def run(self) -> dict:
        config = self.config
        data = data_report(config.data_dir)
        info = data["dataset"]
        classes = info["classes"]
        positive = classes.index(config.positive_class)
        model = load_classifier(config.model_dir / MODEL_FILE)
        ood_path = config.model_dir / REFERENCE_FILE
        ood = OODReference.load(ood_path) if ood_path.is_file() else None
        scorers = {precision: Scorer(model, precision) for precision in PRECISIONS}
        splits = ["test"] + (["external"] if (data.get("external") or {}).get("images_kept") else [])
        scored = {split: self.score_split(scorers, split) for split in splits}
        reports, agreements = {}, {}
        for split, (_, y_true, by_precision) in scored.items():
            reference, other = by_precision[REFERENCE_PRECISION][1], by_precision[BFLOAT16][1]
            reports[split] = split_report(y_true, reference, classes, positive, config)
            agreements[split] = precision_agreement(y_true, reference, other, positive)
            agreements[split]["bfloat16_metrics"] = headline_metrics(y_true, other, positive)
        paths, y_true, by_precision = scored["test"]
        proba = by_precision[REFERENCE_PRECISION][1]
        test = reports["test"]
        audit = shortcut_audit(
            config.data_dir, harmonise_layer(model), positive, config.bootstrap_resamples, config.seed
        )
        baseline = audit["metadata"]
        report = {
            "split": "test (held out: never used for training, head selection or early stopping)",
            "test_images": test["images"],
            "classes": classes,
            "positive_class": config.positive_class if len(classes) == 2 else None,
            "averaging": "positive class" if len(classes) == 2 else "macro over classes",
            "demo": info["demo"],
            "precision": REFERENCE_PRECISION,
            **{key: test[key] for key in ("metrics", "ci95", "per_class", "confusion_matrix")},
            "bootstrap_resamples": config.bootstrap_resamples,
            "serving_precision": self.precision_verdict(agreements),
            "external": (
                {"source": data["external"]["source"], **reports["external"]} if "external" in reports else None
            ),
            "baseline": baseline,
            "input_baseline": audit["model_input"],
            "harmonised": harmonise_layer(model).harmonise,
            "model_sha256": sha256_file(config.model_dir / MODEL_FILE),  # register checks it scored this model
            "shortcut_warning": baseline["metrics"]["roc_auc"] >= test["metrics"]["roc_auc"] - config.shortcut_margin,
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
            write_predictions(out / "predictions.csv", scored, classes, ood)
            save_plots(out, y_true, proba, classes, positive)
            log_dvclive(out, report["metrics"], y_true, proba, classes, positive)
        self.write_scores(report)
        logger.info(
            "held-out test (%d images): %s", len(y_true), {k: round(v, 4) for k, v in report["metrics"].items()}
        )
        if report["external"]:
            logger.info(
                "external test (%d images): %s",
                report["external"]["images"],
                {k: round(v, 4) for k, v in report["external"]["metrics"].items()},
            )
        return report

    def write_scores(self, report: dict) -> None:
        """The DVC metric file (headline numbers, intervals, the shortcut baseline), replaced atomically."""
        partial = self.config.scores_path.with_suffix(".json.partial")
        save_json(
            partial,
            {
                **scores_of_split(report),
                "baseline_roc_auc": round(report["baseline"]["metrics"]["roc_auc"], 4),
                "baseline_roc_auc_ci95": [round(v, 4) for v in report["baseline"]["ci95"]["roc_auc"]],
                "input_baseline_roc_auc": round(report["input_baseline"]["metrics"]["roc_auc"], 4),
                "shortcut_warning": report["shortcut_warning"],
                "test_images": report["test_images"],
                "demo": report["demo"],
                "bfloat16": scores_of_agreement(report["serving_precision"]),
                "external": (
                    scores_of_split(report["external"]) | {"images": report["external"]["images"]}
                    if report["external"]
                    else None
                ),
            },
        )
        os.replace(partial, self.config.scores_path)
