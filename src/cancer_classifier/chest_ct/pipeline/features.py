from cancer_classifier.chest_ct.components.features import Features
from cancer_classifier.config import ConfigurationManager
from cancer_classifier.core.stage import run_stage

STAGE_NAME = "features"


def main() -> None:
    Features(ConfigurationManager().features()).run()


if __name__ == "__main__":
    run_stage(STAGE_NAME, main)
