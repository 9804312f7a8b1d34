"""MLflow set-up, done only when a stage asks for it: nothing contacts a server at import time.

Every call to a tracking server is bounded (retries and timeout from ``tracking.http_*`` in
config/config.yaml, or the standard ``MLFLOW_HTTP_REQUEST_*`` variables), and every failure of one
becomes a ``TrackingError``: one line naming the server and what to do, never a traceback.
"""

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cancer_classifier.core.errors import TrackingError
from cancer_classifier.core.settings import TRACKING_URI_ENV
from cancer_classifier.entity import TrackingConfig

CREDENTIALS_HINT = (
    "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (on DagsHub: your user name and an access token)"
)
MISSING_ENDPOINT = "ENDPOINT_NOT_FOUND"


def public_uri(uri: str) -> str:
    """The URI without any user:password part, fit for a message."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


def http_status(error: Exception) -> int | None:
    """The HTTP status MLflow reported for a non-JSON answer, or the one it gave up retrying on."""
    found = re.search(r"failed with error code (\d{3})|too many (\d{3}) error responses", str(error))
    return int(next(g for g in found.groups() if g)) if found else None


def explain(error: Exception, uri: str) -> str:
    """One line saying what went wrong with the tracking server at ``uri`` and what to do about it."""
    where = f"MLflow at {public_uri(uri)}"
    code, status, text = getattr(error, "error_code", ""), http_status(error), str(error)
    if code in ("UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED") or status == 401:
        return f"{where} refused the credentials (HTTP 401): {CREDENTIALS_HINT}"
    if code == "PERMISSION_DENIED" or status == 403:
        return f"{where} denied this user access (HTTP 403): {CREDENTIALS_HINT} for a user with access"
    if status is not None and status >= 500:
        return f"{where} answered HTTP {status}: the server is failing; see its logs, then retry"
    if code == MISSING_ENDPOINT:
        endpoint = re.search(r"endpoint (\S+)", text)
        missing = endpoint.group(1) if endpoint else "an endpoint"
        if "/experiments/" in missing:  # in every MLflow since 1.x: the URI is not an MLflow server
            return f"{where} has no {missing} (HTTP 404): check {TRACKING_URI_ENV}, it is not an MLflow server"
        return f"{where} has no {missing} (HTTP 404): the server is older than this client or lacks that feature"
    if isinstance(error, requests.exceptions.RequestException) or "failed with exception" in text:
        return (
            f"cannot reach {where}: check {TRACKING_URI_ENV} and that the server is running "
            "(or unset the variable to track in the local store)"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return f"{where} failed: {first[:300]}"


@contextmanager
def tracking_errors(uri: str, doing: str) -> Iterator[None]:
    """Turn any failure of the tracking server while ``doing`` into one TrackingError line."""
    try:
        yield
    except (MlflowException, requests.exceptions.RequestException) as error:
        raise TrackingError(f"{doing}: {explain(error, uri)}") from error


def bound_http(tracking: TrackingConfig) -> None:
    """Bounded retries and timeout for every MLflow HTTP call of this process, unless the user set them."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(tracking.http.max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(tracking.http.timeout_seconds))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", str(tracking.http.backoff_factor))


def point_at(tracking: TrackingConfig) -> None:
    """Bounded calls to the configured store; an unset MLFLOW_TRACKING_URI stays unset."""
    bound_http(tracking)
    configured = os.environ.get(TRACKING_URI_ENV)
    mlflow.set_tracking_uri(tracking.tracking_uri)
    if configured is None:
        # set_tracking_uri exports the variable; an unset one must keep meaning "no server configured".
        os.environ.pop(TRACKING_URI_ENV, None)


@dataclass(frozen=True)
class Server:
    """What the tracking server at ``uri`` can do, asked once without changing anything on it."""

    uri: str
    experiment_id: str
    logged_models: bool  # the MLflow 3 logged-model API
    registry: bool  # registered models, versions and aliases

    @property
    def model_store(self) -> str:
        return "the MLflow model registry" if self.registry else "run tags (this server has no model registry)"


def _supports(call) -> bool:
    """False only for the 404 of a missing endpoint; any other failure is raised."""
    try:
        call()
    except MlflowException as error:
        if error.error_code == MISSING_ENDPOINT:
            return False
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return True  # the endpoint answered: there is just nothing by that name
        raise
    return True


def use_experiment(tracking: TrackingConfig, doing: str = "MLflow") -> str:
    """Point MLflow at the configured store, make the experiment active (creating it if needed) and
    return its id: nested runs and logged models then land there, not in the Default experiment."""
    point_at(tracking)
    with tracking_errors(tracking.tracking_uri, doing):
        experiment = mlflow.get_experiment_by_name(tracking.experiment)
        if experiment is None:
            experiment_id = mlflow.create_experiment(tracking.experiment, artifact_location=tracking.artifact_location)
        else:
            experiment_id = experiment.experiment_id
        mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def connect(tracking: TrackingConfig, doing: str = "MLflow") -> Server:
    """``use_experiment``, then ask the server what it supports (read-only calls)."""
    experiment_id = use_experiment(tracking, doing)
    client = MlflowClient()
    with tracking_errors(tracking.tracking_uri, doing):
        logged_models = _supports(lambda: client.search_logged_models([experiment_id], max_results=1))
        # Aliases are the newest registry endpoint the app needs (MLflow 2.3+): probing them probes it all.
        registry = _supports(lambda: client.get_model_version_by_alias(tracking.registered_model, tracking.alias))
    return Server(tracking.tracking_uri, experiment_id, logged_models, registry)
