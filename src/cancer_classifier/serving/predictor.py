"""The served model: loaded once, warmed up once, then asked for predictions.

Serving imports no training code: it needs only the saved model (which resizes and preprocesses
raw pixels itself) and its metadata, from the pipeline's artifacts or from the MLflow registry.
"""

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from cancer_classifier.entity import ServingConfig
from cancer_classifier.modeling import intended_use, load_classifier
from cancer_classifier.serving.gradcam import GradCam, overlay, to_png
from cancer_classifier.utils.common import load_json
from cancer_classifier.utils.logging import logger

# Larger uploads are downscaled (antialiased) before the model, bounding memory per request;
# the model resizes to its own input size anyway. CT slices (512 x 512) are never touched.
MAX_SIDE = 2048
RUN_PIPELINE_HINT = "run `dvc repro` in the project folder to train and register one"


class ModelUnavailable(Exception):
    """No model can be served; the message says why and what to do."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    demo: bool
    intended_use: str
    classes: tuple[str, ...]
    source: str  # "local" (pipeline artifacts) or "registry" (models:/name@alias)
    promoted: bool | None = None  # whether the register stage made this version the champion

    def public(self) -> dict:
        return {"name": self.name, "version": self.version, "demo": self.demo}

    def as_dict(self) -> dict:
        return asdict(self) | {"classes": list(self.classes)}


def limit_size(image: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    height, width = image.shape[:2]
    if max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


class Predictor:
    def __init__(self, model, info: ModelInfo) -> None:
        self.model = model
        self.info = info
        self._gradcam: GradCam | None = None
        self.load_seconds: float | None = None
        output = int(model.output_shape[-1])
        if output != len(info.classes):
            raise ModelUnavailable(f"the model has {output} outputs but its metadata names {len(info.classes)} classes")
        self.probabilities(np.zeros((32, 32, 3), dtype=np.uint8))  # warm-up: first call builds the graph

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: ServingConfig) -> "Predictor":
        started = time.perf_counter()
        predictor = cls._from_registry(config) if config.use_registry else cls._from_directory(config)
        predictor.load_seconds = time.perf_counter() - started
        logger.info(
            "serving %s version %s from %s, loaded in %.1f s",
            predictor.info.name, predictor.info.version, predictor.info.source, predictor.load_seconds,
        )
        return predictor

    @classmethod
    def _from_directory(cls, config: ServingConfig) -> "Predictor":
        model_path, metadata_path = config.model_dir / "model.keras", config.model_dir / "model_metadata.json"
        if not model_path.is_file():
            logger.warning("no model at %s", model_path)
            raise ModelUnavailable(f"no trained model yet: {RUN_PIPELINE_HINT}")
        if not metadata_path.is_file():
            logger.warning("no model metadata at %s", metadata_path)
            raise ModelUnavailable(f"the model has no model_metadata.json: {RUN_PIPELINE_HINT}")
        try:
            metadata = load_json(metadata_path)
            classes, demo = tuple(metadata["classes"]), bool(metadata["demo"])
            model = load_classifier(model_path)
        except Exception:
            logger.exception("loading the model from %s failed", config.model_dir)
            raise ModelUnavailable(f"the model could not be loaded (see the server log): {RUN_PIPELINE_HINT}") from None
        name, version, promoted = cls._registration(
            config.registration_file, model_path, config.tracking.registered_model
        )
        info = ModelInfo(
            name=name,
            version=version,
            demo=demo,
            intended_use=metadata.get("intended_use") or intended_use(demo),
            classes=classes,
            source="local",
            promoted=promoted,
        )
        return cls(model, info)

    @staticmethod
    def _registration(path: Path, model_path: Path, default_name: str) -> tuple[str, str, bool | None]:
        """Name and version from the register stage's record, if it describes this very model file."""
        if not path.is_file():
            return default_name, "unregistered", None
        try:
            record = load_json(path)
            if path.stat().st_mtime < model_path.stat().st_mtime:  # retrained since it was registered
                return record["registered_model"], "unregistered", None
            return record["registered_model"], str(record["version"]), record.get("promoted")
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("ignoring unreadable registration record %s", path)
            return default_name, "unregistered", None

    @classmethod
    def _from_registry(cls, config: ServingConfig) -> "Predictor":
        import mlflow
        import mlflow.tensorflow
        from mlflow.tracking import MlflowClient

        tracking = config.tracking
        uri = f"models:/{tracking.registered_model}@{tracking.alias}"
        try:
            mlflow.set_tracking_uri(tracking.tracking_uri)
            version = MlflowClient().get_model_version_by_alias(tracking.registered_model, tracking.alias)
            model = mlflow.tensorflow.load_model(uri)
            metadata = mlflow.models.get_model_info(uri).metadata or {}
            classes = tuple(metadata["classes"])
        except Exception:
            logger.exception("loading %s from the MLflow registry failed", uri)
            raise ModelUnavailable(
                f"{uri} could not be loaded from the MLflow registry (see the server log): {RUN_PIPELINE_HINT}"
            ) from None
        demo = str(version.tags.get("demo", metadata.get("demo", True))).lower() == "true"
        info = ModelInfo(
            name=tracking.registered_model,
            version=str(version.version),
            demo=demo,
            intended_use=version.tags.get("intended_use") or intended_use(demo),
            classes=classes,
            source="registry",
            promoted=True,
        )
        return cls(model, info)

    # -- predicting ------------------------------------------------------------------------

    @property
    def gradcam(self) -> GradCam:
        if self._gradcam is None:
            self._gradcam = GradCam(self.model)
        return self._gradcam

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        batch = image[None].astype("float32")  # raw 0..255 RGB; the model resizes and preprocesses
        return keras.ops.convert_to_numpy(self.model(batch, training=False))[0]

    def predict(self, image: np.ndarray, explain: bool = False) -> dict:
        """``{"label", "probabilities": {class: p}}`` plus ``"gradcam_png"`` (bytes) when explain is set."""
        image = limit_size(image)
        if explain:
            heatmap, probabilities = self.gradcam(image)
        else:
            probabilities = self.probabilities(image)
        index = int(np.argmax(probabilities))
        result = {
            "label": self.info.classes[index],
            "probabilities": {name: float(p) for name, p in zip(self.info.classes, probabilities, strict=True)},
        }
        if explain:
            result["gradcam_png"] = to_png(overlay(image, heatmap))
        return result
