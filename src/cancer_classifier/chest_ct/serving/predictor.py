"""The served model: loaded once, warmed up once, then asked for predictions.

Serving imports no training code: it needs only the saved model (which resizes and preprocesses
raw pixels itself) and its metadata, from the pipeline's artifacts or from the MLflow registry.
Beside the model it loads the out-of-distribution reference (``ood_reference.npz``: the training
images' statistics in the model's pooled feature space) and knows where the model card is.
Predictions go through ``scoring.Scorer``, the path the evaluation stage scored, in a variant (engine
and precision of the VGG16 base) the evaluation measured as harmless for this model (TensorFlow
float32 unless another was).
"""

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cancer_classifier.chest_ct.modeling import INPUT_REFERENCE_FILE, MODEL_FILE, intended_use, load_classifier
from cancer_classifier.chest_ct.ood import REFERENCE_FILE, OODReference
from cancer_classifier.chest_ct.scoring import REFERENCE, Scorer, Variant, resolve_variant
from cancer_classifier.chest_ct.serving.gradcam import GradCam, overlay, to_png
from cancer_classifier.core.errors import EngineUnavailable, ModelCardUnavailable, ModelUnavailable
from cancer_classifier.core.io import load_json, sha256_file
from cancer_classifier.core.logging import logger
from cancer_classifier.entity import ServingConfig
from cancer_classifier.serving import metrics
from cancer_classifier.serving.holder import ModelHolder
from cancer_classifier.serving.models import (
    RUN_PIPELINE_HINT,
    Identity,
    ModelInfo,
    registered_champion,
    registration_record,
)

if TYPE_CHECKING:  # MLflow is imported only in registry mode
    pass

MODEL_CARD_FILE = "model_card.json"


