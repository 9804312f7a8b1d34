from cancer_classifier.chest_ct.components.prepare_base_model import PrepareBaseModel
from cancer_classifier.config import ConfigurationManager
from cancer_classifier.core.stage import run_stage

STAGE_NAME = "prepare_base_model"


def main() -> None:
    PrepareBaseModel(ConfigurationManager().prepare_base_model()).run()


if __name__ == "__main__":
    run_stage(STAGE_NAME, main)
