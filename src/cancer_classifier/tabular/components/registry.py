"""Tabular stage 4: log the evaluated model to MLflow under its task's experiment, register it under
the task's own name, and move the alias through the same promotion gate as chest CT."""

import functools
import json
import tempfile
from pathlib import Path

import mlflow
import mlflow.sklearn
import numpy as np
from mlflow.models import infer_signature

from cancer_classifier.core.io import load_output, save_json, sha256_file
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
from cancer_classifier.core.registration import ModelStore, Version, pinned_requirements, register
from cancer_classifier.core.settings import PACKAGE_DIR
from cancer_classifier.core.tracking import connect, tracking_errors
from cancer_classifier.entity.tabular import TabularRegistryConfig
from cancer_classifier.tabular.components.data import load_split
from cancer_classifier.tabular.model import METADATA_FILE, MODEL_FILE, TRUSTED_TYPES, TabularModel


class TabularRegistry:
    def __init__(self, config: TabularRegistryConfig) -> None:
        self.config = config

    def run(self) -> dict:
        config, tracking = self.config, self.config.tracking
        evaluation = load_output(config.evaluation_dir / "evaluation.json", "tabular_evaluation")
        model = TabularModel.load(config.model_dir)
        tags = {
            "task": config.task.name,
            "kind": config.task.kind,
            "demo": "false",
            "classes": json.dumps(model.classes),
            "intended_use": model.metadata["intended_use"],
            "model_kind": model.metadata["model"]["kind"],
            "git_commit": git_commit(),
            "train_sha256": sha256_file(config.data_dir / "train.csv"),
            "test_sha256": sha256_file(config.data_dir / "test.csv"),
        }
        server = connect(tracking, f"{config.task.name} register")
        store = ModelStore(server, tracking.registered_model, tracking.alias)
        metric = config.promotion_metric
        test, y_test = load_split(config.data_dir, "test")
        challenger = Challenger(evaluation["metrics"][metric], False, tuple(model.classes), len(test))

        def compare(champion: Version) -> Comparison:
            """The champion's metric on this model's test rows (its own Pipeline does its own preprocessing)."""
            with tempfile.TemporaryDirectory(prefix="champion-") as folder:
                found = champion_file(champion, MODEL_FILE, Path(folder))
                if found is None:
                    return unloadable(champion, len(test))
                theirs = TabularModel.load(found.parent)
            positive = model.classes.index(model.metadata["positive_class"])
            scored = headline_metrics(y_test, theirs.predict_proba(test), positive)[metric]
            return Comparison(scored, challenger.score, len(test))

        champion = store.champion()
        with tracking_errors(tracking.tracking_uri, "comparing with the champion"):
            decision = promotion_decision(champion, tracking.alias, metric, challenger, compare)

        def log() -> None:
            mlflow.set_tags(tags)
            mlflow.log_params(config.params)
            mlflow.log_metrics({f"test_{k}": v for k, v in evaluation["metrics"].items() if np.isfinite(v)})
            if evaluation["cross_validation"]:
                cv = evaluation["cross_validation"]["metrics"]
                mlflow.log_metrics({f"cv_{k}": v for k, v in cv.items() if np.isfinite(v)})
            mlflow.log_artifacts(str(config.evaluation_dir), artifact_path="evaluation")
            mlflow.log_artifact(str(config.data_dir / "dataset.json"), artifact_path="data")

        run_name = f"{config.task.name}-evaluate-register"
        save = functools.partial(self.save_model, model)
        version = register(store, decision, champion, run_name, None, log, save, tags)
        model_sha256 = sha256_file(config.model_dir / MODEL_FILE)
        return save_record(config.root_dir, store, version, decision, metric, challenger.score, model_sha256)

    def save_model(self, model: TabularModel, path: Path) -> None:
        """MLflow's scikit-learn flavour in skops format (no pickle), plus the metadata the app reads."""
        example = load_split(self.config.data_dir, "test")[0][[c.name for c in model.columns]].head(2)
        mlflow.sklearn.save_model(
            model.pipeline,
            path,
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
            skops_trusted_types=TRUSTED_TYPES,
            signature=infer_signature(example, model.pipeline.predict_proba(example)),
            input_example=example,
            pip_requirements=pinned_requirements(),
            code_paths=[str(PACKAGE_DIR)],  # the Keras wrapper's class
            pyfunc_predict_fn="predict_proba",
            metadata={k: model.metadata[k] for k in ("task", "kind", "classes", "positive_class", "intended_use")},
        )
        save_json(path / METADATA_FILE, model.metadata)
