from cancer_classifier.chest_ct.components.data_ingestion import DataIngestion
from cancer_classifier.config import ConfigurationManager
from cancer_classifier.core.stage import run_stage

STAGE_NAME = "data_ingestion"


def main() -> None:
    DataIngestion(ConfigurationManager().data_ingestion()).run()


if __name__ == "__main__":
    run_stage(STAGE_NAME, main)
