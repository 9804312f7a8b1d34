"""The tabular tasks in the web app: a form page per task (``GET /tabular/<task>``) and a JSON API
(``POST /predict/<task>``) taking ``{"features": [[...], ...]}`` (values in the model's column
order) or ``{"records": [{"column": value, ...}, ...]}``.

Every value is checked with the same validator ingestion used (``tabular_schema``); a bad one gets a
400 naming the row and the field. The saved Pipeline does the scaling and encoding itself.
"""

import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from flask import Blueprint, current_app, jsonify, render_template, request

from cancer_classifier.core.errors import ModelUnavailable
from cancer_classifier.core.logging import logger
from cancer_classifier.entity.tabular import ColumnSpec, TabularServingConfig
from cancer_classifier.serving.errors import ApiError, BadRequest, UnsupportedMediaType, clip, json_body, public_text
from cancer_classifier.serving.holder import ModelHolder, add_tasks
from cancer_classifier.serving.models import RUN_PIPELINE_HINT, ModelInfo, registered_champion, registration_record
from cancer_classifier.tabular.model import MODEL_FILE, TabularModel
from cancer_classifier.tabular.schema import table_violations, typed

tabular = Blueprint("tabular", __name__)
PAYLOAD_KEYS = ("features", "records")


class TabularPredictor:
    """One task's saved Pipeline with its identity, loaded once."""

    def __init__(self, model: TabularModel, info: ModelInfo) -> None:
        self.model = model
        self.info = info
        self.columns = model.columns

    @classmethod
    def from_config(cls, config: TabularServingConfig) -> "TabularPredictor":
        started = time.perf_counter()
        predictor = cls._from_registry(config) if config.use_registry else cls._from_directory(config)
        logger.info("serving %s version %s from %s, loaded in %.1f s", predictor.info.name, predictor.info.version,
                    predictor.info.source, time.perf_counter() - started)
        return predictor

    @staticmethod
    def _info(model: TabularModel, name: str, version: str, source: str, promoted: bool | None) -> ModelInfo:
        return ModelInfo(name=name, version=version, demo=False, intended_use=model.metadata["intended_use"],
                         classes=tuple(model.classes), source=source, promoted=promoted)

    @classmethod
    def _from_directory(cls, config: TabularServingConfig) -> "TabularPredictor":
        path = config.model_dir / MODEL_FILE
        if not path.is_file():
            raise ModelUnavailable(f"no {config.task.name} model yet ({path.name}): {RUN_PIPELINE_HINT}")
        model = cls._load(config.model_dir, config.task.name)
        registered = config.tracking.registered_model
        name, version, promoted = registration_record(config.registration_file, path, registered)
        return cls(model, cls._info(model, name, version, "local", promoted))

    @classmethod
    def _from_registry(cls, config: TabularServingConfig) -> "TabularPredictor":
        tracking = config.tracking
        downloaded = registered_champion(tracking)
        try:
            model = cls._load(downloaded.path, config.task.name)
        finally:
            downloaded.discard()  # loaded into memory: the files are not needed again
        return cls(model, cls._info(model, tracking.registered_model, downloaded.version, "registry", True))

    @staticmethod
    def _load(folder: Path, task: str) -> TabularModel:
        try:
            return TabularModel.load(folder)
        except Exception:  # unreadable, an older pickled format, or a type outside TRUSTED_TYPES
            logger.exception("loading the %s model from %s failed", task, folder)
            raise ModelUnavailable(
                f"the {task} model could not be loaded (see the server log); a model registered in an older, pickled "
                f"format is never loaded: register it again with `dvc repro -f -s tabular_register@{task}`"
            ) from None

    def predict(self, rows: pd.DataFrame) -> list[dict]:
        proba = self.model.predict_proba(rows)
        classes = self.model.classes
        return [
            {
                "label": classes[int(p.argmax())],
                "probability": round(float(p.max()), 6),
                "probabilities": {name: round(float(value), 6) for name, value in zip(classes, p)},
            }
            for p in proba
        ]


@dataclass
class TabularService:
    config: TabularServingConfig
    holder: ModelHolder


class TabularHolder(ModelHolder):
    def _create(self) -> TabularPredictor:
        return TabularPredictor.from_config(self.config)


def init_app(app, configs: tuple[TabularServingConfig, ...], retry_seconds: float) -> None:
    """Load every configured task's model (or note why not) and register the blueprint."""
    services = {}
    for config in configs:
        holder = TabularHolder(config, retry_seconds)
        holder.load()
        services[config.task.name] = TabularService(config, holder)
    app.extensions["tabular"] = services
    add_tasks(app, {name: service.config.task for name, service in services.items()}, task_models)
    app.register_blueprint(tabular)


def services() -> dict[str, TabularService]:
    return current_app.extensions.get("tabular", {})


