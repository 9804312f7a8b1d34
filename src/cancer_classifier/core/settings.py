"""Where the project is, and every environment variable the package reads: in one place.

The project folder (config/config.yaml, params.yaml, artifacts/) is the working directory: `dvc repro`,
gunicorn and the `cancer-classifier` command all run in it. The page's templates/ and static/ sit at
the checkout's top level and ship inside the package when it is built (setup.py).
"""

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/cancer_classifier in a checkout
CHECKOUT_DIR = PACKAGE_DIR.parents[1]  # the repository (or the image's /app) holding src/


def page_folder(name: str) -> Path:
    """The page's ``templates`` or ``static``: the package's own copy when installed from a wheel (the
    image), else the checkout's top-level folder (a source checkout or an editable install)."""
    shipped = PACKAGE_DIR / name
    return shipped if shipped.is_dir() else CHECKOUT_DIR / name


TEMPLATES_DIR = page_folder("templates")
STATIC_DIR = page_folder("static")

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own: a server means registry mode
THREADS_ENV = "TF_NUM_INTRAOP_THREADS"  # threads per worker (gunicorn.conf.py divides the cores)
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # the workers' shared metrics files


def project_root() -> Path:
    """The project folder: the working directory; the checkout if the working directory is gone."""
    try:
        return Path.cwd().resolve()
    except OSError:
        return CHECKOUT_DIR


def tracking_uri() -> str | None:
    """The MLflow server the user named, if any (unset or empty: the local store in config.yaml)."""
    return os.environ.get(TRACKING_URI_ENV) or None


def inference_threads() -> int | None:
    value = os.environ.get(THREADS_ENV, "")
    return int(value) if value.isdigit() else None


def metrics_dir() -> str | None:
    return os.environ.get(METRICS_DIR_ENV) or os.environ.get(METRICS_DIR_ENV.lower())
