"""Stage 6: log the evaluated model to MLflow, register it, and move the alias only if it is better.

Runs after evaluation has completed, so a model that was never scored is never registered. The
promotion is decided before anything is registered: the champion is scored on this model's own test
split through the same scoring path, so like is compared with like, and a failure while reading the
champion stops the stage instead of promoting.
"""

import csv
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.tensorflow
import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from cancer_classifier.components.dataset import image_batches, split_files, split_rows
from cancer_classifier.components.metrics import headline_metrics
from cancer_classifier.entity import RegistryConfig
from cancer_classifier.modeling import Harmonise, intended_use, load_classifier
from cancer_classifier.ood import REFERENCE_FILE
from cancer_classifier.scoring import Scorer
from cancer_classifier.tracking import use_experiment
from cancer_classifier.utils.common import StageInputError, atomic_directory, load_json, save_json, sha256_file
from cancer_classifier.utils.logging import logger


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def evaluation_metrics(evaluation: dict) -> dict[str, float]:
    """Test-split metrics (``test_*``), external ones (``external_*``) and the bfloat16 agreement."""
    metrics = {f"test_{k}": v for k, v in evaluation["metrics"].items()}
    if evaluation.get("external"):
        metrics |= {f"external_{k}": v for k, v in evaluation["external"]["metrics"].items()}
    for split, agreement in evaluation["serving_precision"]["agreement"].items():
        metrics[f"{split}_bfloat16_roc_auc"] = agreement["bfloat16_metrics"]["roc_auc"]
        metrics[f"{split}_bfloat16_label_changes"] = agreement["label_changes"]
        metrics[f"{split}_bfloat16_max_probability_difference"] = agreement["max_probability_difference"]
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


