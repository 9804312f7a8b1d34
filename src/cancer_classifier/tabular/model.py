"""What a saved tabular model is, shared by training and serving: the preprocessing and the
estimator as one scikit-learn Pipeline, saved with the columns it takes and its notices.

The Keras choice is a scikit-learn estimator too (below), so its scaling and encoding travel with it
in the same file. The Pipeline is stored with skops, which loads only the types listed in
``TRUSTED_TYPES`` besides plain scikit-learn ones and never unpickles code: a model file from the
registry or the artifact store cannot run code in the app.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skops.io
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from cancer_classifier.core.io import load_json, save_json
from cancer_classifier.core.logging import logger
from cancer_classifier.core.notices import NOT_FOR_CLINICAL_USE
from cancer_classifier.entity.tabular import ColumnSpec

MODEL_FILE = "model.skops"  # the Pipeline (MLflow's sklearn flavour uses the same name for skops)
METADATA_FILE = "model.json"  # columns, classes and notices
# The only types beyond skops' own trusted set that a model file may hold (each reviewed: data only).
TRUSTED_TYPES = [
    "cancer_classifier.tabular.model.KerasBinaryClassifier",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
]
KIND_NOTICE = {
    "diagnostic": "Diagnostic model: estimates whether the record belongs to the positive class.",
    "prognostic": "Prognostic model: estimates an outcome from the data available at diagnosis; it does not diagnose.",
}


def intended_use(kind: str) -> str:
    """The notice every tabular model carries: in its metadata, its MLflow tags, the page and the API."""
    return f"{KIND_NOTICE[kind]} {NOT_FOR_CLINICAL_USE}"


class KerasBinaryClassifier(ClassifierMixin, BaseEstimator):
    """A small dense network with one sigmoid output, as a scikit-learn classifier (labels 0 and 1).

    Early stopping watches a seeded, stratified ``validation_fraction`` of the data given to ``fit``.
    """

    def __init__(
        self,
        hidden_units: tuple[int, ...] = (16,),
        epochs: int = 200,
        batch_size: int = 32,
        learning_rate: float = 0.001,
        validation_fraction: float = 0.15,
        patience: int = 15,
        seed: int = 42,
    ) -> None:
        self.hidden_units = hidden_units
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.seed = seed

    def _network(self, n_features: int):
        import keras

        layers = [keras.Input((n_features,))]
        layers += [keras.layers.Dense(units, activation="relu") for units in self.hidden_units]
        model = keras.Sequential([*layers, keras.layers.Dense(1, activation="sigmoid")])
        model.compile(optimizer=keras.optimizers.Adam(self.learning_rate), loss="binary_crossentropy")
        return model

    def fit(self, X, y) -> "KerasBinaryClassifier":
        import keras

        keras.utils.set_random_seed(self.seed)
        X, y = np.asarray(X, np.float32), np.asarray(y, np.float32)
        X_fit, X_val, y_fit, y_val = train_test_split(
            X, y, test_size=self.validation_fraction, stratify=y, random_state=self.seed
        )
        self.model_ = self._network(X.shape[1])
        stop = keras.callbacks.EarlyStopping(patience=self.patience, restore_best_weights=True)
        history = self.model_.fit(
            X_fit, y_fit, validation_data=(X_val, y_val), epochs=self.epochs, batch_size=self.batch_size,
            callbacks=[stop], verbose=0,
        )
        losses = history.history["val_loss"]
        best = int(np.argmin(losses))
        logger.info("keras: %d epochs, best validation loss %.4f at epoch %d", len(losses), losses[best], best + 1)
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X) -> np.ndarray:
        positive = self.model_.predict(np.asarray(X, np.float32), verbose=0).reshape(-1).astype(np.float64)
        return np.column_stack([1 - positive, positive])

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)

    def __getstate__(self) -> dict:
        """The fitted network as the bytes of a .keras file: a state skops stores without pickle."""
        state = dict(self.__dict__)
        if "model_" in state:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "network.keras"
                state["model_"].save(path)
                state["model_"] = path.read_bytes()
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state.get("model_"), bytes):
            import keras

            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "network.keras"
                path.write_bytes(state["model_"])
                state = state | {"model_": keras.saving.load_model(path, safe_mode=True)}
        self.__dict__.update(state)


@dataclass(frozen=True)
class TabularModel:
    """A fitted Pipeline (preprocessing + estimator) and what serving needs to know about it."""

    pipeline: Pipeline
    metadata: dict  # task, title, kind, classes, positive_class, columns, model kind, intended_use

    @property
    def columns(self) -> tuple[ColumnSpec, ...]:
        return tuple(ColumnSpec.from_dict(column) for column in self.metadata["columns"])

    @property
    def classes(self) -> list[str]:
        return self.metadata["classes"]

    def predict_proba(self, frame) -> np.ndarray:
        """Probabilities of each class (columns in ``classes`` order) for typed rows."""
        return self.pipeline.predict_proba(frame[[c.name for c in self.columns]])

    def save(self, folder: Path) -> Path:
        path = Path(folder) / MODEL_FILE
        skops.io.dump(self.pipeline, path)
        save_json(Path(folder) / METADATA_FILE, self.metadata)
        return path

    @classmethod
    def load(cls, folder: Path) -> "TabularModel":
        """The model saved in ``folder``; a file holding any other type than the trusted ones is refused."""
        pipeline = skops.io.load(Path(folder) / MODEL_FILE, trusted=TRUSTED_TYPES)
        return cls(pipeline, load_json(Path(folder) / METADATA_FILE))
