"""Blueprints: the pages (upload, monitoring, model card), and the JSON API (/predict, /health, /ready, /metrics,
/model-card)."""

import base64
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Blueprint, Response, current_app, g, jsonify, make_response, render_template, request
from jinja2 import TemplateError

from cancer_classifier.chest_ct.serving.inputs import DecodeBudget, decode, from_base64, probe
from cancer_classifier.core.errors import ModelCardUnavailable
from cancer_classifier.core.images import image_statistics
from cancer_classifier.core.logging import logger
from cancer_classifier.serving import metrics
from cancer_classifier.serving.errors import (
    SUPPORTED_TYPES,
    ApiError,
    BadRequest,
    ServiceUnavailable,
    UnsupportedMediaType,
    clip,
    json_body,
    public_text,
)
from cancer_classifier.serving.holder import task_pages, task_status
from cancer_classifier.serving.monitoring import drift_plot

pages = Blueprint("pages", __name__)
api = Blueprint("api", __name__)

TRUE = ("1", "true", "yes", "on")
# One image request decodes and predicts at a time per worker process, as with gunicorn's sync
# worker: the decode budget then bounds the worker's memory, while its other threads keep reading
# uploads and answering /health, /ready and /metrics. A request waiting longer gets a 503.
PREDICT_SLOT = threading.Lock()


def _holder():
    return current_app.extensions["model"]


@pages.app_context_processor
def _navigation() -> dict:
    """Every page's task navigation (base.html), the tabular pages' included."""
    return {"tasks": task_pages()}


def _class_names() -> dict[str, str]:
    """How pages show each class (serving.class_names); the JSON API keeps the model's names."""
    config = _holder().config  # None when a test hands over only a predictor
    return config.class_names if config else {}


def _display_names(classes: tuple[str, ...]) -> dict[str, str]:
    """Each class, in the model's order, with its display name (its own name when none is configured)."""
    names = _class_names()
    return {name: names.get(name, name) for name in classes}


@pages.get("/")
def index():
    holder = _holder()
    predictor = holder.get()
    return render_template(
        "index.html",
        model=predictor.info if predictor else None,
        model_card=predictor is not None and predictor.card.available,
        display_names=_display_names(predictor.info.classes) if predictor else {},
        reason=public_text(holder.reason),
        max_upload_mb=current_app.config["MAX_CONTENT_LENGTH"] / 1024 / 1024,
        retry_seconds=holder.retry_seconds,
    )


def _tasks(load: bool) -> dict[str, dict]:
    """Every task's model, chest CT first: loaded or not, which version (``load`` retries a missing one)."""
    holder = _holder()
    predictor = holder.get() if load else holder.predictor
    chest_ct = {"kind": "diagnostic", "required": True, "loaded": predictor is not None}
    chest_ct |= predictor.info.public() if predictor else {"reason": public_text(holder.reason)}
    tasks = {"chest-ct": chest_ct, **task_status(load)}
    for task in tasks.values():  # no server path in a public reply
        if "reason" in task:
            task["reason"] = public_text(task["reason"])
    return tasks


@api.get("/health")
def health():
    """Liveness: the process answers, with each task's model as loaded so far. Cheap, never loads one."""
    return jsonify(status="ok", tasks=_tasks(load=False))


@api.get("/ready")
def ready():
    """Readiness: 200 with the models' identities once every required task's model is loaded, else 503
    with the reason. Required: chest CT and the tabular tasks enabled in params.yaml."""
    holder = _holder()
    tasks = _tasks(load=True)
    predictor = holder.predictor
    if predictor is None:
        return jsonify(status="unavailable", reason=public_text(holder.reason), tasks=tasks), 503
    waiting = [f"{name}: {task['reason']}" for name, task in tasks.items() if task["required"] and not task["loaded"]]
    if waiting:
        return jsonify(status="unavailable", reason="; ".join(waiting), tasks=tasks), 503
    info = predictor.info
    return jsonify(
        status="ready",
        model={**info.public(), "source": info.source, "promoted": info.promoted, "classes": list(info.classes)},
        intended_use=info.intended_use,
        ood_check=predictor.ood is not None,
        model_card=predictor.card.available,
        tasks=tasks,
    )


def _card_or_503(read):
    try:
        return read()
    except ModelCardUnavailable as error:
        raise ServiceUnavailable(f"no model card: {error}") from None


