"""The MLflow servers people track with, started here on loopback: the current MLflow, MLflow 2.9
(DagsHub's generation, in a virtualenv of its own), one without a model registry (a proxy answers
404 for those endpoints), one with basic auth, and none at all.

The register stage runs as `dvc repro` runs it (its entry point, in a copy of the trained tiny
project whose training run was tracked locally), so each test also covers moving to a server.
"""

import base64
import http.server
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import venv
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from cancer_classifier.chest_ct.components.dataset import split_files
from cancer_classifier.chest_ct.scoring import REFERENCE, Variant
from cancer_classifier.chest_ct.serving.predictor import Predictor
from cancer_classifier.config import ConfigurationManager
from cancer_classifier.core.errors import ModelUnavailable
from cancer_classifier.core.images import decode_image
from cancer_classifier.core.io import load_json
from cancer_classifier.core.registration import ModelStore, alias_tag
from cancer_classifier.core.tracking import connect
from cancer_classifier.serving.app import create_app
from tests.conftest import TINY_PARAMS
from tests.support import free_port, write_project

pytestmark = pytest.mark.slow

STAGE_SECONDS = 300
OLD_MLFLOW = ("mlflow==2.9.2", "sqlalchemy<2.1")


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server at {url} exited ({process.returncode})"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise AssertionError(f"no server at {url} after {seconds} s")


@contextmanager
def running(command: list[str], url: str, env: dict | None = None, cwd: Path | None = None) -> Iterator[str]:
    """A server process in its own process group, stopped (with its workers) on exit."""
    log = Path(cwd) / f"server-{url.rsplit(':', 1)[1]}.log" if cwd else None
    with open(log, "w") if log else nullcontext(subprocess.DEVNULL) as out:  # the server has its own copy
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=out, start_new_session=True)
    try:
        wait_until_up(url, process)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@contextmanager
def mlflow_server(python: Path, root: Path, *extra: str, env: dict | None = None) -> Iterator[str]:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        str(python),
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root}/mlflow.db",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--workers",
        "1",
        *extra,
    ]
    with running(command, f"http://127.0.0.1:{port}", env=env, cwd=root) as url:
        yield url


class Proxy(http.server.BaseHTTPRequestHandler):
    """Forwards to ``upstream``, except requests matching a rule ``(method or "*", path part, status)``,
    which get that status and the HTML page a server gives for an endpoint it does not have."""

    upstream = ""
    rules: tuple[tuple[str, str, int], ...] = ()
    protocol_version = "HTTP/1.1"

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":  # artifact uploads stream
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        self.rfile.readline()
        return b"".join(chunks)

    def _forward(self) -> None:
        body = self._body()
        for method, part, status in self.rules:
            if method in ("*", self.command) and part in self.path:
                return self._reply(status, b"<!doctype html><title>Refused</title><h1>Refused</h1>", "text/html")
        skip = ("host", "content-length", "transfer-encoding")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        request = urllib.request.Request(
            self.upstream + self.path, data=body or None, headers=headers, method=self.command
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                status, content, kind = answer.status, answer.read(), answer.headers.get("Content-Type")
        except urllib.error.HTTPError as error:
            status, content, kind = error.code, error.read(), error.headers.get("Content-Type")
        self._reply(status, content, kind or "application/json")

    def _reply(self, status: int, content: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def log_message(self, *args) -> None:
        pass


@contextmanager
def proxy(upstream: str, *rules: tuple[str, str, int]) -> Iterator[str]:
    handler = type("RuleProxy", (Proxy,), {"upstream": upstream, "rules": rules})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# What a server without a model registry answers (DagsHub has been seen without these endpoints).
NO_REGISTRY = (("*", "/registered-models", 404), ("*", "/model-versions", 404))


@pytest.fixture(scope="module")
def old_mlflow(tmp_path_factory) -> Path:
    """The python of a virtualenv holding MLflow 2.9, as DagsHub has hosted."""
    env = tmp_path_factory.mktemp("mlflow-2.9")
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *OLD_MLFLOW], capture_output=True, text=True, timeout=900
    )
    if install.returncode != 0:
        pytest.skip(f"MLflow 2.9 could not be installed here: {install.stderr.strip().splitlines()[-1:]}")
    return python


