"""Shared fixtures: small configs in tmp folders, a tiny trained pipeline, and the shared real data.

The project writer, the gunicorn launcher and the HTTP helpers are in tests/support.py (the benchmarks
use them too); REPO, SHARED, merge and write_project are importable from here as well.
"""

import dataclasses
import logging
import os
from pathlib import Path

import pytest

from cancer_classifier.config import ConfigurationManager
from tests.support import REPO, SHARED, merge, write_project

__all__ = ["REPO", "SHARED", "TINY_PARAMS", "merge", "run_pipeline", "shared_path", "write_project"]

# Small enough for seconds on two CPU cores, large enough to learn the phantoms.
TINY_PARAMS = {
    "data": {"synthetic": {"images_per_class": 30, "image_size": 96}},
    "base_model": {"image_size": 64, "dense_units": 16},
    "features": {"views": 1},
    "training": {"epochs": 25, "early_stopping_patience": 5, "head": {"cv_folds": 3}},
    # Lenient, so that bfloat16 is servable and the tests exercise the app's bfloat16 path too;
    # the default (params.yaml) admits no label change.
    "evaluation": {"bootstrap_resamples": 200, "serving_tolerance": {"label_changes": 1000, "roc_auc": 1.0}},
}


def shared_path(relative: str) -> Path:
    """A file or folder under ../shared, or skip the test with the reason."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} not found: set CANCER_CLASSIFIER_SHARED to the shared data folder")
    return path


@pytest.fixture(autouse=True)
def no_leaked_tracking_uri():
    """Put MLflow's tracking URI back after each test, and the MLFLOW_TRACKING_URI variable that
    mlflow.set_tracking_uri() exports: one test must not switch later ones to another store."""
    import mlflow

    uri, variable = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(uri)
    if variable is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = variable


@pytest.fixture
def records():
    """Every log record the package writes during the test (model loading, requests, errors)."""
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record)

    handler = Keep()
    package = logging.getLogger("cancer_classifier")
    package.addHandler(handler)
    yield seen
    package.removeHandler(handler)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Build a ConfigurationManager for a temporary project: ``project(config=..., params=...)``."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def make(config: dict | None = None, params: dict | None = None) -> ConfigurationManager:
        return ConfigurationManager(
            *write_project(tmp_path, config, merge(TINY_PARAMS, params or {})), project_root=tmp_path
        )

    return make


def run_pipeline(manager: ConfigurationManager) -> dict:
    """Every chest-CT stage in order, as ``dvc repro`` runs them; the register stage's record."""
    from cancer_classifier.chest_ct.components.data_ingestion import DataIngestion
    from cancer_classifier.chest_ct.components.evaluation import Evaluation
    from cancer_classifier.chest_ct.components.features import Features
    from cancer_classifier.chest_ct.components.prepare_base_model import PrepareBaseModel
    from cancer_classifier.chest_ct.components.registry import ModelRegistry
    from cancer_classifier.chest_ct.components.training import Training

    DataIngestion(manager.data_ingestion()).run()
    PrepareBaseModel(manager.prepare_base_model()).run()
    Features(manager.features()).run()
    Training(manager.training()).run()
    Evaluation(manager.evaluation()).run()
    return ModelRegistry(manager.registry()).run()


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory) -> ConfigurationManager:
    """The whole pipeline, run once on tiny synthetic data: every stage's real outputs."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests use their own local store
    root = tmp_path_factory.mktemp("trained")
    manager = ConfigurationManager(*write_project(root, None, TINY_PARAMS), project_root=root)
    run_pipeline(manager)
    return manager


@pytest.fixture(scope="module")
def serving(trained_project):
    """Serving settings for the tiny trained project, in local mode (the pipeline's artifacts), in the
    reference variant on every CPU (``auto`` differs by CPU); test_parity.py serves every variant."""
    return dataclasses.replace(trained_project.serving(), use_registry=False, engine="tensorflow", precision="float32")


@pytest.fixture(scope="module")
def app(serving):
    from cancer_classifier.serving.app import create_app

    # One app per module: loading VGG16 per test would cost seconds each.
    return create_app({"TESTING": True, "SERVING_CONFIG": serving})


@pytest.fixture
def client(app):
    return app.test_client()
