"""Would ONNX Runtime pay as an engine for the frozen base? TensorFlow float32 stays the reference.

    pip install --no-deps --target /tmp/ort-lib onnxruntime==1.32.0 tf2onnx==1.17.0 onnx==1.23.2  # study only
    PYTHONPATH=/tmp/ort-lib python -m benchmarks.onnxruntime_study          # from the repository root

(--no-deps: their requirements are already met by the project's environment, whose numpy, protobuf and
TensorFlow must not be shadowed.) The part OpenVINO converts (``scoring.to_openvino``: VGG16 preprocessing,
base and pooling; pretrained weights, 224 px, average pooling) is converted independently to ONNX by tf2onnx
from the same float32 tf.function, in memory, and run by ONNX Runtime's CPU provider with TensorFlow's
intra-op thread budget (TF_NUM_INTRAOP_THREADS, else every usable core). Its features on harmonised real CT
slices are compared with TensorFlow's. Then TensorFlow, OpenVINO (``scoring.OpenVinoFeatures``) and ONNX Runtime
(graph optimisation EXTENDED and ALL) are timed at batch 1 and 16 in interleaved rounds in this one process, so
other load on the machine hits every engine alike; speed ratios are medians of same-round ratios.
ONNX Runtime would be adopted only if it beats OpenVINO float32 clearly at batch 1 on this CPU.
"""

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cancer_classifier.chest_ct.modeling import build_classifier, cpu_flags, image_batches
from cancer_classifier.chest_ct.scoring import OpenVinoFeatures, Scorer

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CANCER_CLASSIFIER_SHARED", REPO.parent / "shared"))
Engine = Callable[[np.ndarray], np.ndarray]


def base_network(scorer: Scorer) -> tuple[keras.Model, tf.types.experimental.PolymorphicFunction]:
    """What ``to_openvino`` builds and converts: harmonised images -> pooled float32 features."""
    size = scorer.harmonise.image_size
    inputs = keras.Input((size, size, 3), name="harmonised")
    network = keras.Model(inputs, scorer.pooling(scorer.base(scorer.preprocess(inputs), training=False)))
    spec = tf.TensorSpec((None, size, size, 3), tf.float32, name="harmonised")
    return network, tf.function(lambda x: network(x, training=False), input_signature=[spec])


def ort_engine(model_bytes: bytes, level: str, threads: int) -> Engine:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def png_files(folder: Path, count: int) -> list[str]:
    """``count`` PNG files spread evenly over the sorted folder (some files named .png are JPEG)."""
    files = sorted(p for p in folder.rglob("*.png") if p.read_bytes()[:4] == b"\x89PNG")
    return [str(files[i]) for i in np.linspace(0, len(files) - 1, count).astype(int)]


def differences(reference: np.ndarray, got: np.ndarray) -> str:
    error = np.abs(got - reference)
    return (f"max |diff| {error.max():.3g}, relative to max |feature| {error.max() / np.abs(reference).max():.2g}, "
            f"max elementwise relative {(error / np.maximum(np.abs(reference), 1e-3)).max():.2g}")


