from cancer_classifier.components.tabular_evaluation import TabularEvaluation
from cancer_classifier.config import ConfigurationManager
from cancer_classifier.pipeline.tabular_entry import run_task_stage

STAGE_NAME = "tabular_evaluation"


def main(task: str) -> None:
    TabularEvaluation(ConfigurationManager().tabular().evaluation(task)).run()


if __name__ == "__main__":
    run_task_stage(STAGE_NAME, main)
