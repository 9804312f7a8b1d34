"""Stage 6: log the evaluated model to MLflow, register it, and move the alias only if it is better.

Runs after evaluation has completed, so a model that was never scored is never registered. The
promotion is decided before anything is registered: the champion is scored on this model's own test
split through the same scoring path, so like is compared with like, and a failure while reading the
champion stops the stage instead of promoting.
"""

import base64
import csv
import io
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from PIL import Image

from cancer_classifier.components.dataset import split_rows
from cancer_classifier.components.metrics import headline_metrics
from cancer_classifier.components.prepare_base_model import load_base_info
from cancer_classifier.entity import RegistryConfig, ServingConfig
from cancer_classifier.modeling import INPUT_REFERENCE_FILE, MODEL_FILE, intended_use, load_classifier
from cancer_classifier.ood import REFERENCE_FILE
from cancer_classifier.registration import (
    PACKAGE_DIR,
    REGISTERED_FILES,
    SETTINGS_FILE,
    ModelStore,
    Version,
    pinned_requirements,
    register,
)
from cancer_classifier.scoring import REFERENCE, Scorer
from cancer_classifier.tracking import connect, public_uri, tracking_errors
from cancer_classifier.utils.common import StageInputError, atomic_directory, load_json, save_json, sha256_file
from cancer_classifier.utils.logging import logger


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def evaluation_metrics(evaluation: dict) -> dict[str, float]:
    """Test-split metrics (``test_*``), external ones (``external_*``) and each variant's agreement."""
    metrics = {f"test_{k}": v for k, v in evaluation["metrics"].items()}
    if evaluation.get("external"):
        metrics |= {f"external_{k}": v for k, v in evaluation["external"]["metrics"].items()}
    for variant, by_split in evaluation["serving_variants"]["variants"].items():
        name = variant.replace("/", "_")
        for split, agreement in by_split.items():
            metrics[f"{split}_{name}_roc_auc"] = agreement["metrics"]["roc_auc"]
            metrics[f"{split}_{name}_label_changes"] = agreement["label_changes"]
            metrics[f"{split}_{name}_max_probability_difference"] = agreement["max_probability_difference"]
    return {name: float(value) for name, value in metrics.items() if np.isfinite(value)}


@dataclass(frozen=True)
class Comparison:
    """Champion and challenger scored on the same images of the challenger's test split."""

    champion: float
    challenger: float
    images: int
    note: str = ""  # which images were left out, and why


@dataclass(frozen=True)
class Challenger:
    """A model about to be registered, as the promotion gate sees it."""

    score: float  # its test metric on its own held-out split
    demo: bool
    classes: tuple[str, ...]
    test_images: int


def champion_metadata(champion: Version) -> tuple[bool, tuple[str, ...]]:
    """Whether the champion is a demo, and its classes: from its tags, else its model's metadata."""
    tags = champion.tags
    if "classes" in tags:
        return tags.get("demo", "true").lower() == "true", tuple(json.loads(tags["classes"]))
    metadata = mlflow.models.get_model_info(champion.model_uri).metadata or {}  # registered before the tag
    demo = str(tags.get("demo", metadata.get("demo", True))).lower() == "true"
    return demo, tuple(metadata.get("classes") or ())


def promotion_decision(
    champion: Version | None,
    alias: str,
    metric: str,
    challenger: Challenger,
    compare: Callable[[Version], Comparison],
) -> dict:
    """Whether the challenger should become ``alias``, decided before anything is registered.

    Like is compared with like: ``compare`` scores the champion on the challenger's own test split
    through the same scoring path (without images the champion was trained on). A model trained on
    real data always replaces a demo champion and a demo never displaces a real one; otherwise
    models for other classes never compete.
    """
    if champion is None:
        return {"promote": True, "comparison": "none", "reason": f"no '{alias}' yet: this version becomes it"}
    demo, classes = champion_metadata(champion)
    decision = {"champion_version": champion.version, "champion_demo": demo}
    if demo != challenger.demo:
        return decision | {
            "promote": not challenger.demo,
            "comparison": "demo against real data",
            "reason": f"a demo model never displaces a model trained on real data ({alias} version {champion.version})"
            if challenger.demo
            else f"a model trained on real data replaces the demo {alias} (version {champion.version})",
        }
    if classes != challenger.classes:
        return decision | {
            "promote": False,
            "comparison": "refused: other classes",
            "reason": f"{alias} version {champion.version} has classes {list(classes)}, this model "
            f"{list(challenger.classes)}: models for other classes never compete; give this class set its own "
            "registered model name (tracking.registered_model in config/config.yaml)",
        }
    scored = compare(champion)
    promote = scored.challenger > scored.champion
    verb = "beats" if promote else "does not beat"
    return decision | {
        "promote": promote,
        "comparison": f"both scored on this model's test split ({scored.images} images, same scoring path)"
        + (f"; {scored.note}" if scored.note else ""),
        "champion_score": scored.champion,
        "challenger_score": scored.challenger,
        "reason": f"{metric} {scored.challenger:.4f} {verb} {alias} version {champion.version} "
        f"({scored.champion:.4f}) on this model's own test split",
    }


