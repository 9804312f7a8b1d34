"""What every stage entry point shares: logging, and a clear message instead of a traceback."""

import sys
from collections.abc import Callable

from cancer_classifier.components.data_ingestion import DataSourceError
from cancer_classifier.config import ConfigError
from cancer_classifier.utils.common import StageInputError, TrackingError
from cancer_classifier.utils.images import ImageDecodeError
from cancer_classifier.utils.logging import configure_logging, logger

USER_ERRORS = (ConfigError, DataSourceError, ImageDecodeError, FileNotFoundError, StageInputError, TrackingError)


def run_stage(name: str, main: Callable[[], object]) -> None:
    configure_logging()
    logger.info(">>> stage %s started", name)
    try:
        main()
    except USER_ERRORS as error:
        logger.error("stage %s failed: %s", name, error)
        sys.exit(1)
    logger.info("<<< stage %s completed", name)
