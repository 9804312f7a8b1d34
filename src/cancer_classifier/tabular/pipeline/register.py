from cancer_classifier.config import ConfigurationManager
from cancer_classifier.tabular.components.registry import TabularRegistry
from cancer_classifier.tabular.pipeline.task import run_task_stage

STAGE_NAME = "tabular_register"


def main(task: str) -> None:
    TabularRegistry(ConfigurationManager().tabular().registry(task)).run()


if __name__ == "__main__":
    run_task_stage(STAGE_NAME, main)
