"""The one path from pixels to probabilities, used by the features stage, training, evaluation,
the register stage's champion comparison, the app and Grad-CAM:

    raw RGB pixels -> harmonise (float32) -> VGG16 preprocessing and base (float32 or bfloat16)
    -> pooled features (float32; the out-of-distribution check reads them) -> head (float32)
    -> probabilities (float32)

Only the convolutional base may compute in bfloat16; whether that is harmless for a given model is
measured by the evaluation stage, which scores the test split in both precisions.
"""

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from cancer_classifier.components.dataset import image_batches
from cancer_classifier.modeling import PRECISIONS, base_in_precision, harmonise_layer
from cancer_classifier.utils.limits import limit_size


class Scorer:
    """A saved classifier, scoring in one precision: ``float32`` or ``mixed_bfloat16`` (base only)."""

    def __init__(self, model: keras.Model, precision: str = "float32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.model, self.precision = model, precision
        self.harmonise = harmonise_layer(model)
        self.preprocess = model.get_layer("vgg16_preprocess")
        self.base = base_in_precision(model, precision)
        self.pooling = model.get_layer("pooling")  # a float32 layer: bfloat16 activations are cast up first
        self.head = model.get_layer("head")
        inputs = keras.Input((None, None, 3), name="harmonised")
        features = self.pooling(self.base(self.preprocess(inputs), training=False))
        self.network = keras.Model(inputs, [features, self.head(features)], name=f"scorer_{precision}")

    @property
    def n_classes(self) -> int:
        return int(self.head.output_shape[-1])

    def score(self, harmonised: np.ndarray | tf.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Pooled features (n, 512) and probabilities (n, classes) of a batch of harmonised images."""
        features, probabilities = self.network(harmonised, training=False)
        return keras.ops.convert_to_numpy(features), keras.ops.convert_to_numpy(probabilities)

    def score_batches(self, batches: tf.data.Dataset, total: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        """Every batch of a dataset of harmonised images, concatenated, with a progress bar."""
        features, probabilities = [], []
        with tqdm(total=total, desc=f"{what} ({self.precision})", unit="img", mininterval=2) as bar:
            for batch in batches:
                f, p = self.score(batch)
                features.append(f)
                probabilities.append(p)
                bar.update(len(p))
        if not probabilities:
            features_size = int(self.pooling.output.shape[-1])
            return np.zeros((0, features_size), "float32"), np.zeros((0, self.n_classes), "float32")
        return np.concatenate(features), np.concatenate(probabilities)

    def score_files(self, paths: list[str], batch_size: int = 16, what: str = "scoring") -> tuple[np.ndarray, ...]:
        """Ingested image files (decoded and harmonised in parallel), in order."""
        return self.score_batches(image_batches(paths, self.harmonise, batch_size), len(paths), what)

    def harmonised(self, image: np.ndarray) -> tf.Tensor:
        """One raw upload (H, W, 3), size-limited and harmonised exactly as the files are."""
        return self.harmonise.one(tf.convert_to_tensor(limit_size(image), dtype="float32"))

    def score_images(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw uploads of any sizes: harmonised one by one, then one forward pass for all."""
        return self.score(tf.stack([self.harmonised(image) for image in images]))
