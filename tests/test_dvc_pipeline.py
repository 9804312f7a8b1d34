"""The real `dvc repro` on a copy of this repo: the default demo completes and learns, and a change
re-runs exactly the stages that depend on it."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO
from tests.parity import REFERENCE_AND_FURTHEST, evaluated, expected_variant, serve_artifacts, served_parity
from tests.remote_support import NOT_SERVED, SERVED, answers, digests, git
from tests.test_mlflow_servers import mlflow_server

pytestmark = pytest.mark.slow


def run(args: list[str], cwd: Path, tracking_uri: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {}
    # The copy's own code must run, and `python` in dvc.yaml must be this interpreter.
    env |= {"PYTHONPATH": str(cwd / "src"), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    """This repo's files as git sees them (nothing ignored, no artifacts), in a fresh git repo."""
    copy = tmp_path_factory.mktemp("repo")
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file() and name != "dvc.lock":
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"],
    ):
        subprocess.run(command, cwd=copy, check=True)
    return copy


def test_default_dvc_repro_completes_and_the_demo_model_learns(repo_copy, tmp_path):
    """As a user with a team MLflow server runs it: MLFLOW_TRACKING_URI set, a real server on loopback."""
    with mlflow_server(Path(sys.executable), tmp_path / "mlflow") as server:
        output = run(["dvc", "repro"], repo_copy, tracking_uri=server)
        client = MlflowClient(server)
        champion = client.get_model_version_by_alias("chest-ct-classifier", "champion")
        registration = client.get_run(champion.run_id)
        training = client.get_run(registration.data.tags["mlflow.parentRunId"])  # trained on the same server
        experiment = client.get_experiment(training.info.experiment_id).name
    assert stages_run(output) == [
        "data_ingestion",
        "prepare_base_model",
        "features",
        "training",
        "evaluation",
        "register",
    ]
    assert experiment == "chest-ct" and registration.info.experiment_id == training.info.experiment_id
    record = json.loads((repo_copy / "artifacts/register/registration.json").read_text())
    assert (record["version"], record["tracking_uri"]) == (champion.version, server)
    scores = json.loads((repo_copy / "scores.json").read_text())
    assert scores["demo"] is True
    # The demo learns on every CPU, in every variant (bfloat16 emulated where not native).
    assert scores["roc_auc"] >= 0.95 and min(v["roc_auc"] for v in scores["variants"].values()) >= 0.95, scores
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo_copy)


def dvc_json(args: list[str], cwd: Path) -> dict:
    """A dvc command's --json answer (stdout only: warnings go to stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run(["dvc", *args, "--json"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_dvc_shows_every_interval_bound_and_the_training_curves(repo_copy):
    """After the default `dvc repro`: the metric files' bounds are scalars `dvc metrics show` keeps (it drops
    lists), and the training stage's dvclive curves load as the plot dvc.yaml defines, with every other plot."""
    shown = dvc_json(["metrics", "show"], repo_copy)[""]["data"]
    for path in ("scores.json", "scores/breast-cancer.json"):
        metrics = shown[path]["data"]
        for name in ("accuracy", "roc_auc", "sensitivity", "specificity", "precision", "f1", "jaccard", "brier"):
            assert metrics[f"{name}_ci95_low"] <= metrics[name] <= metrics[f"{name}_ci95_high"], (path, name)
    assert "baseline_roc_auc_ci95_low" in shown["scores.json"]["data"]
    plots = dvc_json(["plots", "show"], repo_copy)
    assert not plots.get("errors"), plots["errors"]
    (curve,) = plots["data"]["Head loss per epoch (MLP candidate, cross-validation mean)"]
    points = curve["content"]["data"]["values"]
    assert {p["filename"] for p in points} == {"train/loss.tsv", "val/loss.tsv"}
    assert min(int(p["step"]) for p in points) == 1  # step = epoch


@pytest.mark.parametrize("setting", REFERENCE_AND_FURTHEST)
def test_the_default_demo_is_served_as_it_was_evaluated(repo_copy, tmp_path, setting):
    """Runs before the tests below change the copy: the model `dvc repro` just made, over HTTP."""
    evaluation = json.loads((repo_copy / "artifacts/evaluation/evaluation.json").read_text())
    project = serve_artifacts(repo_copy, tmp_path / "served", setting, {})
    parity = served_parity(project, repo_copy / "artifacts/data_ingestion")
    print(f"\n{setting}: {parity}")
    assert parity.variant == expected_variant(setting, evaluation["serving_variants"]["servable"])
    assert parity.holds(), parity


def test_a_clone_pulls_the_model_from_a_dvc_remote_and_serves_the_same_answers(repo_copy, tmp_path):
    """The deploy loop on the model `dvc repro` just made: `dvc push` to a remote (a folder here),
    commit dvc.lock; a fresh clone pulls only what the app serves and needs no training."""
    run(["dvc", "remote", "add", "--default", "storage", str(tmp_path / "remote")], repo_copy)
    run(["dvc", "push"], repo_copy)
    git(repo_copy, "add", "-A")
    git(repo_copy, "commit", "-qm", "dvc repro, dvc push")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo_copy), str(clone))
    run(["bash", "deploy/dvc/pull-model.sh"], clone)

    assert not [f for f in NOT_SERVED if (clone / "artifacts" / f).exists()], "pulled the data too"
    pinned = digests(clone, SERVED)
    assert pinned == digests(repo_copy, SERVED)  # byte for byte what dvc.lock pins
    registration = json.loads((clone / "artifacts/register/registration.json").read_text())
    model = {"version": str(registration["version"]), "sha256": pinned["artifacts/training/model.keras"]}
    test_files = sorted(next(iter(evaluated(repo_copy / "artifacts/evaluation", "test").values())))
    images = {name: (repo_copy / "artifacts/data_ingestion/images" / name).read_bytes() for name in test_files}
    ready, served = answers(clone, images, check=model)
    assert ready["model"]["source"] == "local" and ready["model"]["version"] == model["version"]
    assert ready["tasks"]["breast-cancer"]["loaded"]
    assert served == answers(repo_copy, images)[1]


def test_editing_a_component_reruns_only_it_and_its_dependants(repo_copy):
    evaluation = repo_copy / "src/cancer_classifier/chest_ct/components/evaluation.py"
    evaluation.write_text(evaluation.read_text() + "\n# touched by the test\n")
    ran = stages_run(run(["dvc", "repro"], repo_copy))
    # register follows only if evaluation's outputs changed: DVC compares hashes, not timestamps
    assert ran[0] == "evaluation" and set(ran) <= {"evaluation", "register"}


def test_changing_a_head_param_reuses_the_cached_features(repo_copy):
    params = repo_copy / "params.yaml"
    params.write_text(params.read_text().replace("  epochs: 60\n", "  epochs: 59\n"))
    ran = stages_run(run(["dvc", "repro"], repo_copy))
    assert ran[0] == "training" and set(ran) <= {"training", "evaluation", "register"}
