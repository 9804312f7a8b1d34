"""Frozen, typed settings for each pipeline stage, built only by the ConfigurationManager."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SyntheticConfig:
    images_per_class: int
    image_size: int


@dataclass(frozen=True)
class DataIngestionConfig:
    root_dir: Path
    source: str  # "synthetic", a folder, a .zip or an http(s) URL
    source_sha256: str | None
    external_test: str | None  # an optional external test set: folder, zip or URL, scored on its own
    external_test_sha256: str | None
    folder_separator: str
    classes: tuple[str, ...]
    split: dict[str, float]
    seed: int
    near_duplicate_distance: int
    synthetic: SyntheticConfig

    @property
    def is_synthetic(self) -> bool:
        return self.source == "synthetic"


@dataclass(frozen=True)
class PrepareBaseModelConfig:
    root_dir: Path
    seed: int
    image_size: int
    harmonise: bool  # grayscale, intensity stretch, crop to body, aspect-preserving pad (in the model)
    weights: str  # "imagenet", "none" or a path to a weights file
    pooling: str
    dense_units: int
    dropout: float


@dataclass(frozen=True)
class AugmentationConfig:
    flip: bool
    rotation: float
    zoom: float
    contrast: float


@dataclass(frozen=True)
class FeaturesConfig:
    root_dir: Path
    data_dir: Path
    base_model_dir: Path
    weights: str  # base_model.weights, resolved: the base is built from them (prepare_base_model recorded which)
    seed: int
    batch_size: int
    views: int  # per training image: view 0 as is, the rest augmented
    augmentation: AugmentationConfig
    precision: str  # auto | float32 | mixed_bfloat16
    engine: str  # auto | tensorflow | openvino: what computes the frozen base's pass


@dataclass(frozen=True)
class TrainingConfig:
    root_dir: Path
    data_dir: Path
    base_model_dir: Path
    weights: str  # base_model.weights, resolved, as for the features
    features_dir: Path
    seed: int
    batch_size: int
    epochs: int
    learning_rate: float
    early_stopping_patience: int
    class_weights: bool
    head_candidates: tuple[str, ...]  # logistic | mlp, compared by cross-validation
    logistic_c: tuple[float, ...]
    cv_folds: int
    augmentation: AugmentationConfig
    ood_components: int
    ood_quantile: float
    fine_tune_blocks: int
    fine_tune_epochs: int
    fine_tune_learning_rate: float
    precision: str  # auto | float32 | mixed_bfloat16: for the frozen base's feature pass and fine-tuning
    engine: str  # auto | tensorflow | openvino: for the features of a fine-tuned model (fine-tuning is TensorFlow)
    tracking: "TrackingConfig"


@dataclass(frozen=True)
class EvaluationConfig:
    root_dir: Path
    data_dir: Path
    model_dir: Path
    base_model_dir: Path
    scores_path: Path
    positive_class: str
    bootstrap_resamples: int
    shortcut_margin: float
    seed: int
    tolerated_label_changes: int  # most labels a variant may change against the reference and still be served
    tolerated_roc_auc_change: float  # most ROC-AUC change a variant may cause and still be served


@dataclass(frozen=True)
class HttpLimits:
    """Bounds on every MLflow HTTP call (the standard MLFLOW_HTTP_REQUEST_* variables override them)."""

    max_retries: int
    timeout_seconds: int
    backoff_factor: int


@dataclass(frozen=True)
class TrackingConfig:
    tracking_uri: str
    artifact_location: str | None
    experiment: str
    registered_model: str
    alias: str
    http: HttpLimits


@dataclass(frozen=True)
class RegistryConfig:
    root_dir: Path
    data_dir: Path
    base_model_dir: Path
    model_dir: Path
    evaluation_dir: Path
    scores_path: Path
    promotion_metric: str
    positive_class: str  # for the champion's score on this model's test split
    params: dict[str, str]  # params.yaml flattened ("training.epochs": "60"), logged with the run
    tracking: TrackingConfig
    serving: "ServingConfig"  # the decoding settings the registered model's scoring server applies


@dataclass(frozen=True)
class MonitoringConfig:
    log_file: Path  # one JSON line per prediction, shared by all workers
    window: int  # recent records compared with the training reference
    drift_alert_psi: float  # above this a statistic is reported as drifted
    max_log_bytes: int  # the log is rotated (one old file kept) beyond this


@dataclass(frozen=True)
class DecodeBudgetConfig:
    """What one upload and one request may decode to, checked from headers before decoding."""

    max_image_pixels: int
    max_request_pixels: int
    max_image_bytes: int
    max_request_bytes: int


@dataclass(frozen=True)
class ServingConfig:
    model_dir: Path  # local artifacts: model.keras, model_metadata.json, class_indices.json
    registration_file: Path  # the register stage's record of the version, if it ran
    model_card_file: Path  # the evaluation stage's model_card.json
    max_upload_bytes: int
    class_names: dict[str, str]  # class name -> how pages show it ("large.cell.carcinoma" -> "Large cell carcinoma")
    dicom_window_center: float
    dicom_window_width: float
    precision: str  # auto | float32 | mixed_bfloat16
    engine: str  # auto | tensorflow | openvino
    max_batch: int  # most images one /predict request may carry
    read_timeout_seconds: float  # a stalled upload gets a 408 after this long
    body_deadline_seconds: float  # the whole body must arrive within this
    predict_wait_seconds: float  # longest wait for the worker's prediction slot
    decode_budget: DecodeBudgetConfig
    model_retry_seconds: float  # how often a missing model is looked for again
    monitoring: MonitoringConfig
    use_registry: bool  # True when MLFLOW_TRACKING_URI is set: serve models:/<name>@<alias>
    tracking: TrackingConfig
