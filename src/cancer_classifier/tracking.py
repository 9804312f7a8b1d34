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
    if experiment is None:
        experiment_id = mlflow.create_experiment(tracking.experiment, artifact_location=tracking.artifact_location)
    else:
        experiment_id = experiment.experiment_id
    # Active, so that logged models (MLflow 3) and nested runs land here, not in the Default experiment.
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
