"""MLflow set-up, done only when a stage asks for it: nothing contacts a server at import time."""

import mlflow

from cancer_classifier.entity import TrackingConfig


def use_experiment(tracking: TrackingConfig) -> str:
    """Point MLflow at the configured store and return the experiment id, creating it if needed."""
    mlflow.set_tracking_uri(tracking.tracking_uri)
    experiment = mlflow.get_experiment_by_name(tracking.experiment)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(tracking.experiment, artifact_location=tracking.artifact_location)