@dataclass
class Project:
    root: Path

    @property
    def manager(self) -> ConfigurationManager:
        return ConfigurationManager(self.root / "config/config.yaml", self.root / "params.yaml", self.root)

    def register(self, uri: str, stage: str = "register", **env: str) -> subprocess.CompletedProcess:
        """The register stage's entry point, as `dvc repro` runs it, tracking into ``uri``."""
        environment = {**os.environ, "MLFLOW_TRACKING_URI": uri, **env}
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", f"cancer_classifier.chest_ct.pipeline.{stage}"],
            cwd=self.root,
            env=environment,
            capture_output=True,
            text=True,
            timeout=STAGE_SECONDS,
        )
        result.seconds = time.monotonic() - started
        return result


@pytest.fixture
def trained_copy(trained_project, tmp_path_factory):
    """A factory: the tiny trained project's outputs up to evaluation, in a project of its own (not
    registered anywhere yet), with ``config`` overrides."""

    def make(config: dict | None = None) -> Project:
        root = tmp_path_factory.mktemp("project")
        write_project(root, config, TINY_PARAMS)
        for stage in ("data_ingestion", "prepare_base_model", "training", "evaluation"):
            shutil.copytree(trained_project.root / "artifacts" / stage, root / "artifacts" / stage)
        return Project(root)

    return make


def one_line_failure(result: subprocess.CompletedProcess, *expected: str) -> str:
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = next(line for line in result.stderr.splitlines() if "stage register failed" in line)
    for text in expected:
        assert text in line, line
    return line


def store(project: Project, uri: str) -> ModelStore:
    tracking = replace(project.manager.tracking(), tracking_uri=uri, artifact_location=None)
    return ModelStore(connect(tracking), tracking.registered_model, tracking.alias)


def registered_versions(uri: str, name: str) -> list[str]:
    return [v.version for v in MlflowClient(uri).search_model_versions(f"name='{name}'")]


def served(project: Project, uri: str, variant: Variant | None = None) -> Predictor:
    """What the app loads in registry mode (MLFLOW_TRACKING_URI set) from ``uri``; in ``variant`` if given,
    else as the project's config says (auto: this CPU's choice)."""
    serving = project.manager.serving()
    tracking = replace(serving.tracking, tracking_uri=uri, artifact_location=None)
    forced = {"engine": variant.engine, "precision": variant.precision} if variant else {}
    return Predictor.from_config(replace(serving, use_registry=True, tracking=tracking, **forced))


def sample_file(project: Project) -> bytes:
    """A test-split image file of the project, as a client would upload it."""
    paths, _ = split_files(project.manager.evaluation().data_dir, "test")
    return Path(paths[0]).read_bytes()


def same_answers(first: Predictor, second: Predictor, data: bytes) -> bool:
    image = decode_image(data)
    one, two = first.predict(image)["probabilities"], second.predict(image)["probabilities"]
    return list(one) == list(two) and np.allclose(list(one.values()), list(two.values()), atol=1e-6)


# -- the current MLflow --------------------------------------------------------------------


@pytest.fixture(scope="module")
def current_server(tmp_path_factory) -> Iterator[str]:
    with mlflow_server(Path(sys.executable), tmp_path_factory.mktemp("mlflow-current")) as url:
        yield url


@pytest.fixture(scope="module")
def on_current(trained_project, current_server, tmp_path_factory) -> Project:
    """The tiny trained project registered on the current server by its register stage."""
    root = tmp_path_factory.mktemp("on-current")
    write_project(root, None, TINY_PARAMS)
    for stage in ("data_ingestion", "prepare_base_model", "training", "evaluation"):
        shutil.copytree(trained_project.root / "artifacts" / stage, root / "artifacts" / stage)
    project = Project(root)
    result = project.register(current_server)
    assert result.returncode == 0, result.stderr[-3000:]
    return project