def champion_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` points to; None only when there is no such model or alias yet.

    Any other failure (server unreachable, no permission) is raised: it must never count as
    "no champion", which would promote a model that is not better.
    """
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    if alias not in (model.aliases or {}):
        return None
    return client.get_model_version(name, model.aliases[alias])


def promotion_decision(
    client: MlflowClient,
    name: str,
    alias: str,
    metric: str,
    challenger: Challenger,
    compare: Callable[[ModelVersion], Comparison],
) -> dict:
    """Whether the challenger should become ``alias``, decided before anything is registered.

    Like is compared with like: ``compare`` scores the champion on the challenger's own test split
    through the same scoring path (without images the champion was trained on). A model trained on
    real data always replaces a demo champion and a demo never displaces a real one; otherwise
    models for other classes never compete.
    """
    champion = champion_version(client, name, alias)
    if champion is None:
        return {"promote": True, "comparison": "none", "reason": f"no '{alias}' yet: this version becomes it"}
    metadata = mlflow.models.get_model_info(f"models:/{name}/{champion.version}").metadata or {}
    classes = tuple(metadata.get("classes") or ())
    demo = str(champion.tags.get("demo", metadata.get("demo", True))).lower() == "true"
    decision = {"champion_version": str(champion.version), "champion_demo": demo}
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


def champion_training_images(champion: ModelVersion) -> set[str] | None:
    """Pixel hashes of the champion's train and val images, from the manifest logged with it (None if absent)."""
    try:
        path = mlflow.artifacts.download_artifacts(run_id=champion.run_id, artifact_path="data/manifest.csv")
    except (MlflowException, OSError):  # a version registered before manifests were logged
        return None
    with open(path, newline="") as file:
        return {row["sha256"] for row in csv.DictReader(file) if row["split"] in ("train", "val")}


def evaluated_probabilities(predictions: Path, classes: list[str]) -> dict[str, np.ndarray]:
    """This model's float32 test probabilities by file name, as the evaluation stage wrote them."""
    with open(predictions, newline="") as file:
        return {
            row["file"]: np.array([float(row[f"p_{c}"]) for c in classes])
            for row in csv.DictReader(file)
            if row["split"] == "test" and row["precision"] == "float32"
        }


def apply_promotion(client: MlflowClient, name: str, alias: str, version: str, decision: dict) -> None:
    """Move the alias if the decision says so, and tag the version with the reason either way."""
    if decision["promote"]:
        client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "promotion", decision["reason"])


SERVING_FILES = ("model_metadata.json", "class_indices.json", "input_reference.json", REFERENCE_FILE)


class ModelRegistry:
    def __init__(self, config: RegistryConfig) -> None:
        self.config = config

    def run(self) -> dict:
        config, tracking = self.config, self.config.tracking
        evaluation = load_json(config.evaluation_dir / "evaluation.json")
        if evaluation.get("model_sha256") != sha256_file(config.model_dir / "model.keras"):
            raise StageInputError(
                f"{config.evaluation_dir / 'evaluation.json'} scored another model than "
                f"{config.model_dir / 'model.keras'} (retrained since): run the evaluation stage first (dvc repro)"
            )
        training = load_json(config.model_dir / "training_info.json")
        base = load_json(config.base_model_dir / "base_model_info.json")
        demo = evaluation["demo"]
        tags = {
            "demo": str(demo).lower(),
            "intended_use": intended_use(demo),
            "git_commit": git_commit(),
            "data_manifest_sha256": sha256_file(config.data_dir / "manifest.csv"),
            "base_weights": base["weights"],
            "base_weights_provenance": base["description"]
            + (f" (sha256 {base['sha256']})" if "sha256" in base else ""),
        }
        use_experiment(tracking)
        client = MlflowClient()
        name, metric = tracking.registered_model, config.promotion_metric
        challenger = Challenger(
            evaluation["metrics"][metric], demo, tuple(evaluation["classes"]), evaluation["test_images"]
        )
        decision = promotion_decision(client, name, tracking.alias, metric, challenger, self.compare)
        # Each registration is a child of the training run, so re-evaluating a model never
        # collides with the parameters already logged there.
        with (
            mlflow.start_run(run_id=training["mlflow_run_id"]),
            mlflow.start_run(run_name="evaluate-register", nested=True),
        ):
            mlflow.set_tags(tags)
            mlflow.log_params(config.params)
            mlflow.log_metrics(evaluation_metrics(evaluation))
            mlflow.set_tag("servable_precisions", ",".join(evaluation["serving_precision"]["servable"]))
            mlflow.log_artifacts(str(config.evaluation_dir), artifact_path="evaluation")
            mlflow.log_artifact(str(config.data_dir / "data_report.json"), artifact_path="data")
            # which images trained and tested this version: a later challenger's comparison leaves them out
            mlflow.log_artifact(str(config.data_dir / "manifest.csv"), artifact_path="data")
            for file in SERVING_FILES:  # what serving needs beside the model, for registry mode
                mlflow.log_artifact(str(config.model_dir / file), artifact_path="serving")
            version = self.log_model(demo, tags, evaluation["serving_precision"]["servable"])
            apply_promotion(client, name, tracking.alias, version, decision)
            mlflow.set_tags({"promotion": decision["reason"], "promotion_comparison": decision["comparison"]})
        record = {
            "registered_model": name,
            "version": version,
            "promoted": decision["promote"],
            "alias": tracking.alias,
            "metric": metric,
            "score": challenger.score,
            **decision,
        }
        with atomic_directory(config.root_dir) as out:
            save_json(out / "registration.json", record)
        logger.info("registered %s version %s: %s", name, version, decision["reason"])
        return record

    def compare(self, champion: ModelVersion) -> Comparison:
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
        model = mlflow.tensorflow.load_model(f"models:/{config.tracking.registered_model}/{champion.version}")
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

    def log_model(self, demo: bool, tags: dict[str, str], servable: list[str]) -> str:
        model = load_classifier(self.config.model_dir / "model.keras")
        classes = list(load_json(self.config.model_dir / "class_indices.json"))
        example_path = split_files(self.config.data_dir, "test")[0][:1]
        # A small raw image: the model takes any size and harmonises it itself.
        example = next(iter(image_batches(example_path, Harmonise(64, harmonise=False), 1))).numpy()
        info = mlflow.tensorflow.log_model(
            model,
            name="model",
            signature=ModelSignature(  # any image size: the model harmonises it itself
                inputs=Schema([TensorSpec(np.dtype("float32"), (-1, -1, -1, 3), "image")]),
                outputs=Schema([TensorSpec(np.dtype("float32"), (-1, len(classes)), "probabilities")]),
            ),
            input_example=example,
            registered_model_name=self.config.tracking.registered_model,
            metadata={
                "classes": classes,
                "demo": demo,
                "intended_use": tags["intended_use"],
                "servable_precisions": servable,  # measured by the evaluation stage
            },
        )
        version = str(info.registered_model_version)
        client = MlflowClient()
        for key, value in tags.items():
            client.set_model_version_tag(self.config.tracking.registered_model, version, key, value)
        return version
