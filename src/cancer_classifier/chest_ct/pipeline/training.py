from cancer_classifier.chest_ct.components.training import Training
from cancer_classifier.config import ConfigurationManager
from cancer_classifier.core.stage import run_stage

STAGE_NAME = "training"


def main() -> None:
    Training(ConfigurationManager().training()).run()


if __name__ == "__main__":
    run_stage(STAGE_NAME, main)
