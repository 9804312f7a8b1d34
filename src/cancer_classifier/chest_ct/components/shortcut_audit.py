"""The shortcut audit: how well do file and image statistics alone, with no anatomy, do the task?

A metadata-only model (size, bytes per pixel, colour, intensity) is trained on the same train
split and scored on the same test split as the image model. If it comes close, the image model's
score says little about pathology: the classes can be told apart by where the images came from.
A second baseline sees only intensity statistics of the model's own input, after harmonisation:
what remains of the source cues once size, framing and colour are gone.
"""

from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cancer_classifier.chest_ct.components.dataset import dataset_info, split_files, split_rows
from cancer_classifier.chest_ct.modeling import Harmonise, image_batches
from cancer_classifier.core.metrics import bootstrap_intervals, headline_metrics

BASELINE_FEATURES = ("width", "height", "bytes_per_pixel", "colour", "mean", "std")
INPUT_PERCENTILES = (5, 25, 50, 75, 95)
INPUT_DESCRIPTION = "the model input's intensity mean, spread, black fraction and percentiles 5-95"


def metadata_features(rows: list[dict[str, str]]) -> np.ndarray:
    def row_features(row: dict[str, str]) -> list[float]:
        width, height = float(row["width"]), float(row["height"])
        return [width, height, float(row["file_bytes"]) / (width * height), float(row["colour"]),
                float(row["mean"]), float(row["std"])]

    return np.array([row_features(row) for row in rows])


def input_features(paths: list[str], harmonise: Harmonise) -> np.ndarray:
    """Intensity statistics of what the model itself sees (after harmonisation): no anatomy either."""
    stats = []
    for batch in image_batches(paths, harmonise, 32):
        gray = batch.numpy()[..., 0].reshape(len(batch), -1)
        stats.append(np.column_stack([
            gray.mean(axis=1), gray.std(axis=1), (gray == 0).mean(axis=1),
            *np.percentile(gray, INPUT_PERCENTILES, axis=1),
        ]))
    return np.concatenate(stats)


def fit_baseline(description: str, train: tuple, test: tuple, n_classes: int, positive: int, resamples: int,
                 seed: int) -> dict:
    """Logistic regression on (features, labels) of the train split, scored on the test split."""
    (x_train, y_train), (x_test, y_test) = train, test
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced"))
    model.fit(x_train, y_train)
    proba = np.zeros((len(x_test), n_classes))
    proba[:, model.classes_] = model.predict_proba(x_test)
    return {
        "model": f"logistic regression on {description}",
        "metrics": headline_metrics(y_test, proba, positive),
        "ci95": bootstrap_intervals(y_test, proba, positive, resamples, seed),
    }


def shortcut_audit(data_dir: Path, harmonise: Harmonise, positive: int, resamples: int, seed: int) -> dict:
    """Two baselines on the image model's own splits: the files' metadata, and the model input's intensities."""
    n_classes = len(dataset_info(data_dir)["classes"])
    train, test = split_files(data_dir, "train"), split_files(data_dir, "test")
    rows = {split: split_rows(data_dir, split) for split in ("train", "test")}
    return {
        "metadata": fit_baseline(
            ", ".join(BASELINE_FEATURES),
            (metadata_features(rows["train"]), train[1]), (metadata_features(rows["test"]), test[1]),
            n_classes, positive, resamples, seed,
        ),
        "model_input": fit_baseline(
            INPUT_DESCRIPTION,
            (input_features(train[0], harmonise), train[1]), (input_features(test[0], harmonise), test[1]),
            n_classes, positive, resamples, seed,
        ),
    }
