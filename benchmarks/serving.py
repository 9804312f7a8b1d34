"""The serving benchmark: the trained model in-process in every variant, then over HTTP, and where a request's
time goes.

In-process: every variant of the frozen base (``scoring.VARIANTS``: TensorFlow or OpenVINO, float32 or
mixed_bfloat16) through ``scoring.Scorer`` on decoded 512x512 slices: images/s at batch 1 and 16, p50 latency
at batch 1, and the speed-up over TensorFlow at the same precision. HTTP: a real gunicorn (``tests.support.Gunicorn``,
1 worker) on loopback; the variant it serves is read from its /predict reply. One 512x512 PNG per request, one
request at a time: p50/p99, and the HTTP p50 over the in-process batch-1 p50 of the served variant, measured in
alternating rounds; then the app's Server-Timing split of one request, and the worker's peak RSS (VmHWM).
``benchmarks.benchmark`` runs this after the training benchmark, on the model it trained.
"""

from __future__ import annotations

import contextlib
import csv
import io
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tests.support import Gunicorn, multipart, post, predict
from tqdm import tqdm

from benchmarks.harness import (
    BATCH,
    NO_TARGET,
    TARGETS,
    Budget,
    StepFailed,
    child_env,
    fmt,
    gflops_per_s,
    target,
)
from benchmarks.load_test import loopback_only, send
from benchmarks.soak import percentiles

if TYPE_CHECKING:  # TensorFlow loads only where a step needs it
    import keras

SERVED_SIDE = 512  # CT slices are 512 x 512: every in-process and HTTP input has that size
ROUNDS = 5  # alternating rounds of in-process and HTTP work per batch size


# -- in-process --------------------------------------------------------------------------------


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


# -- over HTTP ---------------------------------------------------------------------------------


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


@contextlib.contextmanager
def gunicorn(project: Path, log: Path) -> Iterator[Gunicorn]:
    """gunicorn as in production (``tests.support.Gunicorn``), one worker, on a free loopback port, once
    /ready is 200."""
    env = child_env()  # only what it adds: Gunicorn leaves MLFLOW_* out and sets HOST, PORT, workers
    env = {key: env[key] for key in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}
    server = Gunicorn(project, workers=1, env=env, log=log)
    try:
        try:
            server.start(300)
            server.wait_ready(300)
        except (RuntimeError, TimeoutError) as error:  # the message ends with the end of its log
            raise StepFailed(str(error)) from None
        loopback_only(server.url)
        yield server
    finally:
        server.stop()


