"""MLflow set-up, done only when a stage asks for it: nothing contacts a server at import time."""

import os

import mlflow

from cancer_classifier.entity import TrackingConfig

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def use_experiment(tracking: TrackingConfig) -> str:
    """Point MLflow at the configured store and return the experiment id, creating it if needed."""
    configured = os.environ.get(TRACKING_URI_ENV)
    mlflow.set_tracking_uri(tracking.tracking_uri)
    if configured is None:
        # set_tracking_uri exports the variable; an unset one must keep meaning "no server configured".
        os.environ.pop(TRACKING_URI_ENV, None)
    experiment = mlflow.get_experiment_by_name(tracking.experiment)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(tracking.experiment, artifact_location=tracking.artifact_location)
