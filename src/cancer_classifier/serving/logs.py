"""One JSON line per request: request id, endpoint, status, latency, model version.

Never image data, file names or DICOM header values: only fields listed here are written.
"""

import json
import logging
import sys
import time

from cancer_classifier.core.logging import LOGGER_NAME as PACKAGE_LOGGER

ACCESS_LOGGER = f"{PACKAGE_LOGGER}.serving.access"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= getattr(record, "fields", {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_json_logging(level: int = logging.INFO) -> logging.Logger:
    """Send the package's log records (model loading, errors, requests) to stderr as JSON lines.

    Left alone if the host application configured the package logger already.
    """
    package = logging.getLogger(PACKAGE_LOGGER)
    if not package.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        package.addHandler(handler)
        package.setLevel(level)
        package.propagate = False
    return logging.getLogger(ACCESS_LOGGER)
