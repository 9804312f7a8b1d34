from cancer_classifier.config import ConfigurationManager
from cancer_classifier.tabular.components.training import TabularTraining
from cancer_classifier.tabular.pipeline.task import run_task_stage

STAGE_NAME = "tabular_training"


def main(task: str) -> None:
    TabularTraining(ConfigurationManager().tabular().training(task)).run()


if __name__ == "__main__":
    run_task_stage(STAGE_NAME, main)