def champion_training_images(champion: Version) -> set[str] | None:
    """Pixel hashes of the champion's train and val images, from the manifest logged with it (None if absent)."""
    try:
        path = mlflow.artifacts.download_artifacts(run_id=champion.run_id, artifact_path="data/manifest.csv")
    except (MlflowException, OSError):  # a version registered before manifests were logged
        return None
    with open(path, newline="") as file:
        return {row["sha256"] for row in csv.DictReader(file) if row["split"] in ("train", "val")}


def evaluated_probabilities(predictions: Path, classes: list[str]) -> dict[str, np.ndarray]:
    """This model's reference-variant test probabilities by file name, as the evaluation stage wrote them."""
    with open(predictions, newline="") as file:
        return {
            row["file"]: np.array([float(row[f"p_{c}"]) for c in classes])
            for row in csv.DictReader(file)
            if row["split"] == "test" and row["variant"] == str(REFERENCE)
        }


def champion_file(champion: Version, pattern: str, into: Path) -> Path | None:
    """The champion's model file matching ``pattern``, downloaded into ``into``; None if its model has no
    such file (registered in an older, pickled format, which is never loaded)."""
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=champion.model_uri, dst_path=str(into)))
    if not (folder / "MLmodel").is_file():
        raise StageInputError(
            f"the champion (version {champion.version}) has no model files at {champion.model_uri}: "
            "check that the artifact store is reachable and complete"
        )
    return next(iter(sorted(folder.rglob(pattern))), None)


def unloadable(champion: Version, images: int) -> Comparison:
    """A champion this project refuses to load (pickled): any model in the current format replaces it."""
    note = f"version {champion.version} is in an older, pickled format that is never loaded: this version replaces it"
    return Comparison(float("-inf"), float("inf"), images, note)


# The model's code for MLflow's scoring server, run by it, never imported here (it imports the app).
PYFUNC_CODE = PACKAGE_DIR / "serving" / "mlflow_model.py"
# What serving reads beside the model: the training stage's files and the evaluation's model card.
SERVING_FILES = ("model_metadata.json", "class_indices.json", INPUT_REFERENCE_FILE, REFERENCE_FILE)
CARD_FILES = ("model_card.json", "model_card.md")


def serving_settings(serving: ServingConfig) -> dict:
    """The app's limits and DICOM window, for the registered model's own scoring server."""
    budget = serving.decode_budget
    return {
        "max_batch": serving.max_batch,
        "max_upload_bytes": serving.max_upload_bytes,
        "dicom_window": {"center": serving.dicom_window_center, "width": serving.dicom_window_width},
        "decode_budget": {
            "image_pixels": budget.max_image_pixels,
            "request_pixels": budget.max_request_pixels,
            "image_bytes": budget.max_image_bytes,
            "request_bytes": budget.max_request_bytes,
        },
    }


def save_record(
    root: Path, store: ModelStore, version: Version, decision: dict, metric: str, score: float, model_sha256: str
) -> dict:
    """registration.json: which version of what, where, and the gate's decision (serving and CI read it)."""
    record = {
        "registered_model": store.name,
        "version": version.version,
        "model_sha256": model_sha256,  # the file this record describes (serving checks it)
        "model_uri": version.model_uri,
        "model_store": store.server.model_store,
        "tracking_uri": public_uri(store.server.uri),
        "promoted": decision["promote"],
        "alias": store.alias,
        "metric": metric,
        "score": score,
        **decision,
    }
    with atomic_directory(root) as out:
        save_json(out / "registration.json", record)
    logger.info(
        "registered %s version %s in %s: %s", store.name, version.version, store.server.model_store, decision["reason"]
    )
    return record


