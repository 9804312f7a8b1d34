"""Tabular stage 4: log the evaluated model to MLflow under its task's experiment, register it under
the task's own name, and move the alias through the same promotion gate as chest CT."""

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
import sklearn
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from cancer_classifier.components.metrics import headline_metrics
from cancer_classifier.components.registry import (
    Challenger,
    Comparison,
    apply_promotion,
    git_commit,
    promotion_decision,
)
from cancer_classifier.components.tabular_data import load_split
from cancer_classifier.entity.tabular import TabularRegistryConfig
from cancer_classifier.tabular_model import MODEL_FILE, REGISTRY_FOLDER, TabularModel
from cancer_classifier.tracking import use_experiment
from cancer_classifier.utils.common import atomic_directory, load_json, save_json, sha256_file
from cancer_classifier.utils.logging import logger


def requirements(model: TabularModel) -> list[str]:
    """Pinned from the running versions, so MLflow need not load the model in a subprocess to infer them."""
    packages = [f"scikit-learn=={sklearn.__version__}", f"pandas=={pd.__version__}", f"numpy=={np.__version__}"]
    if model.metadata["model"]["kind"] == "keras":
        import keras
        import tensorflow as tf

        packages += [f"keras=={keras.__version__}", f"tensorflow-cpu=={tf.__version__}"]
    return packages


class TabularRegistry:
    def __init__(self, config: TabularRegistryConfig) -> None:
        self.config = config

    def run(self) -> dict:
        config, tracking = self.config, self.config.tracking
        evaluation = load_json(config.evaluation_dir / "evaluation.json")
        model = TabularModel.load(config.model_dir / MODEL_FILE)
        tags = {
            "task": config.task.name,
            "kind": config.task.kind,
            "demo": "false",
            "intended_use": model.metadata["intended_use"],
            "model_kind": model.metadata["model"]["kind"],
            "git_commit": git_commit(),
            "train_sha256": sha256_file(config.data_dir / "train.csv"),
            "test_sha256": sha256_file(config.data_dir / "test.csv"),
        }
        use_experiment(tracking)
        client = MlflowClient()
        metric = config.promotion_metric
        test, _ = load_split(config.data_dir, "test")
        challenger = Challenger(evaluation["metrics"][metric], False, tuple(model.classes), len(test))

        def compare(champion) -> Comparison:
            """The champion's metric on this model's test rows (its own Pipeline does its own preprocessing)."""
            pipeline = mlflow.sklearn.load_model(f"models:/{tracking.registered_model}/{champion.version}")
            frame, y_true = load_split(config.data_dir, "test")
            positive = model.classes.index(model.metadata["positive_class"])
            theirs = headline_metrics(y_true, pipeline.predict_proba(frame), positive)[metric]
            return Comparison(theirs, challenger.score, len(frame))

        decision = promotion_decision(client, tracking.registered_model, tracking.alias, metric, challenger, compare)
        with mlflow.start_run(run_name=f"{config.task.name}-evaluate-register"):
            mlflow.set_tags(tags)
            mlflow.log_params(config.params)
            mlflow.log_metrics({f"test_{k}": v for k, v in evaluation["metrics"].items() if np.isfinite(v)})
            if evaluation["cross_validation"]:
                cv = evaluation["cross_validation"]["metrics"]
                mlflow.log_metrics({f"cv_{k}": v for k, v in cv.items() if np.isfinite(v)})
            mlflow.log_artifacts(str(config.evaluation_dir), artifact_path="evaluation")
            mlflow.log_artifact(str(config.data_dir / "dataset.json"), artifact_path="data")
            mlflow.log_artifact(str(config.model_dir / MODEL_FILE), artifact_path=REGISTRY_FOLDER)
            version = self.log_model(model, tags)
            apply_promotion(client, tracking.registered_model, tracking.alias, version, decision)
            mlflow.set_tags({"promotion": decision["reason"], "promotion_comparison": decision["comparison"]})
        record = {
            "registered_model": tracking.registered_model,
            "version": version,
            "promoted": decision["promote"],
            "alias": tracking.alias,
            "metric": metric,
            "score": challenger.score,
            **decision,
        }
        with atomic_directory(config.root_dir) as out:
            save_json(out / "registration.json", record)
        logger.info("registered %s version %s: %s", tracking.registered_model, version, decision["reason"])
        return record

    def log_model(self, model: TabularModel, tags: dict[str, str]) -> str:
        example = load_split(self.config.data_dir, "test")[0][[c.name for c in model.columns]].head(2)
        name = self.config.tracking.registered_model
        info = mlflow.sklearn.log_model(
            model.pipeline,
            name="model",
            signature=infer_signature(example, model.pipeline.predict_proba(example)),
            input_example=example,
            pip_requirements=requirements(model),
            pyfunc_predict_fn="predict_proba",
            # The Pipeline holds our Keras wrapper or histogram trees, which skops will not load without a
            # per-type review; the project writes these files itself, as it writes model.joblib.
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
            registered_model_name=name,
            metadata={k: model.metadata[k] for k in ("task", "kind", "classes", "positive_class", "intended_use")},
        )
        version = str(info.registered_model_version)
        client = MlflowClient()
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        return version
