"""The cancer-classifier command: train (the pipeline), predict (images to a CSV), serve (the web app).

Each command imports what it runs only when it runs, so --help answers at once."""

import argparse
import os
import sys
from functools import partial
from importlib import import_module
from pathlib import Path

from cancer_classifier.config import ConfigurationManager
from cancer_classifier.core import settings
from cancer_classifier.core.logging import logger
from cancer_classifier.core.stage import run_stage

CHEST_CT_STAGES = ("data_ingestion", "prepare_base_model", "features", "training", "evaluation", "register")
# Run once per task in params.yaml tabular.enabled, as dvc.yaml's foreach does.
TABULAR_STAGES = ("ingestion", "training", "evaluation", "register")


def run_pipeline() -> None:
    """Every stage in dvc.yaml's order, each as its own entry point runs it (no DVC: nothing is skipped)."""
    for name in CHEST_CT_STAGES:
        stage = import_module(f"cancer_classifier.chest_ct.pipeline.{name}")
        run_stage(stage.STAGE_NAME, stage.main)
    for task in ConfigurationManager().tabular().enabled:
        for name in TABULAR_STAGES:
            stage = import_module(f"cancer_classifier.tabular.pipeline.{name}")
            run_stage(f"{stage.STAGE_NAME}@{task}", partial(stage.main, task))


def predict(paths: list[Path], output: Path) -> None:
    """The served chest-CT model on every image file under ``paths``, one CSV row each."""
    from cancer_classifier.chest_ct.serving.batch import image_files, predictions, write_csv
    from cancer_classifier.chest_ct.serving.predictor import Predictor

    files = image_files(paths)  # a wrong path fails before the model loads
    serving = ConfigurationManager().serving()
    predictor = Predictor.from_config(serving)
    rows, errors = write_csv(output, predictions(files, predictor, serving), predictor.info.classes)
    logger.info("%d image(s) -> %s (%d could not be read: see its error column)", rows, output, errors)
    logger.info("%s", predictor.info.intended_use)


def serve(port: int | None) -> None:
    """gunicorn with the project's settings (gunicorn.conf.py: PORT, workers, timeouts), serving the app
    of this project folder; ``port`` overrides PORT."""
    config = settings.CHECKOUT_DIR / "gunicorn.conf.py"
    command = [sys.executable, "-m", "gunicorn", "cancer_classifier.serving.app:create_app()", "--config", str(config)]
    os.execv(sys.executable, command + (["--bind", f"0.0.0.0:{port}"] if port else []))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="cancer-classifier",
        description=__doc__.splitlines()[0] + " Run it in the project folder (config/config.yaml).",
    )
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("train", help="run every pipeline stage in order (`dvc repro` skips unchanged ones)")
    batch = commands.add_parser("predict", help="predict image files or folders (PNG, JPEG, DICOM) into a CSV")
    batch.add_argument("paths", nargs="+", type=Path, help="image files or folders (searched recursively)")
    batch.add_argument("--output", "-o", type=Path, default=Path("predictions.csv"), help="the CSV to write")
    web = commands.add_parser("serve", help="the web app and JSON API under gunicorn")
    web.add_argument("--port", type=int, help="default: PORT, else 8080 (gunicorn.conf.py)")
    return root


def main(argv: list[str] | None = None) -> None:
    arguments = parser().parse_args(argv)
    if arguments.command == "train":
        run_pipeline()
    elif arguments.command == "predict":
        run_stage("predict", partial(predict, arguments.paths, arguments.output))
    else:
        serve(arguments.port)


if __name__ == "__main__":
    main()
