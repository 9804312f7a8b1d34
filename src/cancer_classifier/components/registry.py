"""Stage 5: log the evaluated model to MLflow, register it, and move the alias only if it is better.

Runs after evaluation has completed, so a model that was never scored is never registered.
"""

import subprocess

import mlflow
import mlflow.tensorflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from cancer_classifier.components.dataset import image_batches, split_files
from cancer_classifier.entity import RegistryConfig
from cancer_classifier.modeling import Harmonise, intended_use, load_classifier
from cancer_classifier.ood import REFERENCE_FILE
from cancer_classifier.tracking import use_experiment
from cancer_classifier.utils.common import StageInputError, atomic_directory, load_json, save_json, sha256_file
from cancer_classifier.utils.logging import logger


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def champion_score(client: MlflowClient, name: str, alias: str, metric: str) -> tuple[str, float] | None:
    """The version the alias points to and its test metric, or None if there is no champion yet."""
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return version.version, client.get_run(version.run_id).data.metrics[f"test_{metric}"]


def promote_if_better(client: MlflowClient, name: str, alias: str, metric: str, version: str, score: float) -> dict:
    """The promotion gate of every registered model (chest CT and the tabular tasks): move ``alias``
    to ``version`` only if its test ``metric`` beats the current champion's."""
    champion = champion_score(client, name, alias, metric)
    if champion is None:
        promoted, reason = True, f"no '{alias}' yet; version {version} ({metric} {score:.4f}) becomes it"
    elif score > champion[1]:
        promoted, reason = True, f"{metric} {score:.4f} beats {alias} version {champion[0]} ({champion[1]:.4f})"
    else:
        promoted = False
        reason = f"{metric} {score:.4f} does not beat {alias} version {champion[0]} ({champion[1]:.4f})"
    if promoted:
        client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "promotion", reason)
    return {"promoted": promoted, "alias": alias, "metric": metric, "score": score, "reason": reason}


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
        # Each registration is a child of the training run, so re-evaluating a model never
        # collides with the parameters already logged there.
        with (
            mlflow.start_run(run_id=training["mlflow_run_id"]),
            mlflow.start_run(run_name="evaluate-register", nested=True),
        ):
            mlflow.set_tags(tags)
            mlflow.log_params(config.params)
            mlflow.log_metrics({f"test_{k}": v for k, v in evaluation["metrics"].items() if np.isfinite(v)})
            mlflow.log_artifacts(str(config.evaluation_dir), artifact_path="evaluation")
            mlflow.log_artifact(str(config.data_dir / "data_report.json"), artifact_path="data")
            for name in SERVING_FILES:  # what serving needs beside the model, for registry mode
                mlflow.log_artifact(str(config.model_dir / name), artifact_path="serving")
            version = self.log_model(demo, tags)
            decision = self.promote(client, version, evaluation["metrics"][config.promotion_metric])
            mlflow.set_tag("promotion", decision["reason"])
        with atomic_directory(config.root_dir) as out:
            save_json(
                out / "registration.json",
                {"registered_model": tracking.registered_model, "version": version, **decision},
            )
        logger.info("registered %s version %s: %s", tracking.registered_model, version, decision["reason"])
        return decision

    def log_model(self, demo: bool, tags: dict[str, str]) -> str:
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
            metadata={"classes": classes, "demo": demo, "intended_use": tags["intended_use"]},
        )
        version = str(info.registered_model_version)
        client = MlflowClient()
        for key, value in tags.items():
            client.set_model_version_tag(self.config.tracking.registered_model, version, key, value)
        return version

    def promote(self, client: MlflowClient, version: str, score: float) -> dict:
        tracking = self.config.tracking
        metric = self.config.promotion_metric
        return promote_if_better(client, tracking.registered_model, tracking.alias, metric, version, score)
