"""Tiny tabular projects for the tests: breast cancer from scikit-learn and, when the shared data is
there, a small sample of the colorectal CSV (written to the test's temp folder, never the repo)."""

from pathlib import Path

import pandas as pd

from cancer_classifier.config import ConfigurationManager
from cancer_classifier.tabular.components.evaluation import TabularEvaluation
from cancer_classifier.tabular.components.ingestion import TabularIngestion
from cancer_classifier.tabular.components.registry import TabularRegistry
from cancer_classifier.tabular.components.training import TabularTraining
from tests.support import SHARED, merge, write_project

COLORECTAL = SHARED / "data/colorectal/colorectal_cancer_dataset.csv"
FAST = {"evaluation": {"cv_folds": 3, "bootstrap_resamples": 100}}


def colorectal_sample(folder: Path, rows: int = 3000) -> Path:
    path = folder / "colorectal_sample.csv"
    pd.read_csv(COLORECTAL, nrows=rows).to_csv(path, index=False)
    return path


def tabular_project(
    root: Path, params: dict | None = None, colorectal: bool = True, config: dict | None = None
) -> ConfigurationManager:
    """The repo's config and params with fast evaluation; colorectal's source is a sample if the data is there."""
    config = config or {}
    tabular_params = merge({"breast-cancer": FAST, "colorectal-survival": FAST}, params or {})
    if colorectal and COLORECTAL.is_file():
        source = {"tabular": {"tasks": {"colorectal-survival": {"source": str(colorectal_sample(root))}}}}
        config = merge(config, source)
    return ConfigurationManager(*write_project(root, config, {"tabular": tabular_params}), project_root=root)


def run_task(manager: ConfigurationManager, task: str, register: bool = True) -> dict:
    tabular = manager.tabular()
    TabularIngestion(tabular.ingestion(task)).run()
    TabularTraining(tabular.training(task)).run()
    report = TabularEvaluation(tabular.evaluation(task)).run()
    if register:
        TabularRegistry(tabular.registry(task)).run()
    return report
