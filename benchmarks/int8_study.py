"""Would int8 pay? Post-training quantisation of the frozen base, against the issue's gate.

    pip install nncf==3.4.0 ninja==1.13.0 safetensors==0.7.0   # once: the study only, not the product
    python -m benchmarks.int8_study --project <a folder where `dvc repro` ran on real data>

The base (VGG16 preprocessing, conv layers, pooling), converted to OpenVINO as the product does, is
quantised to int8 by NNCF with a calibration set of harmonised training-split images. The test
split is scored through the model's own float32 head, against TensorFlow float32 (the reference).
int8 would be adopted only if test ROC-AUC moves by at most 0.005 AND labels agree on at least 99%
of test images. Speeds are OpenVINO float32 and int8 side by side in this one process.
"""

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np
import yaml

from cancer_classifier.chest_ct.components.dataset import split_files
from cancer_classifier.chest_ct.modeling import MODEL_FILE, image_batches, load_classifier
from cancer_classifier.chest_ct.scoring import Scorer, to_openvino
from cancer_classifier.core.metrics import headline_metrics

AUC_MARGIN, LABEL_AGREEMENT = 0.005, 0.99


def base_network(scorer: Scorer):
    return to_openvino(scorer.preprocess, scorer.base, scorer.pooling, scorer.harmonise.image_size)


def seconds_per_call(compiled, batch: np.ndarray, calls: int) -> float:
    request = compiled.create_infer_request()
    request.infer([batch])  # warm-up
    started = time.perf_counter()
    for _ in range(calls):
        request.infer([batch])
    return (time.perf_counter() - started) / calls


def main() -> None:
    import nncf
    import openvino as ov

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, required=True, help="folder with artifacts/ from `dvc repro`")
    parser.add_argument("--calibration", type=int, default=96, help="training images for calibration")
    args = parser.parse_args()
    data = args.project / "artifacts/data_ingestion"
    reference = Scorer(load_classifier(args.project / "artifacts/training" / MODEL_FILE))
    classes = json.loads((data / "data_report.json").read_text())["dataset"]["classes"]
    positive = classes.index(yaml.safe_load((args.project / "params.yaml").read_text())["data"]["positive_class"])
    train, _ = split_files(data, "train")
    calibration = [batch.numpy() for batch in image_batches(train[: args.calibration], reference.harmonise, 1)]
    started = time.perf_counter()
    quantised = nncf.quantize(base_network(reference), nncf.Dataset(calibration), subset_size=len(calibration))
    quantise_seconds = time.perf_counter() - started
    core = ov.Core()
    int8 = core.compile_model(quantised, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    f32 = core.compile_model(base_network(reference), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                              "INFERENCE_PRECISION_HINT": "f32"})
    test, y = split_files(data, "test")
    images = np.concatenate([batch.numpy() for batch in image_batches(test, reference.harmonise, 16)])
    _, expected = reference.score(images)
    features = np.concatenate([int8.create_infer_request().infer([images[i : i + 16]])[0]
                               for i in range(0, len(images), 16)])
    got = keras.ops.convert_to_numpy(reference.head(features))
    auc = [headline_metrics(y, p, positive)["roc_auc"] for p in (expected, got)]
    agreement = float((expected.argmax(1) == got.argmax(1)).mean())
    adopt = abs(auc[1] - auc[0]) <= AUC_MARGIN and agreement >= LABEL_AGREEMENT
    print(f"calibration: {len(calibration)} training images, quantised in {quantise_seconds:.0f} s")
    print(f"test: {len(y)} images; ROC-AUC float32 {auc[0]:.4f}, int8 {auc[1]:.4f}; labels agree {agreement:.1%}; "
          f"largest probability difference {np.abs(expected - got).max():.3f}")
    print(f"gate (ROC-AUC within {AUC_MARGIN}, labels >= {LABEL_AGREEMENT:.0%}): {'passed' if adopt else 'FAILED'}")
    print("| OpenVINO | batch 1 ms | batch 16 images/s |\n|---|---|---|")
    for name, compiled in (("float32", f32), ("int8", int8)):
        print(f"| {name} | {1000 * seconds_per_call(compiled, images[:1], 10):.1f} | "
              f"{16 / seconds_per_call(compiled, images[:16], 3):.2f} |")


if __name__ == "__main__":
    main()
