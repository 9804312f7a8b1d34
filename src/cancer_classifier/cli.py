"""The ``cancer-classifier`` command: ``train`` (the pipeline), ``predict`` (images to a CSV), ``serve``."""

import argparse
from functools import partial

from cancer_classifier.chest_ct.pipeline import data_ingestion, evaluation, features, prepare_base_model, register
from cancer_classifier.chest_ct.pipeline import training as chest_ct_training
from cancer_classifier.config import ConfigurationManager
from cancer_classifier.core.stage import run_stage
from cancer_classifier.tabular.pipeline import evaluation as tabular_evaluation
from cancer_classifier.tabular.pipeline import ingestion as tabular_ingestion
from cancer_classifier.tabular.pipeline import register as tabular_register
from cancer_classifier.tabular.pipeline import training as tabular_training

CHEST_CT_STAGES = (data_ingestion, prepare_base_model, features, chest_ct_training, evaluation, register)
# Run once per task in params.yaml tabular.enabled, as dvc.yaml's foreach does.
TABULAR_STAGES = (tabular_ingestion, tabular_training, tabular_evaluation, tabular_register)


def run_pipeline() -> None:
    """Every stage in dvc.yaml's order, each as its own entry point runs it (no DVC: nothing is skipped)."""
    for stage in CHEST_CT_STAGES:
        run_stage(stage.STAGE_NAME, stage.main)
    for task in ConfigurationManager().tabular().enabled:
        for stage in TABULAR_STAGES:
            run_stage(f"{stage.STAGE_NAME}@{task}", partial(stage.main, task))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cancer-classifier", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("train", help="run every pipeline stage in order (`dvc repro` skips unchanged ones)")
    arguments = parser.parse_args(argv)
    if arguments.command == "train":
        run_pipeline()


if __name__ == "__main__":
    main()
