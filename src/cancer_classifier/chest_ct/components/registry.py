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
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from PIL import Image

from cancer_classifier.chest_ct.components.dataset import split_rows
from cancer_classifier.chest_ct.components.prepare_base_model import load_base_info
from cancer_classifier.chest_ct.modeling import INPUT_REFERENCE_FILE, MODEL_FILE, intended_use, load_classifier
from cancer_classifier.chest_ct.ood import REFERENCE_FILE
from cancer_classifier.chest_ct.scoring import REFERENCE, Scorer
from cancer_classifier.core.errors import StageInputError
from cancer_classifier.core.io import load_json, load_output, save_json, sha256_file
from cancer_classifier.core.metrics import headline_metrics
from cancer_classifier.core.promotion import (
    Challenger,
    Comparison,
    champion_file,
    git_commit,
    promotion_decision,
    save_record,
    unloadable,
)
from cancer_classifier.core.registration import (
    REGISTERED_FILES,
    SETTINGS_FILE,
    ModelStore,
    Version,
    pinned_requirements,
    register,
)
from cancer_classifier.core.settings import PACKAGE_DIR
from cancer_classifier.core.tracking import connect, tracking_errors
from cancer_classifier.entity import RegistryConfig, ServingConfig


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


# The model's code for MLflow's scoring server, run by it, never imported here (it imports the app).
PYFUNC_CODE = PACKAGE_DIR / "chest_ct" / "serving" / "mlflow_model.py"
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


class ModelRegistry:
    def __init__(self, config: RegistryConfig) -> None:
        self.config = config

    def run(self) -> dict:
        config, tracking = self.config, self.config.tracking
        evaluation = load_output(config.evaluation_dir / "evaluation.json", "evaluation")
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

        training = load_output(config.model_dir / "training_info.json", "training")
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
