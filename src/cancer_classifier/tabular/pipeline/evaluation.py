from cancer_classifier.config import ConfigurationManager
from cancer_classifier.tabular.components.evaluation import TabularEvaluation
from cancer_classifier.tabular.pipeline.task import run_task_stage

STAGE_NAME = "tabular_evaluation"


def main(task: str) -> None:
    TabularEvaluation(ConfigurationManager().tabular().evaluation(task)).run()


if __name__ == "__main__":
    run_task_stage(STAGE_NAME, main)