def task_models(load: bool) -> dict[str, dict]:
    """Each tabular task's model: loaded or not, and which version (``load`` retries a missing one)."""
    status = {}
    for name, service in services().items():
        predictor = service.holder.get() if load else service.holder.predictor
        entry = {"kind": service.config.task.kind, "required": service.config.required, "loaded": predictor is not None}
        entry |= predictor.info.public() if predictor else {"reason": service.holder.reason}
        status[name] = entry
    return status


def _service(task: str) -> TabularService:
    service = services().get(task)
    if service is None:
        raise ApiError(404, f"unknown task {clip(task)}; tasks: {sorted(services())}")
    return service


# -- input ---------------------------------------------------------------------------------------


def _payload() -> dict:
    if request.mimetype != "application/json":
        raise UnsupportedMediaType(
            f"unsupported request content type {clip(request.mimetype or 'none')}: send application/json "
            '{"features": [[...]]} or {"records": [{...}]}'
        )
    payload = json_body()
    if not isinstance(payload, dict) or len(payload) != 1 or next(iter(payload)) not in PAYLOAD_KEYS:
        raise BadRequest('expected a JSON object with exactly one key: "features" (a list of rows of values in '
                         'column order) or "records" (a list of objects keyed by column)')
    return payload


def _rows(payload: dict, columns: tuple[ColumnSpec, ...], max_rows: int) -> list[dict]:
    """The request's rows as {column: value}, with every count and field name checked."""
    key, rows = next(iter(payload.items()))
    names = [c.name for c in columns]
    if not isinstance(rows, list) or not rows:
        raise BadRequest(f'"{key}" must be a non-empty list of rows')
    if len(rows) > max_rows:
        raise BadRequest(f'{len(rows)} rows in one request; at most {max_rows} (tabular.max_rows)')
    records = []
    for number, row in enumerate(rows, start=1):
        if key == "features":
            if not isinstance(row, list) or len(row) != len(names):
                got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
                raise BadRequest(f"row {number}: expected {len(names)} values in the order {names}, got {got}")
            row = dict(zip(names, row))
        elif not isinstance(row, dict):
            raise BadRequest(f"row {number}: expected an object keyed by column, got {type(row).__name__}")
        missing = [name for name in names if name not in row]
        unknown = [name for name in row if name not in names]
        if missing or unknown:
            raise BadRequest(f"row {number}: " + "; ".join(
                [f"missing field '{name}'" for name in missing]
            + [f"unknown field {clip(name)}" for name in unknown[:5]]
            + ([f"{len(unknown) - 5} more unknown fields"] if len(unknown) > 5 else [])
            ))
        records.append(row)
    return records


def _finite_number(value: object) -> bool:
    """A JSON number that is finite as a float (a 400-digit integer is not: float() overflows)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _check_types(records: list[dict], columns: tuple[ColumnSpec, ...]) -> None:
    """JSON types first: numbers must be JSON numbers, categories strings (null is 'missing' below)."""
    for number, record in enumerate(records, start=1):
        for spec in columns:
            value = record[spec.name]
            if value is None:
                continue
            where = f"row {number}, field '{spec.name}'"
            if spec.numeric and not _finite_number(value):
                raise BadRequest(f"{where}: expected a number, got {clip(value)}")
            if not spec.numeric and not isinstance(value, str):
                raise BadRequest(f"{where}: expected one of {list(spec.categories)}, got {clip(value)}")


def parse_rows(payload: dict, columns: tuple[ColumnSpec, ...], max_rows: int) -> pd.DataFrame:
    records = _rows(payload, columns, max_rows)
    _check_types(records, columns)
    frame = pd.DataFrame(records, columns=[c.name for c in columns], dtype=object)
    violations = table_violations(frame, columns)
    if violations:
        raise BadRequest("; ".join(
            f"field '{v.column}': {v.problem} (row {', '.join(str(r + 1) for r in v.rows)})" for v in violations
        ))
    return typed(frame, columns)


# -- routes --------------------------------------------------------------------------------------


@tabular.get("/tabular/<task>")
def page(task: str):
    service = _service(task)
    predictor = service.holder.get()
    return render_template(
        "tabular.html",
        task=service.config.task,
        model=predictor.info if predictor else None,
        columns=predictor.columns if predictor else (),
        reason=public_text(service.holder.reason),
    )


@tabular.post("/predict/<task>")
def predict(task: str):
    service = _service(task)
    predictor = service.holder.require()
    rows = parse_rows(_payload(), predictor.columns, service.config.max_rows)
    return jsonify(
        predictions=predictor.predict(rows),
        task=task,
        kind=service.config.task.kind,
        columns=[c.name for c in predictor.columns],
        model=predictor.info.public(),
        intended_use=predictor.info.intended_use,
    )
