"""Stage 6: log the evaluated model to MLflow, register it, and move the alias only if it is better.

Runs after evaluation has completed, so a model that was never scored is never registered. The
promotion is decided before anything is registered: the champion is scored on this model's own test
split through the same scoring path, so like is compared with like, and a failure while reading the
champion stops the stage instead of promoting.
"""

import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import mlflow
import mlflow.tensorflow
import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from cancer_classifier.components.dataset import image_batches, split_files
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
    score_champion: Callable[[ModelVersion], float],
) -> dict:
    """Whether the challenger should become ``alias``, decided before anything is registered.

    Like is compared with like: the champion is scored by ``score_champion`` on the challenger's own
    test split through the same scoring path. Models for other classes never compete; a model trained
    on real data always replaces a demo champion, and a demo model never displaces a real one.
    """
    champion = champion_version(client, name, alias)
    if champion is None:
        return {"promote": True, "comparison": "none", "reason": f"no '{alias}' yet: this version becomes it"}
    metadata = mlflow.models.get_model_info(f"models:/{name}/{champion.version}").metadata or {}
    classes = tuple(metadata.get("classes") or ())
    demo = str(champion.tags.get("demo", metadata.get("demo", True))).lower() == "true"
    decision = {"champion_version": str(champion.version), "champion_demo": demo}
    if classes != challenger.classes:
        return decision | {
            "promote": False,
            "comparison": "refused: other classes",
            "reason": f"{alias} version {champion.version} has classes {list(classes)}, this model "
            f"{list(challenger.classes)}: models for other classes never compete; give this class set its own "
            "registered model name (tracking.registered_model in config/config.yaml)",
        }
    if demo != challenger.demo:
        return decision | {
            "promote": not challenger.demo,
            "comparison": "demo against real data",
            "reason": f"a demo model never displaces a model trained on real data ({alias} version {champion.version})"
            if challenger.demo
            else f"a model trained on real data replaces the demo {alias} (version {champion.version})",
        }
    score = score_champion(champion)
    promote = challenger.score > score
    verb = "beats" if promote else "does not beat"
    return decision | {
        "promote": promote,
        "comparison": f"both scored on this model's test split ({challenger.test_images} images, same scoring path)",
        "champion_score": score,
        "reason": f"{metric} {challenger.score:.4f} {verb} {alias} version {champion.version} ({score:.4f}) "
        "on this model's own test split",
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
        decision = promotion_decision(client, name, tracking.alias, metric, challenger, self.score_champion)
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

    def score_champion(self, champion: ModelVersion) -> float:
        """The champion's promotion metric on this model's test split, through the same scoring path (float32)."""
        config = self.config
        model = mlflow.tensorflow.load_model(f"models:/{config.tracking.registered_model}/{champion.version}")
        paths, y_true = split_files(config.data_dir, "test")
        proba = Scorer(model).score_files(paths, what=f"champion version {champion.version}")[1]
        classes = tuple(load_json(config.model_dir / "class_indices.json"))
        return headline_metrics(y_true, proba.astype(np.float64), classes.index(config.positive_class))[
            config.promotion_metric
        ]

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
