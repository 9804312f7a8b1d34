"""Pipeline faults: a stage killed part-way, a download cut short, a registration without a
completed evaluation. Nothing half-written may be taken as good, and the next run must finish.

Stages run as the real entry points in their own processes (``python -m
cancer_classifier.chest_ct.pipeline.<stage>``) in a copy of the tiny trained project, and are killed with
SIGKILL: no clean-up code runs, as when the machine loses power or the OOM killer strikes.
"""

import http.server
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from cancer_classifier.chest_ct.components.data_ingestion import DataIngestion
from cancer_classifier.chest_ct.components.synthetic import write_phantoms
from cancer_classifier.chest_ct.components.training import Training
from cancer_classifier.chest_ct.modeling import load_classifier
from cancer_classifier.config import ConfigurationManager
from cancer_classifier.core.errors import DataSourceError
from cancer_classifier.core.io import load_json, save_json, sha256_file
from tests.conftest import TINY_PARAMS, merge, write_project
from tests.test_dvc_pipeline import repo_copy, run, stages_run  # noqa: F401  (repo_copy: its fixture, reused)

STAGE_SECONDS = 600
PAUSED = "PAUSED"
# The real stage entry point with one change: right after writing ``pause_after`` into its staging
# folder it says PAUSED and waits. Writing takes milliseconds; the pause makes the kill land in the
# middle of the write every time instead of by luck. Arguments: stage, component, pause_after.
PAUSING_STAGE = f"""
import importlib, sys, time
from cancer_classifier.core.stage import run_stage
stage, component, pause_after = sys.argv[1:4]
module = importlib.import_module(f"cancer_classifier.chest_ct.components.{{component}}")
write = module.save_json
def write_then_pause(path, data):
    write(path, data)
    if path.name == pause_after:
        print("{PAUSED}", flush=True)
        time.sleep({STAGE_SECONDS})
module.save_json = write_then_pause
entry = importlib.import_module(f"cancer_classifier.chest_ct.pipeline.{{stage}}")
run_stage(entry.STAGE_NAME, entry.main)
"""


def stage_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the project's own store


def run_entry_point(root: Path, stage: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"cancer_classifier.chest_ct.pipeline.{stage}"],
        cwd=root, env=stage_env(), capture_output=True, text=True, timeout=STAGE_SECONDS,
    )


