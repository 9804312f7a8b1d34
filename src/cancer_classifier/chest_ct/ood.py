"""Out-of-distribution score, shared by training (which fits it) and serving (which applies it).

An image is scored by the Mahalanobis distance of its pooled VGG16 features from those of the
training images, within their leading principal components. With a few hundred images and 512
features a full covariance is too noisy (shrunk, it let blank images pass as CT); the principal
subspace keeps what the training images share. The threshold is a quantile of the distances of
the validation images, which the reference never saw: above it, an input is unlike the training data.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

REFERENCE_FILE = "ood_reference.npz"


@dataclass(frozen=True)
class OODReference:
    mean: np.ndarray  # (features,)
    components: np.ndarray  # (k, features): principal axes of the training features
    variance: np.ndarray  # (k,): training variance along each axis
    threshold: float

    def distances(self, features: np.ndarray) -> np.ndarray:
        projected = (np.atleast_2d(features) - self.mean) @ self.components.T
        return np.sqrt((projected**2 / self.variance).sum(axis=1))

    def in_distribution(self, features: np.ndarray) -> np.ndarray:
        return self.distances(features) <= self.threshold

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, components=self.components, variance=self.variance, threshold=self.threshold)

    @classmethod
    def load(cls, path: Path) -> "OODReference":
        with np.load(path) as saved:
            return cls(saved["mean"], saved["components"], saved["variance"], float(saved["threshold"]))


def fit_reference(
    train_features: np.ndarray, val_features: np.ndarray, components: int, quantile: float
) -> OODReference:
    from sklearn.decomposition import PCA  # only training fits; serving just applies

    pca = PCA(min(components, len(train_features) - 1)).fit(train_features.astype(np.float64))
    unbounded = OODReference(pca.mean_, pca.components_, pca.explained_variance_, float("inf"))
    return OODReference(
        pca.mean_,
        pca.components_,
        pca.explained_variance_,
        float(np.quantile(unbounded.distances(val_features), quantile)),
    )