class ModelRegistry:
    def __init__(self, config: RegistryConfig) -> None:
        self.config = config

    def run(self) -> dict:
        config, tracking = self.config, self.config.tracking
        evaluation = load_json(config.evaluation_dir / "evaluation.json")
        if evaluation.get("model_sha256") != sha256_file(config.model_dir / MODEL_FILE):
            raise StageInputError(
                f"{config.evaluation_dir / 'evaluation.json'} scored another model than "
                f"{config.model_dir / MODEL_FILE} (retrained since): run the evaluation stage first (dvc repro)"
            )
        base = load_base_info(config.base_model_dir)
        demo = evaluation["demo"]
        tags = {
            "demo": str(demo).lower(),
            "classes": json.dumps(evaluation["classes"]),
            "intended_use": intended_use(demo),
            "model_sha256": evaluation["model_sha256"],
            "servable_variants": ",".join(evaluation["serving_variants"]["servable"]),
            "git_commit": git_commit(),
            "data_manifest_sha256": sha256_file(config.data_dir / "manifest.csv"),
            "base_weights": base["weights"],
            "base_weights_provenance": base["description"]
            + (f" (sha256 {base['sha256']})" if "sha256" in base else ""),
        }
        server = connect(tracking, "register")
        store = ModelStore(server, tracking.registered_model, tracking.alias)
        metric = config.promotion_metric
        challenger = Challenger(
            evaluation["metrics"][metric], demo, tuple(evaluation["classes"]), evaluation["test_images"]
        )
        champion = store.champion()
        with tracking_errors(tracking.tracking_uri, "comparing with the champion"):
            decision = promotion_decision(champion, tracking.alias, metric, challenger, self.compare)

        def log() -> None:
            mlflow.set_tags(tags)
            mlflow.log_params(config.params)
            mlflow.log_metrics(evaluation_metrics(evaluation))
            mlflow.log_artifacts(str(config.evaluation_dir), artifact_path="evaluation")
            mlflow.log_artifact(str(config.data_dir / "data_report.json"), artifact_path="data")
            # which images trained and tested this version: a later challenger's comparison leaves them out
            mlflow.log_artifact(str(config.data_dir / "manifest.csv"), artifact_path="data")

        training = load_json(config.model_dir / "training_info.json")
        version = register(store, decision, champion, "evaluate-register", training, log, self.save_model, tags)
        return save_record(
            config.root_dir, store, version, decision, metric, challenger.score, evaluation["model_sha256"]
        )

    def compare(self, champion: Version) -> Comparison:
        """Champion and this model on this model's test images that the champion never trained on."""
        config = self.config
        rows = split_rows(config.data_dir, "test")
        seen = champion_training_images(champion)
        kept = [row for row in rows if seen is None or row["sha256"] not in seen]
        if not kept:
            raise StageInputError(
                f"every test image of this model trained the {config.tracking.alias} (version {champion.version}): "
                "they cannot be compared on them; re-split with another data.seed or register under another name"
            )
        classes = list(load_json(config.model_dir / "class_indices.json"))
        y_true = np.array([classes.index(row["label"]) for row in kept])
        ours = evaluated_probabilities(config.evaluation_dir / "predictions.csv", classes)
        challenger = np.array([ours[Path(row["file"]).name] for row in kept])
        with tempfile.TemporaryDirectory(prefix="champion-") as folder:
            found = champion_file(champion, str(REGISTERED_FILES / MODEL_FILE), Path(folder))
            if found is None:
                return unloadable(champion, len(kept))
            model = load_classifier(found)
        paths = [str(config.data_dir / row["file"]) for row in kept]
        theirs = Scorer(model).score_files(paths, what=f"champion version {champion.version}")[1]
        positive = classes.index(config.positive_class)
        metric = config.promotion_metric
        note = (
            "the champion's training images are unknown (registered without its manifest)"
            if seen is None
            else f"{len(rows) - len(kept)} image(s) left out: the champion trained on them"
        )
        return Comparison(
            headline_metrics(y_true, theirs.astype(np.float64), positive)[metric],
            headline_metrics(y_true, challenger, positive)[metric],
            len(kept),
            note,
        )

    def save_model(self, path: Path) -> None:
        """The model as an MLflow pyfunc: the serving files the app reads, and the code that serves
        them by MLflow's scoring server (serving/mlflow_model.py), with no pickled object."""
        config = self.config
        with tempfile.TemporaryDirectory(prefix="serving-") as staging:
            files = Path(staging) / "serving"
            files.mkdir()
            for name in (MODEL_FILE, *SERVING_FILES):
                shutil.copy2(config.model_dir / name, files / name)
            for name in CARD_FILES:
                shutil.copy2(config.evaluation_dir / name, files / name)
            save_json(files / SETTINGS_FILE, serving_settings(config.serving))
            mlflow.pyfunc.save_model(
                path,
                python_model=str(PYFUNC_CODE),
                artifacts={"serving": str(files)},
                code_paths=[str(PACKAGE_DIR)],
                pip_requirements=pinned_requirements(),
                signature=ModelSignature(inputs=Schema([ColSpec("string", "image")])),
                input_example=pd.DataFrame({"image": [self.example_image()]}),
                metadata={"classes": list(load_json(config.model_dir / "class_indices.json"))},
            )

    @staticmethod
    def example_image() -> str:
        """A small gray PNG as base64, what a client of the scoring server sends (never a patient's image)."""
        buffer = io.BytesIO()
        Image.new("L", (64, 64), 96).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii")