def _wants_html() -> bool:
    """A browser (text/html preferred); ``*/*``, JSON or no Accept header is a program."""
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


CARD_FORMATS = {"json": "json", "html": "html", "md": "md", "markdown": "md"}


@api.get("/model-card")
def model_card():
    """The served model's card (data, metrics with intervals, limits) as JSON, a page for a browser, or
    ``?format=md`` Markdown; ``?format=json`` or ``?format=html`` whatever the Accept header."""
    predictor = _holder().require()
    requested = request.args.get("format", "").lower()
    if requested and requested not in CARD_FORMATS:
        raise BadRequest(f"unknown model card format {clip(requested, 20)}: use json, html or md")
    wanted = CARD_FORMATS.get(requested) or ("html" if _wants_html() else "json")
    if wanted == "md":
        return model_card_markdown()
    card = _card_or_503(predictor.card.document)
    response = make_response(_card_page(card, predictor.info)) if wanted == "html" else jsonify(card)
    response.vary.add("Accept")  # one URL, two representations: caches must not swap them
    return response


def _card_page(card: dict, info) -> str:
    """The card as a page. A card is data (a registered model's may come from anywhere): one the page
    cannot show is a 503 naming the JSON, never a 500."""
    try:
        return render_template("model_card.html", card=card, model=info, display_names=_display_names(info.classes))
    except (TemplateError, TypeError, ValueError):
        logger.exception("model card of %s version %s: cannot be shown as a page", info.name, info.version)
        raise ServiceUnavailable(
            "the model card could not be shown as a page (see the server log); /model-card?format=json has it"
        ) from None


@api.get("/model-card.md")
def model_card_markdown():
    predictor = _holder().require()
    text = _card_or_503(predictor.card.markdown)
    return Response(text, content_type="text/markdown; charset=utf-8")


@api.get("/metrics")
def prometheus_metrics():
    body, content_type = metrics.exposition()
    monitor, predictor = current_app.extensions["monitor"], _holder().predictor
    if monitor is not None:  # drift of recent traffic, computed from the workers' shared prediction log
        body += monitor.exposition(predictor.input_reference if predictor else None)
    return Response(body, content_type=content_type)


@pages.get("/monitoring")
def monitoring():
    """Recent predictions against the training data: drift per input statistic and the class mix."""
    monitor, predictor = current_app.extensions["monitor"], _holder().predictor
    if monitor is None:
        raise ServiceUnavailable("monitoring is not configured for this app")
    summary = monitor.summary(predictor.input_reference if predictor else None)
    if request.args.get("format") == "json":
        return jsonify(summary)
    shown = _classes_displayed(summary)
    return render_template("monitoring.html", summary=shown, model=predictor.info if predictor else None,
                           plot=drift_plot(shown))


def _classes_displayed(summary: dict) -> dict:
    """The summary with its class mixes keyed by display name, for the page and its plot."""
    names = _class_names()
    shown = dict(summary)
    for key in ("class_mix", "reference_class_mix"):
        if key in summary:
            shown[key] = {names.get(name, name): share for name, share in summary[key].items()}
    return shown


