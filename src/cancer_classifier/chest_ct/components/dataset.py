"""Read the ingestion stage's outputs: the manifest, the class list and batches of images."""

import csv
from pathlib import Path

import numpy as np

from cancer_classifier.core.errors import StageInputError
from cancer_classifier.core.io import load_json


def data_report(data_dir: Path) -> dict:
    """Ingestion's data_report.json: what was kept, removed and rejected, and the dataset's identity."""
    report = Path(data_dir) / "data_report.json"
    if not report.is_file():
        raise StageInputError(f"{report} not found: run the data_ingestion stage first (dvc repro)")
    return load_json(report)


def dataset_info(data_dir: Path) -> dict:
    """``{"source", "demo", "classes"}`` as ingestion recorded them; class order is the label order."""
    return data_report(data_dir)["dataset"]


def split_rows(data_dir: Path, split: str) -> list[dict[str, str]]:
    """The manifest rows of one split, in manifest order."""
    with open(Path(data_dir) / "manifest.csv", newline="") as file:
        return [row for row in csv.DictReader(file) if row["split"] == split]


def split_files(data_dir: Path, split: str) -> tuple[list[str], np.ndarray]:
    """Image paths of one split and their integer labels (index into the dataset's classes)."""
    classes = dataset_info(data_dir)["classes"]
    rows = split_rows(data_dir, split)
    paths = [str(Path(data_dir) / row["file"]) for row in rows]
    return paths, np.array([classes.index(row["label"]) for row in rows], dtype=np.int64)
