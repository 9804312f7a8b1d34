"""Stage 5: score the trained model on the held-out test split only (and an external test set if one
was ingested), with intervals and plots, through the scoring path the app serves, in every variant.

TensorFlow in float32 is the reference; another variant (OpenVINO, bfloat16 base) may be served only
where this stage measured that it changes no more labels and ROC-AUC no more than
``evaluation.serving_tolerance`` allows.
"""

import csv
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import numpy as np
from sklearn.metrics import confusion_matrix

from cancer_classifier.chest_ct.components.dataset import data_report, split_files
from cancer_classifier.chest_ct.components.model_card import build_model_card, render_markdown
from cancer_classifier.chest_ct.components.prepare_base_model import load_base_info
from cancer_classifier.chest_ct.components.shortcut_audit import shortcut_audit
from cancer_classifier.chest_ct.modeling import MODEL_FILE, harmonise_layer, load_classifier
from cancer_classifier.chest_ct.ood import REFERENCE_FILE, OODReference
from cancer_classifier.chest_ct.scoring import REFERENCE, VARIANTS, Scorer
from cancer_classifier.core.errors import EngineUnavailable
from cancer_classifier.core.io import atomic_directory, load_json, save_json, sha256_file
from cancer_classifier.core.logging import logger
from cancer_classifier.core.metrics import (
    bootstrap_intervals,
    headline_metrics,
    per_class_metrics,
    scalar_scores,
    with_bounds,
)
from cancer_classifier.core.plots import log_dvclive, save_plots
from cancer_classifier.entity import EvaluationConfig

PREDICT_BATCH = 16


def variant_agreement(y_true: np.ndarray, reference: np.ndarray, other: np.ndarray, positive: int) -> dict:
    """How far a variant's probabilities are from the reference's for the same images, and its metrics."""
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
        "metrics": headline_metrics(y_true, other, positive),
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