class ModelCard:
    """The evaluation stage's model card (JSON and Markdown) for the served model.

    The files are read on each request, so a card that the pipeline writes after the app started is
    served without a restart (a registered model's card sits in its downloaded folder). A card whose
    classes differ from the model's describes another model and is not served.
    """

    def __init__(self, json_path: Path | None = None) -> None:
        self.json_path = json_path
        self.classes: tuple[str, ...] | None = None  # set by the Predictor: the model's classes

    def document(self) -> dict:
        if self.json_path is None:
            raise ModelCardUnavailable("no model card is known for this model")
        if not self.json_path.is_file():
            raise ModelCardUnavailable(
                f"no model card yet ({self.json_path.name} is written by the evaluation stage): run `dvc repro`"
            )
        try:
            document = json.loads(self.json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.exception("unreadable model card %s", self.json_path)
            raise ModelCardUnavailable("the model card could not be read (see the server log)") from None
        if not isinstance(document, dict):
            raise ModelCardUnavailable("the model card is not a JSON object")
        card_classes = document.get("classes")
        if card_classes is not None and not isinstance(card_classes, list):
            raise ModelCardUnavailable("the model card's classes are not a list")
        if self.classes is not None and card_classes is not None and tuple(card_classes) != self.classes:
            raise ModelCardUnavailable(
                "the model card describes a model with other classes than the served one: run `dvc repro`"
            )
        return document

    def markdown(self) -> str:
        self.document()  # same availability and consistency checks (a path is known past this)
        path = self.json_path.with_suffix(".md")
        if not path.is_file():
            raise ModelCardUnavailable(f"the model card has no Markdown version ({path.name}): run `dvc repro`")
        return path.read_text(encoding="utf-8")

    @property
    def available(self) -> bool:
        try:
            self.document()
        except ModelCardUnavailable:
            return False
        return True


def load_ood_reference(path: Path, source: str) -> OODReference | None:
    """The reference, or None (logged) when it is missing or unreadable: predictions go on without it."""
    if not path.is_file():
        logger.warning(
            "%s has no %s (a model trained before the out-of-distribution check): predictions will carry "
            '"in_distribution": null; retrain with `dvc repro` to enable the check',
            source,
            REFERENCE_FILE,
        )
        return None
    try:
        return OODReference.load(path)
    except Exception:
        logger.exception("the out-of-distribution reference %s could not be read; the check is off", path)
        return None


def load_input_reference(path: Path) -> dict | None:
    """The training images' statistics (training stage), or None (logged): drift is then not computed."""
    try:
        return load_json(path)
    except (OSError, ValueError):
        logger.warning("no readable drift reference at %s: drift monitoring is off for this model", path)
        return None


def servable_variants(card: ModelCard, model_path: Path) -> set[Variant]:
    """The evaluation's verdict, only if its card describes this very model file (not a stale one)."""
    if not card.available:
        return set()
    document = card.document()
    if document.get("model_sha256") != sha256_file(model_path):
        logger.warning("the model card describes another model than %s (retrained since?): %s only", model_path,
                       REFERENCE)
        return set()
    # cards written before engines existed list bare precisions (TensorFlow's) under serving_precision
    verdict = document.get("serving_variants") or document.get("serving_precision") or {}
    servable = set()
    for text in verdict.get("servable", []):
        try:
            servable.add(Variant.parse(text))
        except ValueError:  # a variant this version of the app does not know: never served
            logger.warning("the model card admits %r, which this app does not know: ignored", text)
    return servable


def admitted_variants(engine: str, precision: str, servable: set[Variant], model: str) -> list[Variant]:
    """What to try, best first: the requested variant (``auto``: this CPU's best), TensorFlow in its
    precision, its engine in float32, each only if the evaluation measured it harmless for this very
    model; the reference last."""
    wanted = resolve_variant(engine, precision)
    preferred = (wanted, Variant("tensorflow", wanted.precision), Variant(wanted.engine, "float32"))
    admitted = list(dict.fromkeys(v for v in preferred if v in servable and v != REFERENCE)) + [REFERENCE]
    if admitted[0] != wanted:
        logger.warning(
            "%s: %s requested, but the evaluation did not find it harmless for this model (servable: %s); serving %s",
            model, wanted, ", ".join(sorted(map(str, servable))) or "not recorded", admitted[0],
        )
    return admitted


class Predictor:
    def __init__(
        self,
        model,
        info: ModelInfo,
        ood: OODReference | None = None,
        card: ModelCard | None = None,
        variant: Variant = REFERENCE,
    ) -> None:
        self.scorer = Scorer(model, variant)
        self.info = replace(info, precision=variant.precision, engine=variant.engine)
        self._gradcam: GradCam | None = None
        self.load_seconds: float | None = None
        self.card = card or ModelCard()
        self.input_reference: dict | None = None  # the training images' statistics, for drift monitoring
        self.card.classes = info.classes
        if self.scorer.n_classes != len(info.classes):
            raise ModelUnavailable(
                f"the model has {self.scorer.n_classes} outputs but its metadata names {len(info.classes)} classes"
            )
        self.ood = self._checked(ood)
        self.scorer.score_images([np.zeros((32, 32, 3), dtype=np.uint8)])  # the first call builds the graph

    def _checked(self, ood: OODReference | None) -> OODReference | None:
        """The OOD reference if it describes this model's pooled features, else None (logged)."""
        features = int(self.scorer.pooling.output.shape[-1])
        if ood is not None and int(np.shape(ood.mean)[-1]) != features:
            logger.warning(
                "the out-of-distribution reference has %d features but the model %d: the check is off",
                np.shape(ood.mean)[-1],
                features,
            )
            return None
        return ood

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: ServingConfig) -> "Predictor":
        started = time.perf_counter()
        predictor = cls._from_registry(config) if config.use_registry else cls._from_directory(config)
        predictor.load_seconds = time.perf_counter() - started
        logger.info(
            "serving %s version %s from %s, loaded in %.1f s",
            predictor.info.name,
            predictor.info.version,
            predictor.info.source,
            predictor.load_seconds,
        )
        return predictor

    @classmethod
    def _from_directory(cls, config: ServingConfig) -> "Predictor":
        model_path = config.model_dir / MODEL_FILE
        name, version, promoted = registration_record(
            config.registration_file, model_path, config.tracking.registered_model
        )
        identity = Identity(name, version, promoted, "local")
        card = ModelCard(config.model_card_file)
        return cls.from_files(config.model_dir, card, identity, config.engine, config.precision)

    @classmethod
    def from_files(
        cls, folder: Path, card: ModelCard, identity: "Identity", engine: str, precision: str
    ) -> "Predictor":
        """The model in ``folder`` (the training stage's files; a registered model holds the same), in the
        requested variant where the evaluation admitted it."""
        model_path, metadata_path = folder / MODEL_FILE, folder / "model_metadata.json"
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
            logger.exception("loading the model from %s failed", folder)
            raise ModelUnavailable(f"the model could not be loaded (see the server log): {RUN_PIPELINE_HINT}") from None
        info = ModelInfo(
            name=identity.name,
            version=identity.version,
            demo=demo,
            intended_use=metadata.get("intended_use") or intended_use(demo),
            classes=classes,
            source=identity.source,
            promoted=identity.promoted,
        )
        ood = load_ood_reference(folder / REFERENCE_FILE, f"the model in {folder.name}")
        servable = servable_variants(card, model_path)
        for variant in admitted_variants(engine, precision, servable, f"{identity.name} version {identity.version}"):
            try:
                predictor = cls(model, info, ood, card, variant)
                break
            except EngineUnavailable as reason:  # the reference, last, always computes
                logger.warning("%s cannot be served here (%s): trying the next admitted variant", variant, reason)
        predictor.input_reference = load_input_reference(folder / INPUT_REFERENCE_FILE)
        return predictor

    @classmethod
    def _from_registry(cls, config: ServingConfig) -> "Predictor":
        """The champion's files, downloaded once into a folder kept for the process's life."""
        from cancer_classifier.core.registration import REGISTERED_FILES  # MLflow: registry mode only

        tracking = config.tracking
        downloaded = registered_champion(tracking)
        files = downloaded.path / REGISTERED_FILES
        try:
            if not (files / MODEL_FILE).is_file():
                raise ModelUnavailable(
                    f"{tracking.registered_model} version {downloaded.version} was registered in an older, pickled "
                    "format that this app never loads: register the model again with `dvc repro -f -s register` "
                    "(a version in the current format replaces it as champion)"
                )
            identity = Identity(tracking.registered_model, downloaded.version, True, "registry")
            card = ModelCard(files / MODEL_CARD_FILE)
            return cls.from_files(files, card, identity, config.engine, config.precision)
        except BaseException:
            downloaded.discard()  # the app looks again later: one copy at a time
            raise

    # -- predicting ------------------------------------------------------------------------

    @property
    def gradcam(self) -> GradCam:
        if self._gradcam is None:
            self._gradcam = GradCam(self.scorer)
        return self._gradcam

    def ood_check(self, features: np.ndarray) -> tuple[bool | None, float | None]:
        """(in distribution?, distance / threshold): > 1 means unlike the training images; None without a reference."""
        if self.ood is None:
            return None, None
        distance = float(self.ood.distances(features.astype(np.float64))[0])
        inside = distance <= self.ood.threshold  # as OODReference.in_distribution, without a second pass
        return inside, round(distance / max(self.ood.threshold, 1e-12), 3)

    def result(self, probabilities: np.ndarray, features: np.ndarray) -> dict:
        in_distribution, ood_score = self.ood_check(features)
        return {
            "label": self.info.classes[int(np.argmax(probabilities))],
            "probabilities": {name: float(p) for name, p in zip(self.info.classes, probabilities, strict=True)},
            "in_distribution": in_distribution,
            "ood_score": ood_score,
            "precision": self.scorer.variant.precision,
            "engine": self.scorer.variant.engine,
        }

    def predict(self, image: np.ndarray, explain: bool = False) -> dict:
        """``{"label", "probabilities": {class: p}, "in_distribution", "ood_score", "precision", "engine"}``,
        plus ``"gradcam_png"`` (bytes) when explain is set."""
        if not explain:
            return self.predict_many([image])[0]
        if self.scorer.variant.engine == "tensorflow":  # one pass gives the heatmap and the served answer
            heatmap, probabilities, features, view = self.gradcam.explain(image)
            answer = self.result(probabilities, features)
        else:  # the heatmap is TensorFlow's, for the label the served engine gives
            answer = self.predict_many([image])[0]
            heatmap, _, _, view = self.gradcam.explain(image, self.info.classes.index(answer["label"]))
        return answer | {"gradcam_png": to_png(overlay(view, heatmap))}

    def predict_many(self, images: list[np.ndarray]) -> list[dict]:
        """One result per image, from a single forward pass over all of them."""
        features, probabilities = self.scorer.score_images(images)
        return [self.result(p, f) for p, f in zip(probabilities, features)]


class PredictorHolder(ModelHolder):
    """The chest-CT predictor, or why there is none; each attempt sets the model gauges."""

    def _create(self) -> Predictor:
        return Predictor.from_config(self.config)

    def _loaded(self, ok: bool) -> None:
        metrics.MODEL_LOADED.set(int(ok))
        if ok:
            metrics.MODEL_LOAD_SECONDS.set(self.predictor.load_seconds or 0)