def kill_while_writing(root: Path, stage: str, component: str, pause_after: str) -> list[Path]:
    """Start ``stage``, SIGKILL it once it has written ``pause_after`` into its staging folder;
    return the staging folders it was writing (as they are at the kill)."""
    with subprocess.Popen(  # on exit, closes its stdout pipe
        [sys.executable, "-c", PAUSING_STAGE, stage, component, pause_after],
        cwd=root, env=stage_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ) as process:
        try:
            deadline = time.monotonic() + STAGE_SECONDS
            while time.monotonic() < deadline and process.poll() is None:
                if select.select([process.stdout], [], [], 1)[0] and process.stdout.readline().strip() == PAUSED:
                    break
            assert process.poll() is None, f"{stage} ended (exit {process.returncode}) before it paused"
            staging = sorted((root / "artifacts").glob(f".{stage}.*.partial"))
            process.kill()
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)
    return staging


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its sha256, or {} if the folder does not exist."""
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def project_copy(trained_project, root: Path, stages: tuple[str, ...]) -> Path:
    """A project of its own with the tiny trained project's outputs of ``stages`` and its MLflow store.

    Its head trains for 3 epochs instead of 25: a faster stage to kill and re-run; the features
    cache depends on other params only, so the copied one stays valid."""
    write_project(root, None, merge(TINY_PARAMS, {"training": {"epochs": 3}}))
    for stage in stages:
        shutil.copytree(trained_project.root / "artifacts" / stage, root / "artifacts" / stage)
    shutil.copy2(trained_project.root / "mlflow.db", root / "mlflow.db")
    return root


# -- a stage killed part-way --------------------------------------------------------------


def test_training_killed_while_writing_keeps_the_previous_model_and_a_rerun_completes(trained_project, tmp_path):
    root = project_copy(trained_project, tmp_path, ("data_ingestion", "prepare_base_model", "features", "training"))
    output = root / "artifacts/training"
    previous = snapshot(output)

    staging = kill_while_writing(root, "training", "training", "class_indices.json")

    # The kill landed mid-write: the staging folder had the model and one JSON file, not the rest.
    assert len(staging) == 1 and {"model.keras", "class_indices.json"} <= {p.name for p in staging[0].iterdir()}
    assert "model_metadata.json" not in {p.name for p in staging[0].iterdir()}
    assert snapshot(output) == previous  # the previous complete output, untouched
    # What the killed run left is a hidden sibling (.training.<random>.partial): no stage reads it,
    # nor the app (they read artifacts/training by name).
    assert [p.name for p in (root / "artifacts").iterdir() if p.name.startswith(".")] == [staging[0].name]

    rerun = run_entry_point(root, "training")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    replaced = snapshot(output)
    assert set(replaced) == set(previous) and replaced["training_info.json"] != previous["training_info.json"]
    assert load_classifier(output / "model.keras").output_shape[-1] == 2


def test_register_refuses_a_model_whose_evaluation_has_not_completed(trained_project, tmp_path):
    """Evaluation never ran, or was killed before its output was moved into place: the same state,
    since artifacts/evaluation only ever appears complete (see the training test above)."""
    root = project_copy(trained_project, tmp_path, ("data_ingestion", "prepare_base_model", "training"))
    tracking = ConfigurationManager(root / "config/config.yaml", root / "params.yaml", root).tracking()
    client = MlflowClient(tracking.tracking_uri)
    versions = {v.version for v in client.search_model_versions(f"name='{tracking.registered_model}'")}
    champion = client.get_model_version_by_alias(tracking.registered_model, tracking.alias).version

    register = run_entry_point(root, "register")

    assert register.returncode == 1
    assert "stage register failed" in register.stderr and "evaluation/evaluation.json" in register.stderr
    assert "Traceback" not in register.stderr
    assert {v.version for v in client.search_model_versions(f"name='{tracking.registered_model}'")} == versions
    assert client.get_model_version_by_alias(tracking.registered_model, tracking.alias).version == champion
    assert not (root / "artifacts/register").exists()


@pytest.mark.slow
def test_register_refuses_a_model_retrained_after_its_evaluation(trained_project, tmp_path):
    stages = ("data_ingestion", "prepare_base_model", "features", "training", "evaluation")
    root = project_copy(trained_project, tmp_path, stages)
    manager = ConfigurationManager(root / "config/config.yaml", root / "params.yaml", root)
    Training(manager.training()).run()  # retrained; the evaluation still describes the previous model

    register = run_entry_point(root, "register")

    assert register.returncode != 0 and not (root / "artifacts/register").exists()


@pytest.mark.slow
def test_dvc_repro_killed_during_training_leaves_nothing_half_written_and_repro_finishes(repo_copy):  # noqa: F811
    """The real `dvc repro` on a copy of this repo with tiny settings, killed during training."""
    params = repo_copy / "params.yaml"
    tiny = merge(TINY_PARAMS, {"tabular": {"enabled": []}})  # the chest-CT stages only
    params.write_text(yaml.safe_dump(merge(yaml.safe_load(params.read_text()), tiny)))
    # As tests/test_dvc_pipeline.run does: the copy's code, and `python` in dvc.yaml is this interpreter.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = stage_env() | {"PYTHONPATH": str(repo_copy / "src"), "PATH": path}
    with subprocess.Popen(  # its own process group: the kill takes dvc and the stage it runs
        ["dvc", "repro"], cwd=repo_copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    ) as process:
        try:
            seen = ""
            deadline = time.monotonic() + STAGE_SECONDS
            # killed once the first head candidate is cross-validated: training is under way, not written
            mark = "cross-validated ROC-AUC"
            while mark not in seen and time.monotonic() < deadline and process.poll() is None:
                if select.select([process.stdout], [], [], 1)[0]:
                    seen += process.stdout.readline()
            assert "Running stage 'training'" in seen and mark in seen, seen[-3000:]
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
    artifacts = repo_copy / "artifacts"
    assert not (artifacts / "training").exists() and (artifacts / "features/features_info.json").is_file()

    ran = stages_run(run(["dvc", "repro"], repo_copy))

    assert ran == ["training", "evaluation", "register"]
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo_copy)


# -- a download cut short -----------------------------------------------------------------


class CuttingHandler(http.server.BaseHTTPRequestHandler):
    """Serves the server's ``payload`` at /ct.zip in full, and cut at half at /cut-length.zip
    (Content-Length promises it all) and /cut-chunked.zip (chunked, never the last chunk)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        payload, half = self.server.payload, len(self.server.payload) // 2
        self.server.requests.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        if self.path == "/cut-chunked.zip":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n" % (half, payload[:half]))
        else:
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload if self.path == "/ct.zip" else payload[:half])
        self.close_connection = True  # then the connection closes: the client sees the cut

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def zip_server(tmp_path):
    """A loopback HTTP server for a zip of phantom slices in class folders; yields (url, sha256, server)."""
    write_phantoms(tmp_path / "source", ("adenocarcinoma", "normal"), 10, 64, seed=1)
    archive = Path(shutil.make_archive(str(tmp_path / "ct"), "zip", tmp_path / "source"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CuttingHandler)
    server.payload, server.requests = archive.read_bytes(), []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", sha256_file(archive), server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "cut",
    [
        "cut-length",
        "cut-chunked",
    ],
)
def test_a_download_cut_short_is_rejected_and_never_used(project, zip_server, tmp_path, monkeypatch, cut):
    url, sha256, server = zip_server
    scratch = tmp_path / "scratch"  # where ingestion's temporary download folder goes
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    output = tmp_path / "artifacts/data_ingestion"

    with pytest.raises(DataSourceError, match=url):
        DataIngestion(project(config={"data_ingestion": {"source": f"{url}/{cut}.zip", "source_sha256": sha256}})
                      .data_ingestion()).run()

    assert not output.exists() and list(scratch.iterdir()) == []  # nothing written, no partial file kept
    assert not list((tmp_path / "artifacts").glob(".*"))
    report = DataIngestion(project(config={"data_ingestion": {"source": f"{url}/ct.zip", "source_sha256": sha256}})
                           .data_ingestion()).run()
    assert report["images_kept"] == 20 and (output / "manifest.csv").is_file()
    assert server.requests == [f"/{cut}.zip", "/ct.zip"]  # downloaded afresh, nothing reused


