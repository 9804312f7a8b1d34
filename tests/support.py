"""The machinery the tests and the benchmarks share: a project folder, a real gunicorn, HTTP uploads.

Imported as ``tests.support`` from the repository root: pytest puts it on the path (``tests`` is a
package), and ``python -m benchmarks.<module>`` runs from there. It imports neither pytest, nor
TensorFlow, nor the app, so a benchmark's ``--help`` stays fast.

- ``write_project(root, config, params)``: the repo's config/config.yaml, params.yaml and
  config/tabular_schemas in ``root``, with overrides, every output under ``root``;
  ``serving_copy(trained, root, ...)``: such a folder serving another project's trained model.
- ``Gunicorn(project, workers, env)``: ``gunicorn app:app -c gunicorn.conf.py`` serving ``project`` on a
  free port of 127.0.0.1, a context manager; ``wait_ready``/``wait_loaded`` wait for the model.
- ``multipart(files)`` builds an upload of one or many files, ``post(url, body, content_type)`` sends it
  (any answer is a ``Reply``), ``predict(url, files)`` is /predict's JSON reply to one upload.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# One setting finds the read-only real data (chest CT, DICOM, pretrained weights).
SHARED = Path(os.environ.get("CANCER_CLASSIFIER_SHARED", REPO.parent / "shared")).resolve()
STAGE_DIRS = ("data_ingestion", "prepare_base_model", "features", "training", "evaluation", "register")
# What a served copy needs of a trained project: the model, its evaluation (model card, admitted
# variants, OOD reference) and its registration.
SERVED_STAGES = ("training", "evaluation", "register")


# -- the project folder ------------------------------------------------------------------------


def merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` applied, nested dictionaries merged key by key (neither is changed)."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and key in merged else value
    return merged


def write_project(root: Path, config: dict | None = None, params: dict | None = None) -> tuple[Path, Path]:
    """The repo's config.yaml and params.yaml with overrides, every output under ``root``; their paths.

    They land where the ConfigurationManager looks by default (``config/config.yaml`` and
    ``params.yaml``), with the tabular tasks' schemas beside config.yaml, so a process started in
    ``root`` (a stage, gunicorn, dvc) finds them too.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base_config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for stage in STAGE_DIRS:
        base_config[stage]["root_dir"] = str(root / "artifacts" / stage)
    base_config["evaluation"]["scores_file"] = str(root / "scores.json")
    base_config["serving"]["model_dir"] = str(root / "artifacts/training")
    base_config["serving"]["registration_file"] = str(root / "artifacts/register/registration.json")
    base_config["tracking"] |= {
        "tracking_uri": f"sqlite:///{root}/mlflow.db",
        "artifact_location": str(root / "mlruns"),
    }
    config_path, params_path = root / "config" / "config.yaml", root / "params.yaml"
    config_path.parent.mkdir(exist_ok=True)
    config_path.write_text(yaml.safe_dump(merge(base_config, config or {})))
    # the tabular tasks' column schemas: a dependency of their stages, beside config.yaml
    shutil.copytree(REPO / "config/tabular_schemas", config_path.parent / "tabular_schemas", dirs_exist_ok=True)
    base_params = yaml.safe_load((REPO / "params.yaml").read_text())
    params_path.write_text(yaml.safe_dump(merge(base_params, params or {})))
    return config_path, params_path


def serving_copy(trained: Path, root: Path, config: dict | None = None, params: dict | None = None) -> Path:
    """A project folder of its own (``root``) serving the model trained in the project ``trained``.

    ``write_project`` with ``config`` and ``params`` (the tabular tasks off: /ready waits for none),
    then the trained project's training, evaluation and register outputs, those it has, copied with
    their modification times, so the registration stays valid.
    """
    write_project(root, config, merge(params or {}, {"tabular": {"enabled": []}}))
    for stage in SERVED_STAGES:
        if (Path(trained) / "artifacts" / stage).is_dir():
            shutil.copytree(Path(trained) / "artifacts" / stage, Path(root) / "artifacts" / stage)
    return Path(root)


