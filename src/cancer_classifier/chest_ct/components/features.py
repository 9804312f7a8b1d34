"""Stage 3: the frozen base's features, computed once per image (and augmented view) and cached.

While VGG16 is frozen its output for an image never changes, so the head trains on these arrays in
seconds instead of paying a full VGG16 pass per image per epoch. DVC keeps this output while only
head settings change: it depends on the data, the base model and the ``features`` params alone.
"""

import time
from pathlib import Path

import keras
import numpy as np

from cancer_classifier.chest_ct.components.dataset import dataset_info, split_files
from cancer_classifier.chest_ct.components.prepare_base_model import check_weights, load_base_info
from cancer_classifier.chest_ct.modeling import base_classifier, image_batches, weights_fingerprint
from cancer_classifier.chest_ct.scoring import Scorer, resolve_variant
from cancer_classifier.core.errors import StageInputError
from cancer_classifier.core.io import atomic_directory, save_json
from cancer_classifier.core.logging import logger
from cancer_classifier.entity import AugmentationConfig, FeaturesConfig

FEATURE_FILE = "features.npz"


def augmenter(config: AugmentationConfig, seed: int) -> keras.Sequential:
    """Random flips, rotations, zoom and contrast, active only when called with training=True."""
    steps = []
    if config.flip:
        steps.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if config.rotation:
        steps.append(keras.layers.RandomRotation(config.rotation, fill_mode="constant", seed=seed))
    if config.zoom:
        steps.append(keras.layers.RandomZoom(config.zoom, fill_mode="constant", seed=seed))
    if config.contrast:
        steps.append(keras.layers.RandomContrast(config.contrast, value_range=(0, 255), seed=seed))
    return keras.Sequential(steps, name="augmentation")


def extract_features(
    scorer: Scorer, paths: list[str], batch_size: int, views: int = 1, augment: keras.Sequential | None = None
) -> np.ndarray:
    """Pooled base features of every image: view 0 as is, then ``views - 1`` augmented views, stacked."""
    batches = image_batches(paths, scorer.harmonise, batch_size, scorer.overlaps_decoding)
    stacked = []
    for view in range(views):
        images = batches if view == 0 else batches.map(lambda x: augment(x, training=True))
        stacked.append(scorer.score_batches(images, len(paths), f"VGG16 features, view {view + 1} of {views}")[0])
    return np.concatenate(stacked)


def load_features(features_dir: Path) -> dict[str, np.ndarray]:
    path = Path(features_dir) / FEATURE_FILE
    if not path.is_file():
        raise StageInputError(f"{path} not found: run the features stage first (dvc repro)")
    with np.load(path) as cached:
        return dict(cached)


class Features:
    def __init__(self, config: FeaturesConfig) -> None:
        self.config = config

    def run(self) -> Path:
        config = self.config
        classes = dataset_info(config.data_dir)["classes"]
        info = load_base_info(config.base_model_dir)
        check_weights(info, config.weights)
        model = base_classifier(info, config.weights, len(classes))
        keras.utils.set_random_seed(config.seed)
        variant = resolve_variant(config.engine, config.precision)
        scorer = Scorer(model, variant)
        (train, y_train), (val, y_val) = (split_files(config.data_dir, split) for split in ("train", "val"))
        started = time.perf_counter()
        augment = augmenter(config.augmentation, config.seed)
        arrays = {
            "train": extract_features(scorer, train, config.batch_size, config.views, augment),
            "train_labels": np.tile(y_train, config.views),
            "val": extract_features(scorer, val, config.batch_size),
            "val_labels": y_val,
        }
        seconds = time.perf_counter() - started
        with atomic_directory(config.root_dir) as out:
            np.savez(out / FEATURE_FILE, **arrays)
            save_json(out / "features_info.json", {
                "train_images": len(train),
                "val_images": len(val),
                "views": config.views,
                "precision": variant.precision,
                "variant": str(variant),
                "base_sha256": weights_fingerprint(model.get_layer("vgg16")),  # training builds the same base
                "forward_passes": len(train) * config.views + len(val),
                "seconds": round(seconds, 1),
            })
        logger.info("features of %d images in %.0f s (%s)", len(train) + len(val), seconds, variant)
        return config.root_dir / FEATURE_FILE
