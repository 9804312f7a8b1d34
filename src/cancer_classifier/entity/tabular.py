"""Frozen settings of the tabular tasks (breast cancer, colorectal survival), built by the ConfigurationManager."""

from dataclasses import dataclass
from pathlib import Path

from cancer_classifier.entity.config_entity import TrackingConfig

COLUMN_TYPES = ("number", "integer", "category")
TASK_KINDS = ("diagnostic", "prognostic")


@dataclass(frozen=True)
class ColumnSpec:
    """One declared input column: its type and what values it allows."""

    name: str
    type: str  # number | integer | category
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    categories: tuple[str, ...] = ()

    @property
    def numeric(self) -> bool:
        return self.type != "category"

    def as_dict(self) -> dict:
        if self.numeric:
            return {"name": self.name, "type": self.type, "unit": self.unit, "min": self.minimum, "max": self.maximum}
        return {"name": self.name, "type": self.type, "categories": list(self.categories)}

    @classmethod
    def from_dict(cls, values: dict) -> "ColumnSpec":
        return cls(
            name=values["name"],
            type=values["type"],
            unit=values.get("unit", ""),
            minimum=values.get("min"),
            maximum=values.get("max"),
            categories=tuple(values.get("categories", ())),
        )


@dataclass(frozen=True)
class TabularTask:
    name: str  # the key in config.yaml and params.yaml, e.g. "breast-cancer"
    title: str
    kind: str  # diagnostic | prognostic


@dataclass(frozen=True)
class TabularIngestionConfig:
    task: TabularTask
    root_dir: Path
    source: str  # "sklearn:breast_cancer", a CSV path or an http(s) URL to a CSV
    source_sha256: str | None
    target: str
    classes: tuple[str, ...]  # the target's two values; their order is the model's class order
    positive_class: str
    columns: tuple[ColumnSpec, ...]
    drop_columns: tuple[str, ...]  # leakage: identifiers and anything recorded after the outcome
    on_invalid: str  # fail | drop: rows with missing, mistyped, out-of-range or unknown values
    on_duplicate: str  # fail | drop
    test_size: float
    seed: int


@dataclass(frozen=True)
class TabularModelSpec:
    kind: str  # logistic_regression | random_forest | hist_gradient_boosting | keras
    features: tuple[str, ...] | None  # None: every declared column
    seed: int
    options: dict  # the chosen kind's settings from params.yaml


@dataclass(frozen=True)
class TabularTrainingConfig:
    task: TabularTask
    root_dir: Path
    data_dir: Path
    model: TabularModelSpec


@dataclass(frozen=True)
class TabularEvaluationConfig:
    task: TabularTask
    root_dir: Path
    data_dir: Path
    model_dir: Path
    scores_path: Path
    cv_folds: int  # 0: no cross-validation (large data); else stratified folds on the training split
    bootstrap_resamples: int
    seed: int


@dataclass(frozen=True)
class TabularRegistryConfig:
    task: TabularTask
    root_dir: Path
    data_dir: Path
    model_dir: Path
    evaluation_dir: Path
    promotion_metric: str
    params: dict[str, str]  # the task's params flattened, logged with the run
    tracking: TrackingConfig  # experiment and registered model are the task's own


@dataclass(frozen=True)
class TabularServingConfig:
    task: TabularTask
    model_dir: Path
    registration_file: Path
    required: bool  # enabled in params.yaml: /ready is 503 until it is loaded
    max_rows: int  # most records one POST /predict/<task> may carry
    use_registry: bool
    tracking: TrackingConfig