# -- a base that is not the one described ---------------------------------------------------


def test_prepare_base_model_runs_without_tensorflow():
    """It only describes the base: the pipeline pays no TensorFlow start for it."""
    stage = "cancer_classifier.chest_ct.pipeline.prepare_base_model"
    check = f"import sys; import {stage}; print('tensorflow' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert imported.returncode == 0 and imported.stdout.strip() == "False", imported.stderr[-2000:]


def test_a_weights_file_changed_since_prepare_base_model_is_refused_in_one_line(trained_project, tmp_path):
    import keras

    def vgg16_weights(seed: int) -> None:
        keras.utils.set_random_seed(seed)
        keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)

    root = project_copy(trained_project, tmp_path, ("data_ingestion",))
    weights = root / "vgg16.weights.h5"
    vgg16_weights(1)
    write_project(root, None, merge(TINY_PARAMS, {"base_model": {"weights": weights.name}}))
    assert run_entry_point(root, "prepare_base_model").returncode == 0
    assert load_json(root / "artifacts/prepare_base_model/base_model_info.json")["sha256"] == sha256_file(weights)
    vgg16_weights(2)  # the file changes at the same path, which DVC does not watch

    features = run_entry_point(root, "features")

    assert features.returncode == 1 and "Traceback" not in features.stderr
    assert f"the base weights {weights} are not the ones prepare_base_model described" in features.stderr
    assert "dvc repro -f prepare_base_model" in features.stderr
    assert not (root / "artifacts/features").exists()


def test_training_refuses_features_of_another_base(trained_project, tmp_path):
    """The base was described anew (another seed for its random weights) but the features were not
    recomputed: the head would learn features that the saved model does not compute."""
    root = project_copy(trained_project, tmp_path, ("data_ingestion", "prepare_base_model", "features"))
    info_path = root / "artifacts/prepare_base_model/base_model_info.json"
    save_json(info_path, load_json(info_path) | {"seed": 7})

    training = run_entry_point(root, "training")

    assert training.returncode == 1 and "Traceback" not in training.stderr
    assert "differs from the one the features" in training.stderr and "dvc repro -f features" in training.stderr
    assert not (root / "artifacts/training").exists()


def test_a_base_description_from_older_code_is_refused_in_one_line(trained_project, tmp_path):
    """base_model_info.json as the stage wrote it before it described pooling and seed."""
    root = project_copy(trained_project, tmp_path, ("data_ingestion", "prepare_base_model"))
    info_path = root / "artifacts/prepare_base_model/base_model_info.json"
    save_json(info_path, {k: v for k, v in load_json(info_path).items() if k not in ("pooling", "seed")})

    features = run_entry_point(root, "features")

    assert features.returncode == 1 and "Traceback" not in features.stderr
    assert "lacks pooling, seed" in features.stderr and "dvc repro -f prepare_base_model" in features.stderr
