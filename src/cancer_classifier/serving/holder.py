"""The app's hold on one task's model: loaded once, or the reason it is not; looked for again now and then."""

import threading
import time
from collections.abc import Callable

from flask import Flask, current_app

from cancer_classifier.core.errors import ModelUnavailable
from cancer_classifier.core.logging import logger
from cancer_classifier.serving.errors import ServiceUnavailable


class ModelHolder:
    """One task's predictor, or the reason there is none; looks again now and then if missing. Each task
    subclasses it with ``_create`` (and may report each attempt in ``_loaded``)."""

    def __init__(self, config, retry_seconds: float, predictor=None) -> None:
        self.config = config
        self.retry_seconds = retry_seconds
        self.predictor = predictor
        self.reason = "" if predictor else "the model has not been loaded yet"
        self._last_attempt = float("-inf")
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self.predictor is not None or self.config is None:
                return
            self._last_attempt = time.monotonic()
            try:
                self.predictor = self._create()
            except ModelUnavailable as error:
                self.reason = str(error)
                self._loaded(False)
                return
            except Exception:  # e.g. the warm-up prediction failed: keep serving /health and say so
                logger.exception("the model could not be loaded")
                self.reason = "the model could not be loaded (see the server log); retrain it with `dvc repro`"
                self._loaded(False)
                return
            self.reason = ""
            self._loaded(True)

    def _create(self):
        raise NotImplementedError  # each task's holder creates its own predictor

    def _loaded(self, ok: bool) -> None:
        """Called after each attempt to load (a task's holder may report it, e.g. as a gauge)."""

    def get(self):
        if self.predictor is None and time.monotonic() - self._last_attempt >= self.retry_seconds:
            self.load()
        return self.predictor

    def require(self):
        predictor = self.get()
        if predictor is None:
            raise ServiceUnavailable(f"no model is being served: {self.reason}")
        return predictor


def add_tasks(app: Flask, pages: dict, status: Callable[[bool], dict[str, dict]]) -> None:
    """A task package's pages (name -> task, for the navigation) and its models' status for /health and
    /ready (``status(load)``): how the app's routes see every task without importing it."""
    app.extensions.setdefault("task_pages", {}).update(pages)
    app.extensions.setdefault("task_status", []).append(status)


def task_pages() -> dict:
    return current_app.extensions.get("task_pages", {})


def task_status(load: bool) -> dict[str, dict]:
    """Every added task's models: loaded or not, and which version (``load`` retries a missing one)."""
    merged = {}
    for status in current_app.extensions.get("task_status", []):
        merged |= status(load)
    return merged
