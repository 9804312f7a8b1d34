"""Out-of-distribution score, shared by training (which fits it) and serving (which applies it).

An image is scored by the Mahalanobis distance of its pooled VGG16 features from those of the
training images (mean and shrunk covariance). The threshold is a quantile of the distances of the
validation images, which the reference never saw: above it, an input is unlike the training data.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

REFERENCE_FILE = "ood_reference.npz"


@dataclass(frozen=True)
class OODReference:
    mean: np.ndarray  # (features,)
    precision: np.ndarray  # (features, features): inverse of the shrunk covariance
    threshold: float

    def distances(self, features: np.ndarray) -> np.ndarray:
        centred = np.atleast_2d(features) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", centred, self.precision, centred), 0))

    def in_distribution(self, features: np.ndarray) -> np.ndarray:
        return self.distances(features) <= self.threshold

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, precision=self.precision, threshold=self.threshold)

    @classmethod
    def load(cls, path: Path) -> "OODReference":
        with np.load(path) as saved:
            return cls(saved["mean"], saved["precision"], float(saved["threshold"]))


def fit_reference(train_features: np.ndarray, val_features: np.ndarray, quantile: float) -> OODReference:
    from sklearn.covariance import LedoitWolf  # only training fits; serving just applies

    estimate = LedoitWolf().fit(train_features.astype(np.float64))
    unbounded = OODReference(estimate.location_, estimate.precision_, float("inf"))
    return OODReference(
        estimate.location_, estimate.precision_, float(np.quantile(unbounded.distances(val_features), quantile))
    )
