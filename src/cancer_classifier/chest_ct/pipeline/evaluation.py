from cancer_classifier.chest_ct.components.evaluation import Evaluation
from cancer_classifier.config import ConfigurationManager
from cancer_classifier.core.stage import run_stage

STAGE_NAME = "evaluation"


def main() -> None:
    Evaluation(ConfigurationManager().evaluation()).run()


if __name__ == "__main__":
    run_stage(STAGE_NAME, main)
