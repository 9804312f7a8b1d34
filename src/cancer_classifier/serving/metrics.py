"""Prometheus metrics: requests and latency by endpoint and status, predictions by class,
out-of-distribution predictions, model load.

With several gunicorn workers each process keeps its own counters; when PROMETHEUS_MULTIPROC_DIR is
set (gunicorn.conf.py sets it) prometheus_client writes them to files there and ``/metrics``
aggregates every worker's. The variable must be set before prometheus_client is imported.
"""

import struct
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from cancer_classifier.core import settings

REGISTRY = CollectorRegistry(auto_describe=True)
EMPTY_FILE_RETRIES = 5  # reads of /metrics while a worker creates its metrics file (10 ms apart)

REQUESTS = Counter(
    "http_requests_total", "HTTP requests by endpoint, method and status.", ["endpoint", "method", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "http_request_duration_seconds", "Request latency by endpoint and status.", ["endpoint", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
PREDICTIONS = Counter("predictions_total", "Predictions served, by predicted class.", ["label"], registry=REGISTRY)
OOD_PREDICTIONS = Counter(
    "ood_predictions_total",
    "Predictions whose input was unlike the training images (in_distribution false): the label was not meaningful.",
    registry=REGISTRY,
)
MODEL_LOAD_SECONDS = Gauge(
    "model_load_seconds", "Seconds the last successful model load took (per worker).",
    multiprocess_mode="liveall", registry=REGISTRY,
)
MODEL_LOADED = Gauge(
    "model_loaded", "1 when a model is loaded and serving, else 0 (per worker).",
    multiprocess_mode="liveall", registry=REGISTRY,
)


# Label values come from fixed sets, so no request can add a time series: the methods a browser or
# client of this API sends (anything else is "other"), the URL map's rules ("unmatched" for any
# path that matches none), and HTTP status codes (from 100 to 599; anything else is "other").
METHODS = ("GET", "POST", "HEAD", "OPTIONS")
UNMATCHED = "unmatched"


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def endpoint_label(rule) -> str:
    """The matched rule's pattern (e.g. ``/predict/<task>``), never the requested path."""
    return rule.rule if rule is not None else UNMATCHED


def status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else "other"


def observe(endpoint: str, method: str, status: int, seconds: float) -> None:
    label = status_label(status)
    REQUESTS.labels(endpoint, method, label).inc()
    LATENCY.labels(endpoint, label).observe(seconds)


def multiprocess_dir() -> str | None:
    return settings.metrics_dir()


def exposition() -> tuple[bytes, str]:
    """The text exposition of every metric, aggregated over worker processes when multiprocess.

    A metrics file that a worker is creating at that instant is still empty, and prometheus_client
    then fails to read it (a 500 seen under load right after start): it is read again shortly after.
    """
    path = multiprocess_dir()
    if not path:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    for attempt in range(EMPTY_FILE_RETRIES):
        try:
            return generate_latest(registry), CONTENT_TYPE_LATEST
        except struct.error:
            if attempt == EMPTY_FILE_RETRIES - 1:
                raise
            time.sleep(0.01)
