"""What every stage entry point shares: logging, and one line instead of a traceback for a user's error."""

import sys
from collections.abc import Callable

from cancer_classifier.core.errors import CancerClassifierError
from cancer_classifier.core.logging import configure_logging, logger


def run_stage(name: str, main: Callable[[], object]) -> None:
    """Run ``main`` as stage ``name``: a ``CancerClassifierError`` exits 1 with its message on one line;
    anything else is a bug and keeps its full traceback."""
    configure_logging()
    logger.info(">>> stage %s started", name)
    try:
        main()
    except CancerClassifierError as error:
        logger.error("stage %s failed: %s", name, error)
        sys.exit(1)
    logger.info("<<< stage %s completed", name)
