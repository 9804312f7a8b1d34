"""The shortcut audit: how well do file and image statistics alone, with no anatomy, do the task?

A metadata-only model (size, bytes per pixel, colour, intensity) is trained on the same train
split and scored on the same test split as the image model. If it comes close, the image model's
score says little about pathology: the classes can be told apart by where the images came from.
"""

from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cancer_classifier.components.dataset import dataset_info, split_rows
from cancer_classifier.components.metrics import bootstrap_intervals, headline_metrics

BASELINE_FEATURES = ("width", "height", "bytes_per_pixel", "colour", "mean", "std")


def metadata_features(rows: list[dict[str, str]]) -> np.ndarray:
    def row_features(row: dict[str, str]) -> list[float]:
        width, height = float(row["width"]), float(row["height"])
        return [width, height, float(row["file_bytes"]) / (width * height), float(row["colour"]),
                float(row["mean"]), float(row["std"])]

    return np.array([row_features(row) for row in rows])


def metadata_baseline(data_dir: Path, positive: int, resamples: int, seed: int) -> dict:
    classes = dataset_info(data_dir)["classes"]
    train, test = split_rows(data_dir, "train"), split_rows(data_dir, "test")
    y_train = np.array([classes.index(row["label"]) for row in train])
    y_test = np.array([classes.index(row["label"]) for row in test])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced"))
    model.fit(metadata_features(train), y_train)
    proba = np.zeros((len(test), len(classes)))
    proba[:, model.classes_] = model.predict_proba(metadata_features(test))
    return {
        "model": "logistic regression on " + ", ".join(BASELINE_FEATURES),
        "metrics": headline_metrics(y_test, proba, positive),
        "ci95": bootstrap_intervals(y_test, proba, positive, resamples, seed),
    }
