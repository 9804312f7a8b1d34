from cancer_classifier.config import ConfigurationManager
from cancer_classifier.tabular.components.ingestion import TabularIngestion
from cancer_classifier.tabular.pipeline.task import run_task_stage

STAGE_NAME = "tabular_ingestion"


def main(task: str) -> None:
    TabularIngestion(ConfigurationManager().tabular().ingestion(task)).run()


if __name__ == "__main__":
    run_task_stage(STAGE_NAME, main)