def worker_peak_rss_mb(server: Gunicorn) -> float | None:
    """The peak resident set (VmHWM) of gunicorn's worker, the master's child process."""
    peaks = []
    with contextlib.suppress(OSError):
        for worker in server.workers():
            for line in Path(f"/proc/{worker}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)  # kB
        return max(peaks, default=None)
    return None


def predict_reply(url: str, files: list[bytes]) -> dict:
    """/predict's JSON reply to one request carrying ``files``; raises StepFailed on an error."""
    try:
        return predict(url, [(f"slice{i}.png", data) for i, data in enumerate(files)])
    except RuntimeError as error:
        raise StepFailed(str(error)) from None


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
        reply = post(f"{url}/predict", body, content_type, 300)
        if reply.status != 200:
            raise StepFailed(f"/predict answered {reply.status}: {reply.body[:500]!r}")
        parts.setdefault("client", []).append(1000 * reply.seconds)
        for item in filter(None, reply.headers.get("Server-Timing", "").split(", ")):
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
    http_p50, _, http_p99 = percentiles(ok)
    inprocess_p50 = statistics.median(inprocess) * 1000
    return Paired(
        images_per_request=len(files), requests=len(results), errors=len(results) - len(ok),
        http_images_per_s=len(ok) * len(files) / sum(r[0] for r in results), http_p50_ms=http_p50,
        http_p99_ms=http_p99, inprocess_calls=len(inprocess),
        inprocess_images_per_s=len(inprocess) * len(images) / sum(inprocess), inprocess_p50_ms=inprocess_p50,
        http_over_inprocess=http_p50 / inprocess_p50,
    )


# -- the run -----------------------------------------------------------------------------------


def run(project: Path, data_dir: Path, logs: Path, budget: Budget) -> dict:
    """Every variant in-process; then gunicorn: the variant it serves, HTTP against in-process in that
    variant, and the worker's peak memory. Also the compute floor (VGG16 FLOPs per image)."""
    from cancer_classifier.chest_ct.modeling import harmonise_layer, load_classifier

    images = sample_images(data_dir, BATCH)
    model = load_classifier(project / "artifacts/training/model.keras")
    image_size = harmonise_layer(model).image_size
    flops = vgg16_flops(model.get_layer("vgg16"), image_size)
    variants, scorers = measure_variants(model, images, flops, budget)
    files = [png(image) for image in images]
    http: dict = {"png_kb": round(len(files[0]) / 1024), "batch_supported": False, "single": None, "batch": None,
                  "split": {}}
    with gunicorn(project, logs / "gunicorn.log") as server:
        url = server.url
        engine = served_variant(predict_reply(url, files[:1]))
        scorer = scorers[f"{engine['name']}/{engine['precision']}"]
        for name in [name for name in scorers if scorers[name] is not scorer]:
            del scorers[name]  # only the served variant is measured further
        http["single"] = paired(scorer, url, images[:1], files[:1], budget.single_requests, budget)
        http["split"] = server_split(url, files[:1], max(5, budget.single_requests // 4))
        http["batch_supported"] = batch_supported(url, files)
        if http["batch_supported"]:
            http["batch"] = paired(scorer, url, images[:BATCH], files[:BATCH], budget.batch_requests, budget)
        peak_rss_mb = worker_peak_rss_mb(server)  # after the HTTP runs, before gunicorn stops
    return {"image_size": image_size, "flops_per_image": flops, "variants": variants, "engine": engine,
            "http": http, "serving_peak_rss_mb": peak_rss_mb}


# -- figures and verdicts ----------------------------------------------------------------------


def figures(inference: dict) -> dict:
    engine, single = inference["engine"], inference["http"]["single"]
    served = inference["variants"][f"{engine['name']}/{engine['precision']}"]
    return {
        "http_over_inprocess": single.http_over_inprocess,
        "p50_ms": single.http_p50_ms,
        "engine": engine,
        "engine_speedup": served["batch1_speedup_over_tensorflow"],
    }


def targets(figures: dict, native_bf16: bool) -> dict:
    """The serving targets' verdicts: targets only on CPUs with native bfloat16."""
    verdicts = {}
    for name, sign, met in (
        ("engine_speedup", ">=", lambda x: x >= TARGETS["engine_speedup"]),
        ("p50_ms", "<=", lambda x: x <= TARGETS["p50_ms"]),
        ("http_over_inprocess", "<=", lambda x: x <= TARGETS["http_over_inprocess"]),
    ):
        value = figures[name]
        verdict = bool(met(value)) if native_bf16 else None  # NaN (every request failed) is missed
        verdicts[f"{name} {sign} {TARGETS[name]:g}"] = target(verdict, None if native_bf16 else NO_TARGET, value=value)
    return verdicts


def inprocess_gflops(inference: dict) -> dict:
    """GFLOP/s of each variant in-process at batch 16."""
    return {name: row[f"batch{BATCH}_gflops_per_s"] for name, row in inference["variants"].items()}


def http_json(http: dict) -> dict:
    """results.json's ``http``: the PNG size, batch support, the split and each batch size's figures."""
    return ({key: http[key] for key in ("png_kb", "batch_supported", "split")}
            | {key: asdict(http[key]) if http[key] else None for key in ("single", "batch")})


# -- report ------------------------------------------------------------------------------------


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


def compute_rows(inference: dict, gflops: dict) -> list[str]:
    return [f"| in-process {name}, batch {BATCH} | {row[f'batch{BATCH}_calls'] * BATCH} | "
            f"{fmt(row[f'batch{BATCH}_calls'] * BATCH / row[f'batch{BATCH}_images_per_s'], 2)} | "
            f"{fmt(gflops[f'inprocess_batch{BATCH}'][name])} |"
            for name, row in inference["variants"].items()]


def sections(inference: dict, figures: dict, native_bf16: bool, budget: Budget) -> list[str]:
    """results.md's in-process and HTTP sections."""
    native = "native" if native_bf16 else "emulated: this CPU has neither avx512_bf16 nor amx_bf16"
    engine, http = inference["engine"], inference["http"]
    return [
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
    ]
