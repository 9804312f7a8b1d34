"""The tabular tasks' sections of config.yaml (``tabular``: where things live) and params.yaml
(``tabular``: which tasks run and how each learns), and each task's column schemas
(``tabular_schemas/<task>.yaml`` in config.yaml's folder), validated and turned into frozen entities.

The schemas are files of their own, not params: dvc.yaml declares a task's file as a dependency of its
ingestion stage, so its columns re-run that task only and stay out of ``dvc exp show``'s params.

Built by ``ConfigurationManager.tabular()``; every error names the file, the key and what was expected.
"""

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cancer_classifier.config.schema import (
    NUMBER,
    OPEN_FRACTION,
    OPTIONAL_STR,
    POSITIVE,
    PROMOTION_METRICS,
    Check,
    at_least,
    check_schema,
    check_values,
    fail,
    flatten,
    is_number,
    one_of,
)
from cancer_classifier.core import settings
from cancer_classifier.core.errors import ConfigError
from cancer_classifier.core.io import read_yaml
from cancer_classifier.entity import TrackingConfig
from cancer_classifier.entity.tabular import (
    COLUMN_TYPES,
    TASK_KINDS,
    ColumnSpec,
    TabularEvaluationConfig,
    TabularIngestionConfig,
    TabularModelSpec,
    TabularRegistryConfig,
    TabularServingConfig,
    TabularTask,
    TabularTrainingConfig,
)

SKLEARN_SOURCES = ("sklearn:breast_cancer",)
MODEL_KINDS = ("logistic_regression", "random_forest", "hist_gradient_boosting", "keras")
POLICIES = ("fail", "drop")
OPTIONAL_INT = (int, type(None))
SCHEMAS_FOLDER = "tabular_schemas"  # in config.yaml's folder: <task>.yaml, the task's columns

TASK_CONFIG_SCHEMA: dict[str, Any] = {
    "title": str,
    "kind": str,
    "source": OPTIONAL_STR,
    "source_sha256": OPTIONAL_STR,
    "experiment": str,
    "registered_model": str,
}
TASK_PARAMS_SCHEMA: dict[str, Any] = {
    "data": {
        "target": str,
        "classes": list,
        "positive_class": str,
        "drop_columns": list,
        "on_invalid": str,
        "on_duplicate": str,
        "test_size": NUMBER,
        "seed": int,
    },
    "model": {
        "kind": str,
        "features": (str, list),
        "seed": int,
        "logistic_regression": {"C": NUMBER, "max_iter": int},
        "random_forest": {"n_estimators": int, "max_depth": OPTIONAL_INT, "min_samples_leaf": int},
        "hist_gradient_boosting": {
            "learning_rate": NUMBER,
            "max_iter": int,
            "max_leaf_nodes": int,
            "l2_regularization": NUMBER,
        },
        "keras": {
            "hidden_units": list,
            "epochs": int,
            "batch_size": int,
            "learning_rate": NUMBER,
            "validation_fraction": NUMBER,
            "patience": int,
        },
    },
    "evaluation": {"cv_folds": int, "bootstrap_resamples": int, "promotion_metric": str, "seed": int},
}
NUMERIC_COLUMN_KEYS = {"type", "min", "max", "unit"}
CATEGORY_COLUMN_KEYS = {"type", "categories"}