def write_predictions(path: Path, scored: dict, classes: list[str], ood: OODReference | None) -> None:
    """One row per split, image and variant: what the app answers for the same file in that variant."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            [
                "split",
                "file",
                "label",
                "variant",
                "predicted",
                "in_distribution",
                "ood_score",
                *[f"p_{c}" for c in classes],
            ]
        )
        for split, (paths, y_true, by_variant) in scored.items():
            for variant, (features, proba) in by_variant.items():
                distances = ood.distances(features) if ood else [None] * len(paths)
                for path, truth, p, distance in zip(paths, y_true, proba, distances):
                    inside = "" if distance is None else distance <= ood.threshold
                    score = "" if distance is None else round(distance / max(ood.threshold, 1e-12), 3)
                    writer.writerow(
                        [
                            split,
                            Path(path).name,
                            classes[truth],
                            variant,
                            classes[p.argmax()],
                            inside,
                            score,
                            *np.round(p, 6),
                        ]
                    )


def scores_of_variants(serving: dict) -> dict:
    """Each variant against the reference on the test split: the serving check in the metric file."""
    return {
        variant: {
            "roc_auc": round(by_split["test"]["metrics"]["roc_auc"], 4),
            "label_changes": by_split["test"]["label_changes"],
            "max_probability_difference": round(by_split["test"]["max_probability_difference"], 4),
            "servable": variant in serving["servable"],
        }
        for variant, by_split in serving["variants"].items()
    }


class Evaluation:
    def __init__(self, config: EvaluationConfig) -> None:
        self.config = config

    def score_split(self, scorers: dict[str, Scorer], split: str) -> tuple[list[str], np.ndarray, dict]:
        """Paths, labels and ``{variant: (features, probabilities)}`` of one ingested split."""
        paths, y_true = split_files(self.config.data_dir, split)
        scored = {
            variant: tuple(a.astype(np.float64) for a in scorer.score_files(paths, PREDICT_BATCH, f"{split} split"))
            for variant, scorer in scorers.items()
        }
        return paths, y_true, scored

    def scorers(self, model) -> tuple[dict[str, Scorer], dict[str, str]]:
        """A scorer per variant this machine can compute, and why the others cannot."""
        scorers, unavailable = {}, {}
        for variant in VARIANTS:
            try:
                scorers[str(variant)] = Scorer(model, variant)
            except EngineUnavailable as reason:
                unavailable[str(variant)] = str(reason)
                logger.warning("%s is not scored (so never served for this model): %s", variant, reason)
        return scorers, unavailable

    def variant_verdict(self, agreements: dict[str, dict[str, dict]], unavailable: dict[str, str]) -> dict:
        """Which variants may be served: each only within the tolerance on every scored split."""
        config = self.config
        labels, auc = config.tolerated_label_changes, config.tolerated_roc_auc_change
        tolerance = f"at most {labels} label change(s), ROC-AUC within {auc}"
        servable, verdicts = [str(REFERENCE)], []
        for variant, by_split in agreements.items():
            within = all(a["label_changes"] <= labels and abs(a["roc_auc_change"]) <= auc for a in by_split.values())
            measured = ", ".join(
                f"{split}: {a['label_changes']} label change(s), ROC-AUC {a['roc_auc_change']:+.4f}"
                for split, a in by_split.items()
            )
            verdicts.append(f"{variant} {'may' if within else 'may NOT'} be served ({measured})")
            servable += [variant] if within else []
        verdicts += [f"{variant} was not measured ({reason})" for variant, reason in unavailable.items()]
        verdict = f"{'; '.join(verdicts)}; allowed: {tolerance} against {REFERENCE}"
        (logger.info if len(servable) == len(VARIANTS) else logger.warning)(verdict)
        return {"reference": str(REFERENCE), "servable": servable, "verdict": verdict, "variants": agreements}

    def run(self) -> dict:
        config = self.config
        data = data_report(config.data_dir)
        info = data["dataset"]
        classes = info["classes"]
        positive = classes.index(config.positive_class)
        model = load_classifier(config.model_dir / MODEL_FILE)
        ood_path = config.model_dir / REFERENCE_FILE
        ood = OODReference.load(ood_path) if ood_path.is_file() else None
        scorers, unavailable = self.scorers(model)
        splits = ["test"] + (["external"] if (data.get("external") or {}).get("images_kept") else [])
        scored = {split: self.score_split(scorers, split) for split in splits}
        reports, agreements = {}, {variant: {} for variant in scorers if variant != str(REFERENCE)}
        for split, (_, y_true, by_variant) in scored.items():
            reference = by_variant[str(REFERENCE)][1]
            reports[split] = split_report(y_true, reference, classes, positive, config)
            for variant, by_split in agreements.items():
                by_split[split] = variant_agreement(y_true, reference, by_variant[variant][1], positive)
        paths, y_true, by_variant = scored["test"]
        proba = by_variant[str(REFERENCE)][1]
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
            "variant": str(REFERENCE),
            **{key: test[key] for key in ("metrics", "ci95", "per_class", "confusion_matrix")},
            "bootstrap_resamples": config.bootstrap_resamples,
            "serving_variants": self.variant_verdict(agreements, unavailable),
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
            load_base_info(config.base_model_dir),
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
        """The DVC metric file (headline numbers, interval bounds, the shortcut baseline), replaced atomically."""
        external = report["external"]
        partial = self.config.scores_path.with_suffix(".json.partial")
        save_json(
            partial,
            {
                **scalar_scores(report["metrics"], report["ci95"]),
                **with_bounds(
                    "baseline_roc_auc", report["baseline"]["metrics"]["roc_auc"], report["baseline"]["ci95"]["roc_auc"]
                ),
                "input_baseline_roc_auc": round(report["input_baseline"]["metrics"]["roc_auc"], 4),
                "shortcut_warning": report["shortcut_warning"],
                "test_images": report["test_images"],
                "demo": report["demo"],
                "variants": scores_of_variants(report["serving_variants"]),
                "external": (
                    scalar_scores(external["metrics"], external["ci95"]) | {"images": external["images"]}
                    if external
                    else None
                ),
            },
        )
        os.replace(partial, self.config.scores_path)