# -- HTTP ----------------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], object], seconds: float, interval: float = 0.5) -> object:
    """The first truthy value of ``condition()`` within ``seconds``, else None."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value or None
        time.sleep(interval)


def http_get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    """(status, body); status 0 when the server did not answer at all."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def get_json(url: str, timeout: float = 10) -> tuple[int, dict]:
    """(status, the JSON body); {} for a body that is not JSON."""
    status, body = http_get(url, timeout)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {}


File = bytes | tuple[str, bytes]


def multipart(files: File | Sequence[File], field_name: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body and its content type: one ``field_name`` part per file, as a browser
    form with several files sends them.

    ``files``: one file or a list of them; a file is its bytes (named ``upload<i>``) or (filename, bytes).
    """
    if isinstance(files, (bytes, bytearray)) or (isinstance(files, tuple) and isinstance(files[0], str)):
        files = [files]
    boundary = uuid.uuid4().hex
    parts = []
    for i, file in enumerate(files):
        name, data = file if isinstance(file, tuple) else (f"upload{i}", file)
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@dataclass(frozen=True)
class Reply:
    """A server's answer: status 0 when there was none (refused, reset or timed out)."""

    status: int
    body: bytes
    seconds: float  # from sending to the whole answer read
    headers: Mapping[str, str] = field(default_factory=dict)  # case-insensitive names when answered

    def json(self) -> dict:
        """The body as JSON; {} for a body that is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return {}


def post(url: str, body: bytes, content_type: str, timeout: float = 120) -> Reply:
    """POST ``body``; any status is an answer (no exception for a 4xx or 5xx), and no answer is status 0."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, raw, headers = error.code, error.read(), error.headers
    except OSError:
        status, raw, headers = 0, b"", {}
    return Reply(status, raw, time.perf_counter() - started, headers)


def predict(url: str, files: File | Sequence[File], timeout: float = 300) -> dict:
    """The JSON reply of ``url``/predict to one upload of ``files`` (see ``multipart``); raises
    RuntimeError with the status and the start of the body for anything but a 200."""
    reply = post(f"{url}/predict", *multipart(files), timeout=timeout)
    if reply.status != 200:
        count = 1 if isinstance(files, (bytes, bytearray, tuple)) else len(files)
        raise RuntimeError(f"{url}/predict with {count} file(s) answered {reply.status}: {reply.body[:500]!r}")
    return reply.json()


# -- gunicorn ------------------------------------------------------------------------------------

LISTENING = re.compile(r"Listening at: (http://127\.0\.0\.1:(\d+))")
LOADED_WORKER = re.compile(r'^model_loaded\{pid="(\d+)"\} 1\.0$', re.MULTILINE)


def children(pid: int) -> list[int]:
    """Live child pids of ``pid``: gunicorn's workers when ``pid`` is its master.

    /proc/<pid>/task/*/children needs CONFIG_PROC_CHILDREN, which not every kernel has; scanning
    every /proc/<n>/stat for its parent pid works everywhere.
    """
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # the name in (...) may hold spaces
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return sorted(found)


def loaded_workers(url: str) -> set[int]:
    """Pids of the workers whose model is loaded, from /metrics' per-worker model_loaded gauge."""
    status, body = http_get(f"{url}/metrics")
    return {int(pid) for pid in LOADED_WORKER.findall(body.decode())} if status == 200 else set()


class Gunicorn:
    """gunicorn serving the project folder ``project`` as in production, on a free port of 127.0.0.1.

    By default ``python -m gunicorn -c gunicorn.conf.py app:app`` with this checkout's gunicorn.conf.py
    and app.py, run in ``project`` (where the app finds config/config.yaml and the artifacts);
    ``command`` replaces that command (e.g. an image's own CMD, run in its /app), ``args`` are added to it.
    The environment is this process's without any MLFLOW_* variable (the local model unless asked),
    then HOST 127.0.0.1, PORT 0 and WEB_CONCURRENCY ``workers``, then ``env`` (e.g. MLFLOW_TRACKING_URI,
    GUNICORN_TIMEOUT, PROMETHEUS_MULTIPROC_DIR). Port 0 lets the kernel choose (no race between finding a
    free port and binding it); the URL is read from the "Listening at" line of the log, ``log`` (default
    ``project/gunicorn.log``), which holds everything the server prints.

    ``with Gunicorn(...) as server`` (or ``start()`` ... ``stop()``) starts it and returns once it
    listens, then stops it and its workers. ``wait_ready`` waits for /ready 200, ``wait_loaded`` for
    workers with the model loaded; ``pid`` is the master's, ``workers()`` its workers' pids. A start
    or a wait that fails raises with the end of the log.
    """

    def __init__(self, project: Path, workers: int = 1, env: dict[str, str] | None = None, *,
                 args: Sequence[str] = (), command: Sequence[str] | None = None, log: Path | None = None) -> None:
        self.project = Path(project)
        self.log = Path(log) if log else self.project / "gunicorn.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        self.env |= {"HOST": "127.0.0.1", "PORT": "0", "WEB_CONCURRENCY": str(workers)} | (env or {})
        default = [sys.executable, "-m", "gunicorn", "--pythonpath", str(REPO), "-c", str(REPO / "gunicorn.conf.py"),
                   "app:app"]
        self.command = [*(command or default), *args]
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.port = 0

    def start(self, seconds: float = 120) -> Gunicorn:
        """Start it; return once it listens, within ``seconds``."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            # its own session: should a graceful stop fail, the whole group is killed (workers included)
            self.process = subprocess.Popen(self.command, cwd=self.project, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        found = wait_until(lambda: LISTENING.search(self.log_text()) or self.process.poll() is not None, seconds)
        if not isinstance(found, re.Match):
            self.stop()
            raise RuntimeError(self.failure(f"gunicorn did not start listening within {seconds} s"))
        self.url, self.port = found.group(1), int(found.group(2))
        return self

    def failure(self, what: str) -> str:
        """``what``, how the master ended if it did, and the end of the log."""
        ended = "" if self.process is None or self.process.poll() is None else f" (exited {self.process.returncode})"
        return f"{what}{ended}; end of {self.log}:\n{self.log_tail()}"

    def stop(self, seconds: float = 40) -> int | None:
        """Stop gracefully (workers finish their request) within ``seconds``, else kill its process group;
        the master's exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(seconds)
            except subprocess.TimeoutExpired:
                for pid in self.workers():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode

    @property
    def pid(self) -> int:
        """The master's pid."""
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def workers(self) -> list[int]:
        """The master's live workers."""
        return children(self.pid)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, characters: int = 3000) -> str:
        return self.log_text()[-characters:]

    def boots(self) -> int:
        """How many workers the master has started so far (a crash loop makes this climb)."""
        return self.log_text().count("Booting worker with pid")

    def wait_ready(self, seconds: float = 180) -> dict:
        """/ready's answer once it is 200 (503 while the model loads, with the reason); raises if the
        server exits or ``seconds`` pass first."""
        deadline, answer = time.monotonic() + seconds, (0, {})
        while self.process.poll() is None:
            answer = get_json(f"{self.url}/ready", timeout=10)
            if answer[0] == 200:
                return answer[1]
            if time.monotonic() >= deadline:
                raise TimeoutError(self.failure(f"{self.url}/ready did not answer 200 within {seconds} s; "
                                                f"its last answer: {answer}"))
            time.sleep(1)
        raise RuntimeError(self.failure("gunicorn exited before /ready answered 200"))

    def wait_loaded(self, workers: int, seconds: float) -> set[int]:
        """Until ``workers`` live workers have loaded the model; their pids."""
        def ready() -> set[int]:
            loaded = loaded_workers(self.url) & set(self.workers())
            return loaded if len(loaded) >= workers else set()

        loaded = wait_until(ready, seconds, interval=1)
        if not loaded:
            raise TimeoutError(self.failure(f"{workers} worker(s) did not load the model within {seconds} s"))
        return loaded

    def __enter__(self) -> Gunicorn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