class TabularConfiguration:
    """The tabular sections of one ConfigurationManager's files: checked on construction, entities on demand.

    ``resolve`` turns a configured path into the project's; ``tracking`` gives the shared tracking settings.
    """

    def __init__(
        self,
        files: tuple[Path, Path],
        sections: tuple[dict, dict],
        resolve: Callable[[str], Path],
        tracking: Callable[[], TrackingConfig],
    ) -> None:
        self.config_file, self.params_file = files
        self.config, self.params = sections
        self._resolve, self._shared_tracking = resolve, tracking
        schema = {"root_dir": str, "scores_dir": str, "max_rows": int, "tasks": dict}
        check_schema(self.config, schema, self.config_file, "tabular.")
        check_values(self.config_file, self.config, {"max_rows": at_least(1)}, "tabular.")
        for task, section in self.config["tasks"].items():
            check_schema(section, TASK_CONFIG_SCHEMA, self.config_file, f"tabular.tasks.{task}.")
            check_values(self.config_file, section, {"kind": one_of(TASK_KINDS)}, f"tabular.tasks.{task}.")
        self.columns = self._read_schemas()
        self._check_params()

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.config["tasks"])

    @property
    def enabled(self) -> tuple[str, ...]:
        return tuple(self.params["enabled"])

    @property
    def schemas_dir(self) -> Path:
        """The tasks' column schemas: ``tabular_schemas/`` next to config.yaml."""
        return self.config_file.parent / SCHEMAS_FOLDER

    def schema_file(self, task: str) -> Path:
        """The file declaring ``task``'s columns (its tabular_ingestion stage's dependency in dvc.yaml)."""
        return self.schemas_dir / f"{task}.yaml"

    # -- validation ------------------------------------------------------------------------

    def _read_schemas(self) -> dict[str, dict]:
        """Every configured task's column schemas, one file per task, no file for a task that is not configured."""
        folder = self.schemas_dir
        found = {path.stem for path in folder.glob("*.yaml")}
        missing, unknown = sorted(set(self.tasks) - found), sorted(found - set(self.tasks))
        if missing:
            raise ConfigError(
                f"{folder}: no column schema for the task(s) {missing}: each task of {self.config_file} "
                f"'tabular.tasks' needs its columns in {folder}/<task>.yaml"
            )
        if unknown:
            raise ConfigError(
                f"{folder}: column schema(s) for the unknown task(s) {unknown}; expected one file per task of "
                f"{self.config_file} 'tabular.tasks' {list(self.tasks)}"
            )
        return {task: read_yaml(self.schema_file(task)) for task in self.tasks}

    def _check_params(self) -> None:
        schema = {"enabled": list} | {task: TASK_PARAMS_SCHEMA for task in self.tasks}
        check_schema(self.params, schema, self.params_file, "tabular.")
        distinct = Check(
            lambda enabled: set(enabled) <= set(self.tasks) and len(set(enabled)) == len(enabled),
            f"distinct task names from {list(self.tasks)}",
        )
        check_values(self.params_file, self.params, {"enabled": distinct}, "tabular.")
        for task in self.tasks:
            self._check_data(task, self.params[task]["data"])
            self._check_columns(task, self.params[task]["data"])
            self._check_model(task, self.params[task]["model"], self.columns[task])
            self._check_evaluation(task, self.params[task]["evaluation"])

    def _check_data(self, task: str, data: dict) -> None:
        classes = data["classes"]
        strings = Check(lambda names: all(isinstance(name, str) for name in names), "a list of column names")
        check_values(self.params_file, data, {
            "classes": Check(
                lambda _: all(isinstance(c, str) for c in classes) and len(set(classes)) == len(classes) == 2,
                "two distinct class names (strings)",
            ),
            "positive_class": one_of(classes),
            "on_invalid": one_of(POLICIES),
            "on_duplicate": one_of(POLICIES),
            "test_size": OPEN_FRACTION,
            "drop_columns": strings,
        }, f"tabular.{task}.data.")

    def _check_columns(self, task: str, data: dict) -> None:
        """The task's schema file: one valid spec per column, none of them the target or a dropped column."""
        file, columns = self.schema_file(task), self.columns[task]
        if not columns:
            raise ConfigError(f"{file}: must declare at least one column, got {columns!r}")
        clash = sorted({data["target"], *data["drop_columns"]} & set(columns))
        if clash:
            raise ConfigError(
                f"{file}: must declare neither the target nor a dropped column ({self.params_file} "
                f"'tabular.{task}.data' target and drop_columns), got {clash}"
            )
        for name, spec in columns.items():
            if not isinstance(name, str):  # YAML reads unquoted No, Yes, 1 as a bool or a number
                raise ConfigError(f"{file}: column names must be strings (quote them), got {name!r}")
            self._check_column(file, name, spec)

    @staticmethod
    def _check_column(file: Path, key: str, spec: Any) -> None:
        """One column's spec (``key`` is the column's name: it may hold dots, so no dotted lookups here)."""
        if not isinstance(spec, dict) or spec.get("type") not in COLUMN_TYPES:
            fail(file, f"{key}.type", f"one of {COLUMN_TYPES}", spec)
        if spec["type"] == "category":
            if set(spec) != CATEGORY_COLUMN_KEYS:
                fail(file, key, f"a mapping with the keys {sorted(CATEGORY_COLUMN_KEYS)}", spec)
            categories = spec["categories"]
            distinct = isinstance(categories, list) and len(set(map(str, categories))) == len(categories)
            if not categories or not distinct or not all(isinstance(c, str) for c in categories):
                fail(file, f"{key}.categories", "a list of distinct strings", categories)
            return
        if set(spec) != NUMERIC_COLUMN_KEYS:
            fail(file, key, f"a mapping with the keys {sorted(NUMERIC_COLUMN_KEYS)}", spec)
        low, high = spec["min"], spec["max"]
        if not (is_number(low) and is_number(high) and low < high):
            fail(file, f"{key}.min/max", "two numbers with min < max", [low, high])
        if not isinstance(spec["unit"], str):
            fail(file, f"{key}.unit", "a string ('' when unitless)", spec["unit"])

    def _check_model(self, task: str, model: dict, columns: dict) -> None:
        declared = Check(
            lambda f: f == "all" or (isinstance(f, list) and bool(f) and set(f) <= set(columns)),
            f"'all' or a list of columns {self.schema_file(task)} declares",
        )
        widths = Check(
            lambda units: bool(units) and all(isinstance(u, int) and not isinstance(u, bool) and u > 0 for u in units),
            "a list of positive layer widths",
        )
        check_values(self.params_file, model, {
            "kind": one_of(MODEL_KINDS),
            "features": declared,
            "keras.hidden_units": widths,
            "keras.validation_fraction": OPEN_FRACTION,
            **dict.fromkeys((
                "logistic_regression.C",
                "logistic_regression.max_iter",
                "random_forest.n_estimators",
                "random_forest.min_samples_leaf",
                "hist_gradient_boosting.learning_rate",
                "hist_gradient_boosting.max_iter",
                "hist_gradient_boosting.max_leaf_nodes",
                "keras.epochs",
                "keras.batch_size",
                "keras.learning_rate",
                "keras.patience",
            ), POSITIVE),
        }, f"tabular.{task}.model.")

    def _check_evaluation(self, task: str, evaluation: dict) -> None:
        check_values(self.params_file, evaluation, {
            "cv_folds": Check(lambda folds: folds == 0 or folds >= 2, "0 (no cross-validation) or at least 2"),
            "bootstrap_resamples": at_least(100),
            "promotion_metric": one_of(PROMOTION_METRICS),
        }, f"tabular.{task}.evaluation.")

    # -- entities --------------------------------------------------------------------------

    def _known(self, task: str) -> None:
        if task not in self.tasks:
            raise ConfigError(f"{self.config_file}: unknown tabular task {task!r}; expected one of {list(self.tasks)}")

    def task(self, task: str) -> TabularTask:
        self._known(task)
        section = self.config["tasks"][task]
        return TabularTask(name=task, title=section["title"], kind=section["kind"])

    def _dir(self, task: str, stage: str):
        return self._resolve(self.config["root_dir"]) / task / stage

    def _source(self, task: str) -> str:
        source = self.config["tasks"][task]["source"]
        key = f"{self.config_file}: 'tabular.tasks.{task}.source'"
        if source is None:
            raise ConfigError(
                f"{key} is not set: set it to the CSV file's path or an http(s) URL to it "
                "(for tests and the shared data: ../shared/data/colorectal/colorectal_cancer_dataset.csv)"
            )
        if source.startswith("sklearn:"):
            if source not in SKLEARN_SOURCES:
                raise ConfigError(f"{key} is {source!r}; the built-in sources are {SKLEARN_SOURCES}")
            return source
        if source.startswith(("http://", "https://")):
            return source
        path = self._resolve(source)
        if not path.is_file():
            raise ConfigError(
                f"{key} is {source!r}, which is not a file; "
                f"expected a CSV path, an http(s) URL or one of {SKLEARN_SOURCES}"
            )
        return str(path)

    def ingestion(self, task: str) -> TabularIngestionConfig:
        self._known(task)
        data = self.params[task]["data"]
        return TabularIngestionConfig(
            task=self.task(task),
            root_dir=self._dir(task, "ingestion"),
            source=self._source(task),
            source_sha256=self.config["tasks"][task]["source_sha256"],
            target=data["target"],
            classes=tuple(data["classes"]),
            positive_class=data["positive_class"],
            columns=tuple(column_spec(name, spec) for name, spec in self.columns[task].items()),
            drop_columns=tuple(data["drop_columns"]),
            on_invalid=data["on_invalid"],
            on_duplicate=data["on_duplicate"],
            test_size=float(data["test_size"]),
            seed=data["seed"],
        )

    def training(self, task: str) -> TabularTrainingConfig:
        self._known(task)
        model = self.params[task]["model"]
        return TabularTrainingConfig(
            task=self.task(task),
            root_dir=self._dir(task, "training"),
            data_dir=self._dir(task, "ingestion"),
            model=TabularModelSpec(
                kind=model["kind"],
                features=None if model["features"] == "all" else tuple(model["features"]),
                seed=model["seed"],
                options=dict(model[model["kind"]]),
            ),
        )

    def evaluation(self, task: str) -> TabularEvaluationConfig:
        self._known(task)
        evaluation = self.params[task]["evaluation"]
        return TabularEvaluationConfig(
            task=self.task(task),
            root_dir=self._dir(task, "evaluation"),
            data_dir=self._dir(task, "ingestion"),
            model_dir=self._dir(task, "training"),
            scores_path=self._resolve(self.config["scores_dir"]) / f"{task}.json",
            cv_folds=evaluation["cv_folds"],
            bootstrap_resamples=evaluation["bootstrap_resamples"],
            seed=evaluation["seed"],
        )

    def _tracking(self, task: str):
        section = self.config["tasks"][task]
        return dataclasses.replace(
            self._shared_tracking(), experiment=section["experiment"], registered_model=section["registered_model"]
        )

    def registry(self, task: str) -> TabularRegistryConfig:
        self._known(task)
        return TabularRegistryConfig(
            task=self.task(task),
            root_dir=self._dir(task, "register"),
            data_dir=self._dir(task, "ingestion"),
            model_dir=self._dir(task, "training"),
            evaluation_dir=self._dir(task, "evaluation"),
            promotion_metric=self.params[task]["evaluation"]["promotion_metric"],
            params=flatten(self.params[task], f"tabular.{task}."),
            tracking=self._tracking(task),
        )

    def serving(self) -> tuple[TabularServingConfig, ...]:
        """Every configured task; the enabled ones are required for readiness."""
        return tuple(
            TabularServingConfig(
                task=self.task(task),
                model_dir=self._dir(task, "training"),
                registration_file=self._dir(task, "register") / "registration.json",
                required=task in self.enabled,
                max_rows=self.config["max_rows"],
                use_registry=settings.tracking_uri() is not None,
                tracking=self._tracking(task),
            )
            for task in self.tasks
        )


def column_spec(name: str, spec: dict) -> ColumnSpec:
    if spec["type"] == "category":
        return ColumnSpec(name=name, type="category", categories=tuple(spec["categories"]))
    low, high = float(spec["min"]), float(spec["max"])
    return ColumnSpec(name=name, type=spec["type"], unit=spec["unit"], minimum=low, maximum=high)
