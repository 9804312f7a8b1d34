"""The application factory: ``create_app(test_config=None)``.

It reads the serving settings through the ConfigurationManager, loads one Predictor (or records
why it cannot: the app still starts, answers /health, and says what to do), and registers the
blueprints, the JSON error handler, request logging and metrics. There is no training route.

test_config keys (all optional): any Flask setting, plus
``SERVING_CONFIG`` (a ServingConfig to use instead of config/config.yaml),
``PREDICTOR`` (an already-loaded Predictor to serve),
``TABULAR_SERVING`` (the tabular tasks' ServingConfigs; default: from config/config.yaml, or none
when SERVING_CONFIG or PREDICTOR is given) and
``MODEL_RETRY_SECONDS`` (how often a missing model is looked for again; default 30).
"""

import re
import time
import uuid
from io import BytesIO

from flask import Flask, Request, g, request

from cancer_classifier.chest_ct.serving import inputs
from cancer_classifier.chest_ct.serving.inputs import DEFAULT_WINDOW, Window
from cancer_classifier.chest_ct.serving.predictor import PredictorHolder
from cancer_classifier.core import settings
from cancer_classifier.entity import ServingConfig, TabularServingConfig
from cancer_classifier.serving import metrics
from cancer_classifier.serving.errors import register_error_handlers
from cancer_classifier.serving.logs import configure_json_logging
from cancer_classifier.serving.monitoring import DriftMonitor

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class InMemoryRequest(Request):
    """Uploaded files stay in memory (bounded by MAX_CONTENT_LENGTH), never in a temp file."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return BytesIO()


class DeadlineInput:
    """``wsgi.input`` with a deadline for the whole body, on top of the per-read timeout.

    A read timeout alone lets a client that sends one byte just inside it hold a thread for hours;
    here every read waits at most the read timeout and never past the deadline, after which the
    read raises TimeoutError (werkzeug turns it into ClientDisconnected, errors.py into a 408).
    """

    def __init__(self, stream, connection, read_timeout: float, seconds: float) -> None:
        self.stream, self.connection, self.read_timeout = stream, connection, read_timeout
        self.deadline = time.monotonic() + seconds

    def _arm(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request body did not arrive before its deadline")
        self.connection.settimeout(min(self.read_timeout, remaining))

    def read(self, size: int = -1) -> bytes:
        self._arm()
        return self.stream.read(size)

    def readline(self, size: int = -1) -> bytes:
        self._arm()
        return self.stream.readline(size)

    def __iter__(self):
        while line := self.readline():
            yield line


def _serving_config() -> ServingConfig:
    from cancer_classifier.config import ConfigurationManager

    return ConfigurationManager().serving()


def _tabular_serving() -> tuple[TabularServingConfig, ...]:
    from cancer_classifier.config import ConfigurationManager

    return ConfigurationManager().tabular().serving()


def create_app(test_config: dict | None = None) -> Flask:
    test_config = dict(test_config or {})
    app = Flask(
        __name__,
        template_folder=str(settings.TEMPLATES_DIR),
        static_folder=str(settings.STATIC_DIR),
    )
    app.request_class = InMemoryRequest
    app.json.sort_keys = False  # probabilities keep the model's class order
    predictor = test_config.pop("PREDICTOR", None)
    # A test that hands over the chest-CT model or settings serves no tabular task unless it says so.
    given = predictor is not None or "SERVING_CONFIG" in test_config
    tabular = test_config.pop("TABULAR_SERVING", None)
    tabular = tabular if tabular is not None else (() if given else _tabular_serving())
    config = test_config.pop("SERVING_CONFIG", None) or (None if predictor else _serving_config())
    app.config.from_mapping(
        MAX_CONTENT_LENGTH=config.max_upload_bytes if config else 10 * 1024 * 1024,
        MODEL_RETRY_SECONDS=config.model_retry_seconds if config else 30.0,
        MAX_BATCH=config.max_batch if config else 16,
        READ_TIMEOUT_SECONDS=config.read_timeout_seconds if config else 20.0,
        # The decode budget and the body deadline: config.yaml's serving section, else
        # serving/inputs.py's defaults (a test handing over only a predictor).
        MAX_IMAGE_PIXELS=config.decode_budget.max_image_pixels if config else inputs.MAX_IMAGE_PIXELS,
        MAX_REQUEST_PIXELS=config.decode_budget.max_request_pixels if config else inputs.MAX_REQUEST_PIXELS,
        MAX_IMAGE_DECODED_BYTES=config.decode_budget.max_image_bytes if config else inputs.MAX_IMAGE_DECODED_BYTES,
        MAX_REQUEST_DECODED_BYTES=(
            config.decode_budget.max_request_bytes if config else inputs.MAX_REQUEST_DECODED_BYTES
        ),
        BODY_DEADLINE_SECONDS=config.body_deadline_seconds if config else inputs.BODY_DEADLINE_SECONDS,
        PREDICT_WAIT_SECONDS=config.predict_wait_seconds if config else inputs.PREDICT_WAIT_SECONDS,
    )
    app.config.update(test_config)
    app.extensions["serving_config"] = config
    app.extensions["monitor"] = DriftMonitor(config.monitoring) if config else None
    app.extensions["dicom_window"] = (
        Window(config.dicom_window_center, config.dicom_window_width) if config else DEFAULT_WINDOW
    )

    access_log = configure_json_logging()
    holder = PredictorHolder(config, float(app.config["MODEL_RETRY_SECONDS"]), predictor)
    if predictor is not None:
        metrics.MODEL_LOADED.set(1)
    else:
        holder.load()  # once per process: under gunicorn, once per worker (preload is off)
    app.extensions["model"] = holder

    register_error_handlers(app)
    _register_request_hooks(app, access_log)

    from cancer_classifier.chest_ct.serving.routes import api, pages
    from cancer_classifier.tabular import serving as tabular_tasks

    app.register_blueprint(pages)
    app.register_blueprint(api)
    tabular_tasks.init_app(app, tabular, float(app.config["MODEL_RETRY_SECONDS"]))
    return app


def _register_request_hooks(app: Flask, access_log) -> None:
    @app.before_request
    def start_timer():
        g.start = time.perf_counter()
        # A client that stops sending its body would hold a sync worker until gunicorn kills it;
        # with a read timeout on the socket it gets a 408 and the worker lives on.
        connection = request.environ.get("gunicorn.socket")
        if connection is not None:
            read_timeout = app.config["READ_TIMEOUT_SECONDS"]
            connection.settimeout(read_timeout)
            stream = request.environ.get("wsgi.input")
            if stream is not None:  # and a deadline for the whole body (a trickle is not a stall)
                request.environ["wsgi.input"] = DeadlineInput(
                    stream, connection, read_timeout, app.config["BODY_DEADLINE_SECONDS"]
                )
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex

    @app.after_request
    def finish(response):
        elapsed = time.perf_counter() - g.get("start", time.perf_counter())
        endpoint = metrics.endpoint_label(request.url_rule)
        method = metrics.method_label(request.method)
        metrics.observe(endpoint, method, response.status_code, elapsed)
        response.headers["X-Request-ID"] = g.get("request_id", "")
        # where the time went (decode and model for predictions), as browsers' developer tools show it
        timings = g.get("timings", {}) | {"total": elapsed}
        response.headers["Server-Timing"] = ", ".join(f"{part};dur={1000 * t:.1f}" for part, t in timings.items())
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'",
        )
        if endpoint != "/static/<path:filename>":
            response.headers.setdefault("Cache-Control", "no-store")
        predictor = app.extensions["model"].predictor
        fields = {
            "request_id": g.get("request_id"),
            "method": method,
            "endpoint": endpoint,
            "status": response.status_code,
            "latency_ms": round(elapsed * 1000, 1),
            "model_version": predictor.info.version if predictor else None,
        }
        for key in ("label", "in_distribution", "input_kind", "error"):
            if key in g:
                fields[key] = g.get(key)
        if endpoint not in ("/static/<path:filename>",):
            access_log.info("request", extra={"fields": fields})
        return response

