"""What the tabular stage entry points share: the task named on the command line."""

import argparse
from collections.abc import Callable

from cancer_classifier.core.stage import run_stage


def run_task_stage(name: str, main: Callable[[str], object], argv: list[str] | None = None) -> None:
    """``python -m cancer_classifier.tabular.pipeline.<stage> <task>``: run ``main(task)`` as stage ``name@task``."""
    module = name.removeprefix("tabular_")
    parser = argparse.ArgumentParser(prog=f"python -m cancer_classifier.tabular.pipeline.{module}")
    parser.add_argument("task", help="a task under 'tabular.tasks' in config/config.yaml, e.g. breast-cancer")
    task = parser.parse_args(argv).task
    run_stage(f"{name}@{task}", lambda: main(task))
