"""What the app serves, over HTTP from a real gunicorn, against what the evaluation stage reported
for the same files (``predictions.csv``): the project's promise that its numbers describe the model
people use. Shared by the tests of the tiny model, the default demo and the real four-class model."""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cancer_classifier.chest_ct.scoring import REFERENCE, VARIANTS, Variant
from cancer_classifier.chest_ct.serving.predictor import admitted_variants
from tests.support import Gunicorn, predict, serving_copy

# The parity rule: median and largest probability difference, share of equal labels.
MEDIAN_TOLERANCE, MAX_TOLERANCE, SAME_LABEL_RATE = 0.005, 0.05, 0.97


@dataclass(frozen=True)
class Parity:
    variant: str  # what the app says it served: engine/precision
    images: int
    median_difference: float
    max_difference: float
    same_label_rate: float
    ood_agreement: float  # share of images with the same in-distribution flag

    def holds(self) -> bool:
        return (
            self.median_difference <= MEDIAN_TOLERANCE
            and self.max_difference <= MAX_TOLERANCE
            and self.same_label_rate >= SAME_LABEL_RATE
        )


def openvino_computes_bfloat16() -> bool:
    """OpenVINO's own answer (CPUs without AVX-512 have no bfloat16 in OpenVINO, not even emulated), asked
    independently of the Scorer, which refuses that variant there."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


# The variants this machine computes: the evaluation scores exactly these, the app serves only these.
COMPUTABLE = tuple(v for v in VARIANTS if str(v) != "openvino/mixed_bfloat16" or openvino_computes_bfloat16())

# What the serving tests force: every variant, and ``auto`` (whatever this CPU gets). The larger models
# are served in the reference and the variant furthest from it (auto's choice on native-bfloat16 CPUs).
SETTINGS = (*(str(v) for v in VARIANTS), "auto/auto")
REFERENCE_AND_FURTHEST = (str(REFERENCE), "openvino/mixed_bfloat16")


def expected_variant(setting: str, servable: list[str]) -> str:
    """What the serving rule picks for ``setting`` among the variants the evaluation admitted (the rule's
    order is pinned in test_app.py)."""
    engine, precision = setting.split("/")
    return str(admitted_variants(engine, precision, {Variant.parse(v) for v in servable}, "expected")[0])


def serve_artifacts(trained_root: Path, root: Path, setting: str, params: dict) -> Path:
    """A project folder serving ``trained_root``'s model with ``serving.engine/precision`` forced to ``setting``."""
    engine, precision = setting.split("/")
    return serving_copy(trained_root, root, {"serving": {"engine": engine, "precision": precision}}, params)


def evaluated(evaluation_dir: Path, split: str) -> dict[str, dict[str, dict]]:
    """``{variant: {file: row}}`` of the evaluation's predictions for one split."""
    rows: dict[str, dict[str, dict]] = {}
    with open(evaluation_dir / "predictions.csv", newline="") as file:
        for row in csv.DictReader(file):
            if row["split"] == split:
                rows.setdefault(row["variant"], {})[row["file"]] = row
    return rows


def served_parity(project: Path, data_dir: Path, split: str = "test") -> Parity:
    """Every image of ``split`` uploaded once to gunicorn serving ``project``, compared file by file."""
    expected = evaluated(project / "artifacts/evaluation", split)
    files = sorted(next(iter(expected.values())))
    with Gunicorn(project) as server:
        server.wait_ready(300)
        differences, same, ood, variant = [], [], [], None
        for name in files:
            reply = predict(server.url, (name, (data_dir / "images" / name).read_bytes()))
            variant = f"{reply['model']['engine']}/{reply['model']['precision']}"  # what the app says it served
            row = expected[variant][name]
            probabilities = np.array([reply["probabilities"][c] for c in reply["probabilities"]])
            reference = np.array([float(row[f"p_{c}"]) for c in reply["probabilities"]])
            differences.append(np.abs(probabilities - reference).max())
            same.append(reply["label"] == row["predicted"])
            ood.append(str(reply["in_distribution"]) == row["in_distribution"])
    return Parity(variant, len(files), float(np.median(differences)), float(np.max(differences)),
                  float(np.mean(same)), float(np.mean(ood)))
