"""The training benchmark: (a) the classic recipe against (b) our stages, on the same ingested data.

(a) runs as ``python -m benchmarks.classic`` in its own process; (b) is the real stages, each its own
process, as ``dvc repro`` runs them. Each recipe's peak memory is the largest resident set of any of its
processes (``os.wait4``), so they never mix. ``benchmarks.benchmark`` runs this, then the serving benchmark.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import yaml
from tqdm import tqdm

from benchmarks.classic import classic_optimizer
from benchmarks.harness import (
    BATCH,
    DATA_SOURCE,
    IMAGE_SIZE,
    REPO,
    SHARED,
    TARGETS,
    WEIGHTS,
    WEIGHTS_DESCRIPTION,
    Budget,
    child_env,
    fmt,
    gflops_per_s,
    run_measured,
    run_stage,
    target,
)

CLASSIC_MIN_AUC = 0.90  # below this test ROC-AUC the classic recipe did not learn: no comparison stands


# -- recipe (a): the classic one ----------------------------------------------------------------


def run_classic(project: Path, data_dir: Path, logs: Path, budget: Budget) -> dict:
    positive = yaml.safe_load((project / "params.yaml").read_text())["data"]["positive_class"]
    out = logs / "classic.json"
    args = [sys.executable, "-m", "benchmarks.classic", "--data-dir", str(data_dir), "--weights",
            str(WEIGHTS), "--epochs", str(budget.classic_epochs), "--positive", positive, "--out", str(out)]
    # its progress bar on the terminal; the repository root on its path, for -m benchmarks.classic
    measured = run_measured(args, project, logs / "classic.log", show_stderr=True, env=child_env(REPO))
    result = json.loads(out.read_text())
    epochs = result["epoch_seconds"]
    return {
        # The whole process (Python and TensorFlow start, VGG16 build, every epoch) minus test scoring,
        # as our train time is its stages' processes from start to end.
        "train_seconds": measured.seconds - result["test_seconds"],
        "feature_seconds": None,  # no feature pass: VGG16 runs inside every epoch
        "epoch_seconds": statistics.mean(epochs),
        "epochs": len(epochs),
        "roc_auc": result["scores"]["roc_auc"],
        "accuracy": result["scores"]["accuracy"],
        "test_images": result["test_images"],
        # each epoch: a VGG16 forward pass per training image (the frozen base needs no backward pass) and
        # per validation image
        "images_per_epoch": result["train_images"] + result["val_images"],
        "optimizer": classic_optimizer(),
        "peak_rss_mb": measured.peak_rss_mb,
    }


# -- recipe (b): our pipeline ------------------------------------------------------------------


def our_stages() -> list[str]:
    """The stages from base model to evaluation; ``features`` only where this checkout has that stage."""
    features = ["features"] if importlib.util.find_spec("cancer_classifier.chest_ct.pipeline.features") else []
    return ["prepare_base_model", *features, "training", "evaluation"]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def run_ours(project: Path, logs: Path) -> dict:
    stages = our_stages()
    measured = {stage: run_stage(stage, project, logs) for stage in tqdm(stages, desc="our pipeline", unit="stage")}
    artifacts = project / "artifacts"
    features = read_json(artifacts / "features/features_info.json")
    scores_file = yaml.safe_load((project / "config/config.yaml").read_text())["evaluation"]["scores_file"]
    scores = read_json(project / scores_file)
    selection = read_json(artifacts / "training/history.json")["head_selection"]
    return {
        "train_seconds": sum(m.seconds for stage, m in measured.items() if stage != "evaluation"),
        "feature_seconds": features.get("seconds"),  # the features stage's own timing of its pass
        "epoch_seconds": None,  # the head trains on cached features: no epoch runs VGG16
        "epochs": selection.get("epochs") or f"none ({selection['chosen']})",  # an MLP head's refit epochs
        "roc_auc": scores["roc_auc"],
        "accuracy": scores["accuracy"],
        "test_images": scores.get("test_images"),
        "peak_rss_mb": max(m.peak_rss_mb for m in measured.values()),
        "stage_seconds": {stage: round(m.seconds, 1) for stage, m in measured.items()},
        "features_stage": "features" in measured,
        "feature_variant": features.get("variant") or features.get("precision", "float32"),
        "forward_passes": features.get("forward_passes"),  # of the features stage
    }


def run(project: Path, data_dir: Path, logs: Path, budget: Budget) -> tuple[dict, dict]:
    """(a) then (b), on the ingested data in ``data_dir``: each recipe's measurements."""
    return run_classic(project, data_dir, logs, budget), run_ours(project, logs)


# -- figures and verdict -----------------------------------------------------------------------


def figures(classic: dict, ours: dict) -> dict:
    return {
        "train_speedup": classic["train_seconds"] / ours["train_seconds"],
        "auc_ours": ours["roc_auc"],
        "auc_classic": classic["roc_auc"],
        # NaN (a recipe that could not be scored) compares False: void
        "comparison_valid": bool(classic["roc_auc"] >= CLASSIC_MIN_AUC),
    }