def timed(engine: Engine, batch: np.ndarray) -> float:
    started = time.perf_counter()
    engine(batch)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "data/chest-ct/train")
    parser.add_argument("--weights", default=str(SHARED / "models/vgg16_notop.weights.h5"))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=32, help="real images for the comparison")
    parser.add_argument("--seconds", type=float, default=300, help="time budget of the interleaved rounds")
    parser.add_argument("--every16", type=int, default=6, help="rounds per batch-16 round")
    args = parser.parse_args()
    import onnxruntime as ort
    import tf2onnx

    flags = cpu_flags()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    threads_env = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
    threads = int(threads_env) if threads_env.isdigit() else len(os.sched_getaffinity(0))
    print(f"CPU: {cpu}, {len(os.sched_getaffinity(0))} usable cores; avx512f {'avx512f' in flags}, "
          f"avx512_bf16 {'avx512_bf16' in flags}, amx_bf16 {'amx_bf16' in flags}; ORT threads {threads}")
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, onnxruntime {ort.__version__}, "
          f"tf2onnx {tf2onnx.__version__}, numpy {np.__version__}")

    model = build_classifier(args.image_size, 2, args.weights, "avg", 64, 0.3, True)  # head unused
    scorer = Scorer(model)
    network, function = base_network(scorer)
    started = time.perf_counter()
    onnx_model, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature)
    convert_seconds = time.perf_counter() - started
    model_bytes = onnx_model.SerializeToString()
    started = time.perf_counter()
    engines: dict[str, Engine] = {"ORT ALL": ort_engine(model_bytes, "ALL", threads)}
    session_seconds = time.perf_counter() - started
    engines["ORT EXTENDED"] = ort_engine(model_bytes, "EXTENDED", threads)
    started = time.perf_counter()
    engines["OpenVINO"] = OpenVinoFeatures(scorer.preprocess, scorer.base, scorer.pooling, args.image_size, "float32")
    openvino_seconds = time.perf_counter() - started
    engines["TensorFlow"] = lambda x: keras.ops.convert_to_numpy(network(x, training=False))  # as Scorer.score
    print(f"tf2onnx conversion {convert_seconds:.1f} s (opset {onnx_model.opset_import[0].version}, "
          f"{len(model_bytes) / 1e6:.0f} MB), ORT ALL session {session_seconds:.1f} s; "
          f"OpenVINO conversion + compilation {openvino_seconds:.1f} s")

    paths = png_files(args.data, args.images)
    images = np.concatenate([b.numpy() for b in image_batches(paths, scorer.harmonise, 16, overlap=False)])
    reference = np.concatenate([engines["TensorFlow"](images[i : i + 16]) for i in range(0, len(images), 16)])
    for name in ("ORT ALL", "ORT EXTENDED", "OpenVINO"):
        got = np.concatenate([engines[name](images[i : i + 16]) for i in range(0, len(images), 16)])
        print(f"{name} vs TensorFlow float32 on {len(images)} real images: {differences(reference, got)}")

    one, sixteen = images[:1], images[:16]
    for engine in engines.values():  # warm-up
        engine(one), engine(sixteen)
    names = list(engines)
    b1: dict[str, list[float]] = {name: [] for name in names}  # one call per engine per round
    b16: dict[str, list[float]] = {name: [] for name in names}  # one call per engine every --every16 rounds
    deadline, rounds = time.monotonic() + args.seconds, 0
    while time.monotonic() < deadline or len(b16["TensorFlow"]) < 2:
        shift = rounds % len(names)  # rotate the order, so none is always first
        for name in names[shift:] + names[:shift]:
            b1[name].append(timed(engines[name], one))
            if rounds % args.every16 == 0:
                b16[name].append(timed(engines[name], sixteen))
        rounds += 1

    def speed(a: str, b: str) -> str:
        """b's time / a's time in the same round (> 1: a is faster), at batch 1 and 16: median (quartiles)."""
        cells = []
        for times in (b1, b16):
            q1, q2, q3 = statistics.quantiles([y / x for x, y in zip(times[a], times[b])], n=4)
            cells.append(f"{q2:.2f}x ({q1:.2f}-{q3:.2f})")
        return " / ".join(cells)

    print(f"\n{rounds} interleaved rounds in {args.seconds:.0f} s (each: one batch-1 call per engine, in rotating "
          f"order; every {args.every16}th also one batch-16 call); {cpu}; {args.image_size} px float32\n")
    print("| engine | batch 1 p50 ms | batch 16 images/s | speed vs TF, b1 / b16: median (quartiles) | vs OpenVINO |")
    print("|---|---|---|---|---|")
    for name in names:
        p50, rate = 1000 * statistics.median(b1[name]), 16 / statistics.median(b16[name])
        print(f"| {name} | {p50:.0f} | {rate:.2f} | {speed(name, 'TensorFlow')} | {speed(name, 'OpenVINO')} |")

if __name__ == "__main__":
    main()
