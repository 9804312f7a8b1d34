"""Run every pipeline stage in order, without DVC (``dvc repro`` runs the same stages)."""

from cancer_classifier.pipeline import data_ingestion, evaluation, features, prepare_base_model, register, training
from cancer_classifier.pipeline._entry import run_stage

STAGES = [data_ingestion, prepare_base_model, features, training, evaluation, register]

if __name__ == "__main__":
    for stage in STAGES:
        run_stage(stage.STAGE_NAME, stage.main)
