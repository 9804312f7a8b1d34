"""The promotion gate both tasks share: a challenger becomes the alias only if it beats the champion
on the challenger's own test split, and a demo never displaces a model trained on real data."""

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow

from cancer_classifier.core.errors import StageInputError
from cancer_classifier.core.io import atomic_directory, save_json
from cancer_classifier.core.logging import logger
from cancer_classifier.core.registration import ModelStore, Version
from cancer_classifier.core.tracking import public_uri


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@dataclass(frozen=True)
class Comparison:
    """Champion and challenger scored on the same images of the challenger's test split."""

    champion: float
    challenger: float
    images: int
    note: str = ""  # which images were left out, and why


@dataclass(frozen=True)
class Challenger:
    """A model about to be registered, as the promotion gate sees it."""

    score: float  # its test metric on its own held-out split
    demo: bool
    classes: tuple[str, ...]
    test_images: int


def champion_metadata(champion: Version) -> tuple[bool, tuple[str, ...]]:
    """Whether the champion is a demo, and its classes: from its tags, else its model's metadata."""
    tags = champion.tags
    if "classes" in tags:
        return tags.get("demo", "true").lower() == "true", tuple(json.loads(tags["classes"]))
    metadata = mlflow.models.get_model_info(champion.model_uri).metadata or {}  # registered before the tag
    demo = str(tags.get("demo", metadata.get("demo", True))).lower() == "true"
    return demo, tuple(metadata.get("classes") or ())


def promotion_decision(
    champion: Version | None,
    alias: str,
    metric: str,
    challenger: Challenger,
    compare: Callable[[Version], Comparison],
) -> dict:
    """Whether the challenger should become ``alias``, decided before anything is registered.

    Like is compared with like: ``compare`` scores the champion on the challenger's own test split
    through the same scoring path (without images the champion was trained on). A model trained on
    real data always replaces a demo champion and a demo never displaces a real one; otherwise
    models for other classes never compete.
    """
    if champion is None:
        return {"promote": True, "comparison": "none", "reason": f"no '{alias}' yet: this version becomes it"}
    demo, classes = champion_metadata(champion)
    decision = {"champion_version": champion.version, "champion_demo": demo}
    if demo != challenger.demo:
        return decision | {
            "promote": not challenger.demo,
            "comparison": "demo against real data",
            "reason": f"a demo model never displaces a model trained on real data ({alias} version {champion.version})"
            if challenger.demo
            else f"a model trained on real data replaces the demo {alias} (version {champion.version})",
        }
    if classes != challenger.classes:
        return decision | {
            "promote": False,
            "comparison": "refused: other classes",
            "reason": f"{alias} version {champion.version} has classes {list(classes)}, this model "
            f"{list(challenger.classes)}: models for other classes never compete; give this class set its own "
            "registered model name (tracking.registered_model in config/config.yaml)",
        }
    scored = compare(champion)
    promote = scored.challenger > scored.champion
    verb = "beats" if promote else "does not beat"
    return decision | {
        "promote": promote,
        "comparison": f"both scored on this model's test split ({scored.images} images, same scoring path)"
        + (f"; {scored.note}" if scored.note else ""),
        "champion_score": scored.champion,
        "challenger_score": scored.challenger,
        "reason": f"{metric} {scored.challenger:.4f} {verb} {alias} version {champion.version} "
        f"({scored.champion:.4f}) on this model's own test split",
    }


def champion_file(champion: Version, pattern: str, into: Path) -> Path | None:
    """The champion's model file matching ``pattern``, downloaded into ``into``; None if its model has no
    such file (registered in an older, pickled format, which is never loaded)."""
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=champion.model_uri, dst_path=str(into)))
    if not (folder / "MLmodel").is_file():
        raise StageInputError(
            f"the champion (version {champion.version}) has no model files at {champion.model_uri}: "
            "check that the artifact store is reachable and complete"
        )
    return next(iter(sorted(folder.rglob(pattern))), None)


def unloadable(champion: Version, images: int) -> Comparison:
    """A champion this project refuses to load (pickled): any model in the current format replaces it."""
    note = f"version {champion.version} is in an older, pickled format that is never loaded: this version replaces it"
    return Comparison(float("-inf"), float("inf"), images, note)


def save_record(
    root: Path, store: ModelStore, version: Version, decision: dict, metric: str, score: float, model_sha256: str
) -> dict:
    """registration.json: which version of what, where, and the gate's decision (serving and CI read it)."""
    record = {
        "registered_model": store.name,
        "version": version.version,
        "model_sha256": model_sha256,  # the file this record describes (serving checks it)
        "model_uri": version.model_uri,
        "model_store": store.server.model_store,
        "tracking_uri": public_uri(store.server.uri),
        "promoted": decision["promote"],
        "alias": store.alias,
        "metric": metric,
        "score": score,
        **decision,
    }
    with atomic_directory(root) as out:
        save_json(out / "registration.json", record)
    logger.info(
        "registered %s version %s in %s: %s", store.name, version.version, store.server.model_store, decision["reason"]
    )
    return record
