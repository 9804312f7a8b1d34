"""What the app knows about a served model of any task: its identity, and where it is found (the
register stage's record beside local artifacts, or the registry's champion)."""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cancer_classifier.core.errors import ModelUnavailable, TrackingError
from cancer_classifier.core.io import load_json, sha256_file
from cancer_classifier.core.logging import logger
from cancer_classifier.entity import TrackingConfig

if TYPE_CHECKING:  # MLflow is imported only in registry mode
    from cancer_classifier.core.registration import Downloaded

RUN_PIPELINE_HINT = "run `dvc repro` in the project folder to train and register one"

@dataclass(frozen=True)
class Identity:
    """Which model a folder of files is: its registered name and version, and where it came from."""

    name: str
    version: str
    promoted: bool | None
    source: str  # "local" (pipeline artifacts) or "registry"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    demo: bool
    intended_use: str
    classes: tuple[str, ...]
    source: str  # "local" (pipeline artifacts) or "registry" (models:/name@alias)
    promoted: bool | None = None  # whether the register stage made this version the champion
    precision: str | None = None  # what the VGG16 base computes in (set by the Predictor); None for tabular
    engine: str | None = None  # what computes the VGG16 base (set by the Predictor); None for tabular

    def public(self) -> dict:
        return {"name": self.name, "version": self.version, "demo": self.demo, "precision": self.precision,
                "engine": self.engine}

    def as_dict(self) -> dict:
        return asdict(self) | {"classes": list(self.classes)}


def registration_record(path: Path, model_path: Path, default_name: str) -> tuple[str, str, bool | None]:
    """Name, version and promotion from a register stage's record, if it describes this very model file
    (by its sha256; by date for records written before they carried it)."""
    if not path.is_file():
        return default_name, "unregistered", None
    try:
        record = load_json(path)
        if "model_sha256" in record:
            stale = record["model_sha256"] != sha256_file(model_path)
        else:
            stale = path.stat().st_mtime < model_path.stat().st_mtime
        if stale:  # retrained since it was registered
            return record["registered_model"], "unregistered", None
        return record["registered_model"], str(record["version"]), record.get("promoted")
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("ignoring unreadable registration record %s", path)
        return default_name, "unregistered", None


def registered_champion(tracking: TrackingConfig) -> "Downloaded":
    """The champion's folder from the registry (chest CT and tabular tasks), or ModelUnavailable
    with the tracking server's one-line reason."""
    from cancer_classifier.core.registration import download_champion  # MLflow: registry mode only

    try:
        return download_champion(tracking, f"loading models:/{tracking.registered_model}@{tracking.alias}")
    except TrackingError as error:
        logger.error("%s", error)
        raise ModelUnavailable(str(error)) from None
