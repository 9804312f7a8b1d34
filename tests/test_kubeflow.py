"""The Kubeflow pipeline (deploy/kubeflow/pipeline.py) run for real by kfp.local, without Docker or
a cluster: every component runs in a subprocess of this venv, in a copy of this repo on tiny
settings, passing the stages' outputs to each other as Kubeflow artifacts."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import mlflow
import pytest
from kfp import local

from tests.conftest import REPO, TINY_PARAMS, merge
from tests.test_shipping import checkout

pytestmark = pytest.mark.slow


def pipeline_module():
    spec = importlib.util.spec_from_file_location("kubeflow_pipeline", REPO / "deploy/kubeflow/pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The stages run in this venv, not in the image the components name, and without the cluster's
# resource settings: kfp.local warns about both.
@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:Task .* have no effect in the current local runner:UserWarning")
def test_kfp_local_runs_the_whole_pipeline_and_registers_the_model(tmp_path, monkeypatch):
    project = checkout(tmp_path / "project", merge(TINY_PARAMS, {"tabular": {"enabled": ["breast-cancer"]}}))
    targets = ("register", "tabular_register@breast-cancer")
    # Compiled from this repo's dvc.yaml (DVC reads it in a git repo), run in the copy, on its settings.
    pipeline = pipeline_module().build_pipeline(image="cancer-classifier:local", targets=targets)
    # Components run in the working folder (the image's /app) with this interpreter and the copy's code.
    monkeypatch.chdir(project)
    monkeypatch.setenv("PYTHONPATH", str(project / "src"))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "pipeline-root"))

    tracking_uri = f"sqlite:///{project}/mlflow.db"
    pipeline(mlflow_tracking_uri=tracking_uri)

    registration = json.loads((project / "artifacts/register/registration.json").read_text())
    assert registration["version"] == "1" and registration["promoted"] is True
    tabular = json.loads((project / "artifacts/tabular/breast-cancer/register/registration.json").read_text())
    assert tabular["promoted"] is True
    client = mlflow.MlflowClient(tracking_uri)
    assert str(client.get_model_version_by_alias("chest-ct-classifier", "champion").version) == "1"
    assert json.loads((project / "scores.json").read_text())["demo"] is True
    # Each stage's outputs went through Kubeflow's artifact store, as on a cluster.
    stored = [path.relative_to(tmp_path) for path in (tmp_path / "pipeline-root").rglob("registration.json")]
    assert len(stored) == 2, stored