@contextmanager
def timed(part: str) -> Iterator[None]:
    """The wall time of one part of the request, for its Server-Timing header (app.py)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        g.setdefault("timings", {})[part] = time.perf_counter() - started


def _upload_bytes() -> list[bytes]:
    """The image bytes from multipart field(s) ``file`` or JSON ``{"image": "<base64>"}``."""
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        uploads = request.files.getlist("file")
        if not uploads:
            raise BadRequest("multipart upload without a 'file' field: send the image as field 'file'")
        limit = current_app.config["MAX_BATCH"]
        if len(uploads) > limit:
            raise BadRequest(f"{len(uploads)} files in one request; at most {limit} (serving.max_batch)")
        return [upload.read() for upload in uploads]
    if mimetype == "application/json":
        charset = request.mimetype_params.get("charset", "utf-8").lower()
        if charset not in ("utf-8", "utf8"):
            raise UnsupportedMediaType(f"JSON must be UTF-8, not {clip(charset, 20)}")
        payload = json_body()
        if payload is None:
            raise BadRequest('malformed JSON: expected {"image": "<base64-encoded PNG, JPEG or DICOM>"}')
        if not isinstance(payload, dict) or set(payload) != {"image"}:
            raise BadRequest('expected a JSON object with exactly one key, "image", holding base64-encoded file bytes')
        return [from_base64(payload["image"], current_app.config["MAX_CONTENT_LENGTH"])]
    raise UnsupportedMediaType(
        f"unsupported request content type {clip(mimetype or 'none')}: send multipart/form-data with field 'file', "
        f'or application/json {{"image": "<base64>"}}, holding a {SUPPORTED_TYPES} file'
    )


def _budget() -> DecodeBudget:
    config = current_app.config
    return DecodeBudget(
        config["MAX_IMAGE_PIXELS"],
        config["MAX_REQUEST_PIXELS"],
        config["MAX_IMAGE_DECODED_BYTES"],
        config["MAX_REQUEST_DECODED_BYTES"],
    )


def _probed(uploads: list[bytes]) -> tuple[list, DecodeBudget]:
    """Every upload's declared size, charged to the request's budget before any is decoded."""
    budget, probes = _budget(), []
    for index, data in enumerate(uploads):
        try:
            found = probe(data, budget)
            budget.charge(found)
        except ApiError as error:
            if len(uploads) > 1:  # say which file
                error.message = f"file {index + 1} of {len(uploads)}: {error.message}"
            raise
        probes.append(found)
    return probes, budget


class _Slot:
    """PREDICT_SLOT, waited for at most PREDICT_WAIT_SECONDS (503 after that)."""

    def __enter__(self):
        seconds = current_app.config["PREDICT_WAIT_SECONDS"]
        with timed("queue"):  # waiting for the slot is no part of this request's own work
            acquired = PREDICT_SLOT.acquire(timeout=seconds)
        if not acquired:
            raise ServiceUnavailable(f"the server is busy (no prediction slot within {seconds:g} s); retry later")

    def __exit__(self, *exc):
        PREDICT_SLOT.release()


@api.post("/predict")
def predict():
    predictor = _holder().require()
    explain = request.args.get("explain", "").lower() in TRUE
    uploads = _upload_bytes()  # the body is read here, outside the prediction slot
    probes, budget = _probed(uploads)
    del uploads
    with _Slot():
        if len(probes) > 1:
            return _predict_many(predictor, probes, budget)
        found = probes.pop()
        with timed("decode"):
            image = decode(found, current_app.extensions["dicom_window"], budget)
        g.input_kind = found.kind
        del found
        with timed("model"):
            result = predictor.predict(image, explain=explain)
    g.label = result["label"]
    g.in_distribution = result["in_distribution"]
    _count(result)
    _record(predictor, [result], [image])
    body = {
        "label": result["label"],
        "probabilities": result["probabilities"],
        # false: the image is unlike the training images and the label is not meaningful;
        # null: this model has no out-of-distribution reference (trained before the check existed)
        "in_distribution": result["in_distribution"],
        "ood_score": result["ood_score"],  # distance / threshold: above 1 is unlike the training data
        "model": predictor.info.public(),
        "intended_use": predictor.info.intended_use,
    }
    if explain:
        body["gradcam_png"] = base64.b64encode(result["gradcam_png"]).decode("ascii")
    return jsonify(body)


def _record(predictor, results: list[dict], images: list) -> None:
    """One monitoring record per prediction: statistics of the input, never the input."""
    monitor = current_app.extensions["monitor"]
    if monitor is None:
        return
    for result, image in zip(results, images):
        monitor.record(predictor.info.version, result, image_statistics(image))


def _count(result: dict) -> None:
    metrics.PREDICTIONS.labels(result["label"]).inc()
    if result["in_distribution"] is False:
        metrics.OOD_PREDICTIONS.inc()


def _predict_many(predictor, probes: list, budget: DecodeBudget) -> Response:
    """Several files in one multipart request: one forward pass, one result per file, in order."""
    window = current_app.extensions["dicom_window"]
    images = []
    with timed("decode"):
        for index, found in enumerate(probes):
            try:
                images.append(decode(found, window, budget))
            except ApiError as error:  # say which file: the others were fine
                error.message = f"file {index + 1} of {len(probes)}: {error.message}"
                raise
            probes[index] = None  # the upload's bytes can go once decoded
    with timed("model"):
        results = predictor.predict_many(images)
    for result in results:
        _count(result)
    _record(predictor, results, images)
    g.label = [result["label"] for result in results]
    return jsonify(predictions=results, model=predictor.info.public(), intended_use=predictor.info.intended_use)
