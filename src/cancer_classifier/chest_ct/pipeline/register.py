from cancer_classifier.chest_ct.components.registry import ModelRegistry
from cancer_classifier.config import ConfigurationManager
from cancer_classifier.core.stage import run_stage

STAGE_NAME = "register"


def main() -> None:
    ModelRegistry(ConfigurationManager().registry()).run()


if __name__ == "__main__":
    run_stage(STAGE_NAME, main)