def targets(classic: dict, ours: dict, figures: dict) -> dict:
    """The training target's verdict, void when the classic recipe did not learn."""
    train_met = bool(figures["train_speedup"] >= TARGETS["train_speedup"] and ours["roc_auc"] >= classic["roc_auc"])
    void = None if figures["comparison_valid"] else (
        f"comparison void: the classic recipe did not learn (ROC-AUC {fmt(classic['roc_auc'], 4)})")
    return {
        f"train_speedup >= {TARGETS['train_speedup']:g} and auc_ours >= auc_classic": target(
            None if void else train_met, void, train_speedup=figures["train_speedup"], auc_ours=ours["roc_auc"],
            auc_classic=classic["roc_auc"]),
    }


# -- compute floor: the training paths ---------------------------------------------------------


def vgg16_classic_flops(flops: int, image_size: int) -> float:
    """VGG16's FLOPs at the classic recipe's IMAGE_SIZE, from those at our model's size (conv work scales with
    the pixel count; the two sizes are the same unless OUR_PARAMS changes)."""
    return flops * (IMAGE_SIZE / image_size) ** 2


def features_gflops(ours: dict, flops: int) -> float | None:
    """The features stage's GFLOP/s, from its own count of forward passes and its seconds."""
    return gflops_per_s(ours["forward_passes"], flops, ours["feature_seconds"])


def classic_gflops(classic: dict, flops: int, image_size: int) -> float | None:
    """A classic epoch's GFLOP/s: its train + val images over its mean time."""
    classic_flops = vgg16_classic_flops(flops, image_size)
    return gflops_per_s(classic["images_per_epoch"], classic_flops, classic["epoch_seconds"])


def compute_rows(classic: dict, ours: dict, gflops: dict) -> list[str]:
    return [
        f"| (a) classic recipe, mean epoch (train + val images, {IMAGE_SIZE} px) | "
        f"{classic['images_per_epoch']} | {fmt(classic['epoch_seconds'], 2)} | "
        f"{fmt(gflops['classic_per_epoch'])} |",
        f"| (b) features stage ({ours['feature_variant']}) | {ours['forward_passes'] or 'n/a'} | "
        f"{fmt(ours['feature_seconds'])} | {fmt(gflops['features_stage'])} |",
    ]


# -- report ------------------------------------------------------------------------------------


def training_table(classic: dict, ours: dict, figures: dict, stage_seconds: dict) -> list[str]:
    rows = [("classic recipe (a)", classic, "s/epoch (VGG16 pass + head)"), ("our pipeline (b)", ours, "")]
    lines = ["| recipe | train wall (s) | feature pass (s) | time per epoch | epochs | test ROC-AUC "
             "| test accuracy | test images | peak RSS (MB) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r, unit in rows:
        lines.append(f"| {name} | {fmt(r['train_seconds'])} | {fmt(r['feature_seconds'])} | "
                     f"{fmt(r['epoch_seconds'], 2)} {unit} | {r['epochs']} | {fmt(r['roc_auc'], 4)} | "
                     f"{fmt(r['accuracy'], 4)} | {r['test_images']} | {fmt(r['peak_rss_mb'], 0)} |")
    speedup = f"**{fmt(figures['train_speedup'])}x**" + ("" if figures["comparison_valid"] else " (void)")
    lines.append(f"| ratio (a)/(b) | {speedup} | | "
                 "| | "
                 f"{ours['roc_auc'] - classic['roc_auc']:+.4f} (b - a) | {ours['accuracy'] - classic['accuracy']:+.4f} "
                 f"(b - a) | | {fmt(classic['peak_rss_mb'] / ours['peak_rss_mb'], 2)}x |")
    stages = ", ".join(f"{stage} {seconds} s" for stage, seconds in stage_seconds.items())
    lines.append(f"\nOur stages (wall time of each process; data_ingestion ran once for both recipes and is in "
                 f"neither train wall; train wall = the others but evaluation): {stages}.")
    if not figures["comparison_valid"]:
        lines.append(f"\n**comparison void: the classic recipe did not learn (ROC-AUC {fmt(classic['roc_auc'], 4)}, "
                     f"below {CLASSIC_MIN_AUC}).** The speed-up above is shown as measured but stands for nothing.")
    return lines


def section(classic: dict, ours: dict, figures: dict, stage_seconds: dict, budget: Budget) -> list[str]:
    """results.md's training section."""
    optimizer = classic_optimizer()
    return [
        "## Training (same data, same machine, one run)", "",
        f"Data: `{DATA_SOURCE.relative_to(SHARED.parent)}`, adenocarcinoma vs normal, our data_ingestion stage "
        "(exact duplicates removed, near-duplicate groups kept in one split, seeded split) run once; both recipes "
        f"train on its train split, validate on val, and are scored on test. Weights: {WEIGHTS_DESCRIPTION}, "
        "224 px. (a) Keras `ImageDataGenerator` (rescale 1/255, rotation 40, shifts 0.2, shear 0.2, zoom 0.2, "
        f"horizontal flip), VGG16 frozen + Flatten + Dense softmax, {optimizer['name']} at learning rate "
        f"{optimizer['learning_rate']:g} (`CLASSIC_OPTIMIZER`), batch {BATCH}, "
        f"{budget.classic_epochs} epochs, float32. (b) our stages with the repo's defaults plus 224 px, these "
        "weights and average pooling. ROC-AUC and accuracy by the same code "
        "(`cancer_classifier.core.metrics.headline_metrics`). Peak RSS: the largest process of each recipe, "
        f"test scoring included. The comparison stands only if (a) reaches a test ROC-AUC of {CLASSIC_MIN_AUC}.", "",
        *training_table(classic, ours, figures, stage_seconds), "",
    ]
