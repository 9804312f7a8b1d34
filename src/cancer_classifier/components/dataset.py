"""Read the ingestion stage's outputs: the manifest, the class list and batches of images."""

import csv
from pathlib import Path

import numpy as np
import tensorflow as tf

from cancer_classifier.modeling import Harmonise
from cancer_classifier.utils.common import load_json


def data_report(data_dir: Path) -> dict:
    """Ingestion's data_report.json: what was kept, removed and rejected, and the dataset's identity."""
    report = Path(data_dir) / "data_report.json"
    if not report.is_file():
        raise FileNotFoundError(f"{report} not found: run the data_ingestion stage first (dvc repro)")
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


def image_batches(paths: list[str], harmonise: Harmonise, batch_size: int, overlap: bool = True) -> tf.data.Dataset:
    """Decode, harmonise each image exactly as the model does, and batch; with ``overlap``, in parallel
    threads while the model computes the previous batch, else one batch at a time when asked for.

    Feed the batches to ``scoring.Scorer.score_batches``; order is preserved.
    """

    def load(path: tf.Tensor) -> tf.Tensor:
        return harmonise.one(tf.cast(tf.io.decode_png(tf.io.read_file(path), channels=3), "float32"))

    images = tf.data.Dataset.from_tensor_slices(paths)
    if not overlap:
        return images.map(load).batch(batch_size)
    return images.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size).prefetch(
        tf.data.AUTOTUNE
    )