def test_current_server_registers_a_locally_trained_model_where_the_user_expects_it(on_current, current_server):
    record = load_json(on_current.root / "artifacts/register/registration.json")
    assert record["promoted"] is True and record["model_store"] == "the MLflow model registry"
    champion = store(on_current, current_server).champion()
    assert champion.version == record["version"] and champion.tags["demo"] == "true"
    client = MlflowClient(current_server)
    run = client.get_run(champion.run_id)
    assert client.get_experiment(run.info.experiment_id).name == on_current.manager.tracking().experiment
    # The training run was tracked in the local store: this run names it instead of pointing at it.
    assert "training_run" in run.data.tags and "mlflow.parentRunId" not in run.data.tags
    logged = client.search_logged_models([run.info.experiment_id])
    assert [m.source_run_id for m in logged] == [champion.run_id]  # the MLflow 3 logged model, in chest-ct


def test_the_app_serves_the_registered_champion(on_current, current_server):
    predictor = served(on_current, current_server)
    version = load_json(on_current.root / "artifacts/register/registration.json")["version"]
    assert (predictor.info.source, predictor.info.version) == ("registry", version)
    assert same_answers(predictor, Predictor.from_config(on_current.manager.serving()), sample_file(on_current))


def invoke(url: str, records: list[dict]) -> dict:
    """POST records to MLflow's scoring server, as its clients do."""
    body = json.dumps({"dataframe_records": records}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def test_mlflow_models_serve_answers_a_base64_file_as_the_app_does(on_current, current_server, tmp_path):
    name = on_current.manager.tracking().registered_model
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": current_server, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "models",
        "serve",
        "-m",
        f"models:/{name}@champion",
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    data = sample_file(on_current)
    with running(command, f"http://127.0.0.1:{port}", env=env, cwd=tmp_path) as url:
        scored = invoke(url, [{"image": base64.b64encode(data).decode()}])["predictions"][0]
        refused = {  # the app's limits and messages travel with the model
            "at most 16 (serving.max_batch)": [{"image": base64.b64encode(data).decode()}] * 17,
            "not valid base64": [{"image": "not base64!"}],
        }
        for message, records in refused.items():
            with pytest.raises(urllib.error.HTTPError) as error:
                invoke(url, records)
            assert error.value.code == 400 and message in error.value.read().decode()
    # MLflow's model serves the reference variant; so does the app here (auto may choose another on this CPU)
    app = create_app({"TESTING": True, "PREDICTOR": served(on_current, current_server, REFERENCE)}).test_client()
    expected = app.post("/predict", data={"file": (io.BytesIO(data), "slice.png")}).get_json()
    assert scored["label"] == expected["label"] and scored["in_distribution"] == expected["in_distribution"]
    assert list(scored["probabilities"]) == list(expected["probabilities"])
    assert np.allclose(list(scored["probabilities"].values()), list(expected["probabilities"].values()), atol=1e-6)


def test_a_registration_failing_part_way_leaves_no_version_no_logged_model_and_no_run(trained_copy, current_server):
    """The server refuses to move the alias (403) after the version was created: all of it is undone."""
    project = trained_copy({"tracking": {"registered_model": "chest-ct-partial"}})
    client = MlflowClient(current_server)
    started = int(time.time() * 1000)
    with proxy(current_server, ("POST", "/registered-models/alias", 403)) as url:
        result = project.register(url)
    one_line_failure(result, "denied this user access (HTTP 403)", "MLFLOW_TRACKING_USERNAME")
    assert registered_versions(current_server, "chest-ct-partial") == []
    experiment = client.get_experiment_by_name(project.manager.tracking().experiment).experiment_id
    attempt = [r for r in client.search_runs([experiment], run_view_type=ViewType.ALL) if r.info.start_time >= started]
    assert len(attempt) == 1 and attempt[0].info.lifecycle_stage == "deleted"  # its registration run
    assert not [m for m in client.search_logged_models([experiment]) if m.source_run_id == attempt[0].info.run_id]
    assert not (project.root / "artifacts/register").exists()


def test_a_failing_server_is_named_as_failing_not_unreachable(trained_copy, current_server):
    with proxy(current_server, ("*", "/experiments/", 500)) as url:
        result = trained_copy().register(url)
    one_line_failure(result, "answered HTTP 500", "the server is failing")


def test_basic_auth_server_with_right_and_wrong_credentials(trained_copy, tmp_path):
    env = {**os.environ, "MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-admin-password-1", "MLFLOW_FLASK_SERVER_SECRET_KEY": "k"}
    with mlflow_server(Path(sys.executable), tmp_path / "auth", "--app-name", "basic-auth", env=env) as url:
        wrong = trained_copy().register(url, MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD="wrong")
        one_line_failure(wrong, "refused the credentials (HTTP 401)", "MLFLOW_TRACKING_PASSWORD")
        right = trained_copy().register(
            url, MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD="a-long-admin-password-1"
        )
        assert right.returncode == 0, right.stderr[-3000:]


def test_an_unreachable_server_fails_in_under_a_minute_with_one_line(trained_copy):
    result = trained_copy().register(f"http://127.0.0.1:{free_port()}")
    line = one_line_failure(result, "cannot reach MLflow at http://127.0.0.1:", "MLFLOW_TRACKING_URI")
    assert result.seconds < 60, (result.seconds, line)


# -- MLflow 2.9, with and without its registry --------------------------------------------


@pytest.fixture(scope="module")
def old_server(old_mlflow, tmp_path_factory) -> Iterator[str]:
    with mlflow_server(old_mlflow, tmp_path_factory.mktemp("mlflow-2.9")) as url:
        yield url


def test_mlflow_2_9_registers_with_run_artifacts_and_sets_the_champion(trained_copy, old_server):
    project = trained_copy()
    result = project.register(old_server)
    assert result.returncode == 0, result.stderr[-3000:]
    record = load_json(project.root / "artifacts/register/registration.json")
    assert record["promoted"] is True and record["model_uri"] == f"models:/chest-ct-classifier/{record['version']}"
    champion = store(project, old_server).champion()
    assert champion.version == record["version"]
    predictor = served(project, old_server)
    assert same_answers(predictor, Predictor.from_config(project.manager.serving()), sample_file(project))


def test_a_server_without_a_registry_keeps_the_champion_as_a_run_tag_that_the_app_serves(trained_copy, old_server):
    project = trained_copy()
    before = registered_versions(old_server, "chest-ct-classifier")
    with proxy(old_server, *NO_REGISTRY) as url:
        result = project.register(url)
        assert result.returncode == 0, result.stderr[-3000:]
        record = load_json(project.root / "artifacts/register/registration.json")
        assert record["promoted"] is True and "run tags" in record["model_store"]
        predictor = served(project, url)
    assert predictor.info.version == record["version"]  # the registration run
    run = MlflowClient(old_server).get_run(record["version"])
    assert run.data.tags[alias_tag("champion")] == "chest-ct-classifier"
    assert registered_versions(old_server, "chest-ct-classifier") == before  # nothing half-registered
    assert same_answers(predictor, Predictor.from_config(project.manager.serving()), sample_file(project))


# -- artifacts cannot run code ---------------------------------------------------------------


def test_a_crafted_model_artifact_does_not_run_code_in_the_app(trained_copy, tmp_path):
    """Whoever can write the artifact store swaps in a Keras file whose Lambda layer runs code: the app
    refuses the model (503) and the code does not run."""
    import keras

    project = trained_copy()
    uri = f"sqlite:///{project.root}/registry.db"
    assert project.register(uri).returncode == 0
    marker = tmp_path / "pwned"
    writes_marker = eval(f"lambda x: x * (open({str(marker)!r}, 'w').close() or 1)")  # the code the file would carry
    payload = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(writes_marker)])
    (model_file,) = project.root.glob("mlruns/**/artifacts/serving/model.keras")
    payload.save(model_file)
    marker.unlink(missing_ok=True)  # building the payload here ran its lambda once
    with pytest.raises(ModelUnavailable):
        served(project, uri)
    assert not marker.exists()
