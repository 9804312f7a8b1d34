"""Run every pipeline stage in order, without DVC (``dvc repro`` runs the same stages)."""

from functools import partial

from cancer_classifier.config import ConfigurationManager
from cancer_classifier.pipeline import (
    data_ingestion,
    evaluation,
    features,
    prepare_base_model,
    register,
    tabular_evaluation,
    tabular_ingestion,
    tabular_register,
    tabular_training,
    training,
)
from cancer_classifier.pipeline._entry import run_stage

STAGES = [data_ingestion, prepare_base_model, features, training, evaluation, register]
# Run once per task in params.yaml tabular.enabled, as dvc.yaml's foreach does.
TABULAR_STAGES = [tabular_ingestion, tabular_training, tabular_evaluation, tabular_register]

if __name__ == "__main__":
    for stage in STAGES:
        run_stage(stage.STAGE_NAME, stage.main)
    for task in ConfigurationManager().tabular().enabled:
        for stage in TABULAR_STAGES:
            run_stage(f"{stage.STAGE_NAME}@{task}", partial(stage.main, task))
