"""The only reader of config/config.yaml and params.yaml.

Both files are checked against a schema (missing or unknown keys, wrong types) and for impossible
values before any stage runs; every error names the file, the key and what was expected.
"""

from pathlib import Path
from typing import Any

from cancer_classifier.config.schema import (
    FRACTION,
    NUMBER,
    OPTIONAL_STR,
    POSITIVE,
    PROMOTION_METRICS,
    Check,
    at_least,
    between,
    check_schema,
    check_values,
    flatten,
    is_number,
    one_of,
)
from cancer_classifier.config.tabular import TabularConfiguration
from cancer_classifier.core import settings
from cancer_classifier.core.errors import ConfigError
from cancer_classifier.core.io import read_yaml
from cancer_classifier.entity import (
    AugmentationConfig,
    DataIngestionConfig,
    DecodeBudgetConfig,
    EvaluationConfig,
    FeaturesConfig,
    HttpLimits,
    MonitoringConfig,
    PrepareBaseModelConfig,
    RegistryConfig,
    ServingConfig,
    SyntheticConfig,
    TrackingConfig,
    TrainingConfig,
)

CONFIG_FILE_PATH = Path("config/config.yaml")
PARAMS_FILE_PATH = Path("params.yaml")

VGG16_MIN_IMAGE_SIZE = 32
VGG16_CONV_BLOCKS = 5
PRECISIONS = ("auto", "float32", "mixed_bfloat16")
ENGINES = ("auto", "tensorflow", "openvino")
HEADS = ("logistic", "mlp")  # modeling.build_head's kinds
HEX = set("0123456789abcdef")

CONFIG_SCHEMA: dict[str, Any] = {
    "data_ingestion": {
        "root_dir": str,
        "source": str,
        "source_sha256": OPTIONAL_STR,
        "folder_separator": str,
        "external_test": OPTIONAL_STR,
        "external_test_sha256": OPTIONAL_STR,
    },
    "prepare_base_model": {"root_dir": str},
    "features": {"root_dir": str},
    "training": {"root_dir": str},
    "evaluation": {"root_dir": str, "scores_file": str},
    "register": {"root_dir": str},
    "serving": {
        "model_dir": str,
        "registration_file": str,
        "model_card_file": str,
        "max_upload_mb": NUMBER,
        "class_names": dict,
        "dicom_window": {"center": NUMBER, "width": NUMBER},
        "precision": str,
        "engine": str,
        "max_batch": int,
        "read_timeout_seconds": NUMBER,
        "body_deadline_seconds": NUMBER,
        "predict_wait_seconds": NUMBER,
        "decode_budget": {
            "max_image_pixels": int,
            "max_request_pixels": int,
            "max_image_decoded_mb": NUMBER,
            "max_request_decoded_mb": NUMBER,
        },
        "model_retry_seconds": NUMBER,
        "monitoring": {"log_file": str, "window": int, "drift_alert_psi": NUMBER, "max_log_mb": NUMBER},
    },
    "tracking": {
        "tracking_uri": str,
        "artifact_location": str,
        "experiment": str,
        "registered_model": str,
        "alias": str,
        "http_max_retries": int,
        "http_timeout_seconds": int,
        "http_backoff_factor": int,
    },
    "tabular": dict,  # the tabular tasks: checked by config/tabular.py
}

PARAMS_SCHEMA: dict[str, Any] = {
    "data": {
        "classes": list,
        "positive_class": str,
        "split": {"train": NUMBER, "val": NUMBER, "test": NUMBER},
        "seed": int,
        "near_duplicate_distance": int,
        "synthetic": {"images_per_class": int, "image_size": int},
    },
    "base_model": {
        "seed": int,
        "image_size": int,
        "harmonise": bool,
        "weights": str,
        "pooling": str,
        "dense_units": int,
        "dropout": NUMBER,
    },
    "features": {
        "seed": int,
        "batch_size": int,
        "precision": str,
        "engine": str,
        "views": int,
        "augmentation": {"flip": bool, "rotation": NUMBER, "zoom": NUMBER, "contrast": NUMBER},
    },
    "training": {
        "seed": int,
        "batch_size": int,
        "epochs": int,
        "learning_rate": NUMBER,
        "early_stopping_patience": int,
        "class_weights": bool,
        "head": {"candidates": list, "logistic_c": list, "cv_folds": int},
        "ood_components": int,
        "ood_quantile": NUMBER,
        "fine_tune": {"blocks": int, "epochs": int, "learning_rate": NUMBER},
    },
    "evaluation": {
        "promotion_metric": str,
        "bootstrap_resamples": int,
        "shortcut_margin": NUMBER,
        "seed": int,
        "serving_tolerance": {"label_changes": int, "roc_auc": NUMBER},
    },
    "tabular": dict,  # the tabular tasks: checked by config/tabular.py
}


class ConfigurationManager:
    """Validate config.yaml and params.yaml and hand each stage its frozen settings."""

    def __init__(
        self,
        config_path: Path = CONFIG_FILE_PATH,
        params_path: Path = PARAMS_FILE_PATH,
        project_root: Path | None = None,
    ) -> None:
        self.config_path = Path(config_path)
        self.params_path = Path(params_path)
        self.root = Path(project_root) if project_root else settings.project_root()
        self.config = read_yaml(self.config_path)
        self.params = read_yaml(self.params_path)
        check_schema(self.config, CONFIG_SCHEMA, self.config_path)
        check_schema(self.params, PARAMS_SCHEMA, self.params_path)
        for check in (
            self._check_data_ingestion,
            self._check_base_model,
            self._check_features,
            self._check_training,
            self._check_evaluation,
            self.tabular,  # the tabular tasks' sections are checked with everything else
            self._check_tracking,
            self._check_serving,
        ):
            check()

    # -- values the schema cannot express: each section's validator sits beside its entity below ----

    def _check_params(self, section: str, checks: dict[str, Check]) -> None:
        check_values(self.params_path, self.params[section], checks, f"{section}.")

    def _check_config(self, section: str, checks: dict[str, Check]) -> None:
        check_values(self.config_path, self.config[section], checks, f"{section}.")

    # -- entities, each after its section's validator --------------------------------------------

    def _path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.root / path

    def _dir(self, stage: str) -> Path:
        return self._path(self.config[stage]["root_dir"])

    def _check_data_ingestion(self) -> None:
        classes = self.params["data"]["classes"]
        distinct = all(isinstance(c, str) for c in classes) and len(set(classes)) == len(classes) >= 2
        self._check_params("data", {
            "classes": Check(lambda _: distinct, "a list of at least two distinct class names"),
            "positive_class": one_of(classes, f"one of data.classes {classes}"),
            "split": Check(
                lambda split: min(split.values()) > 0 and abs(sum(split.values()) - 1) <= 1e-6,
                "three fractions above 0 that sum to 1",
            ),
            "near_duplicate_distance": at_least(0),
            "synthetic.images_per_class": at_least(10),
            "synthetic.image_size": at_least(VGG16_MIN_IMAGE_SIZE),
        })
        self._check_source("source")
        if self.config["data_ingestion"]["external_test"] is not None:
            self._check_source("external_test")

    def _check_source(self, key: str) -> None:
        """``data_ingestion.source`` or ``.external_test``: synthetic (source only), a path or a URL with its hash."""
        ingestion = self.config["data_ingestion"]
        source, sha_key = ingestion[key], f"{key}_sha256"
        sha256 = ingestion[sha_key]
        if source.startswith(("http://", "https://")):
            if not sha256:
                raise ConfigError(
                    f"{self.config_path}: 'data_ingestion.{sha_key}' is required for a URL, "
                    "so a changed or corrupt download is never used"
                )
        elif not (source == "synthetic" and key == "source") and not self._path(source).exists():
            raise ConfigError(
                f"{self.config_path}: 'data_ingestion.{key}' is {source!r}, which does not exist; expected "
                f"{chr(39) + 'synthetic' + chr(39) + ', ' if key == 'source' else ''}a folder of class "
                "subfolders, a .zip of such folders or an http(s) URL"
            )
        hex_digits = Check(lambda sha: sha is None or (len(sha) == 64 and set(sha.lower()) <= HEX), "64 hex digits")
        self._check_config("data_ingestion", {sha_key: hex_digits})

    def data_ingestion(self) -> DataIngestionConfig:
        ingestion, data = self.config["data_ingestion"], self.params["data"]
        return DataIngestionConfig(
            root_dir=self._dir("data_ingestion"),
            source=self._source(ingestion["source"]),
            source_sha256=ingestion["source_sha256"],
            external_test=self._source(ingestion["external_test"]),
            external_test_sha256=ingestion["external_test_sha256"],
            folder_separator=ingestion["folder_separator"],
            classes=tuple(data["classes"]),
            split={k: float(v) for k, v in data["split"].items()},
            seed=data["seed"],
            near_duplicate_distance=data["near_duplicate_distance"],
            synthetic=SyntheticConfig(**data["synthetic"]),
        )

    def _source(self, source: str | None) -> str | None:
        """A local source as an absolute path; synthetic, URLs and None as they are."""
        if source is None or source == "synthetic" or source.startswith(("http://", "https://")):
            return source
        return str(self._path(source))

    def _weights(self) -> str:
        """base_model.weights: 'imagenet', 'none' or the weights file's absolute path."""
        weights = self.params["base_model"]["weights"]
        return weights if weights in ("imagenet", "none") else str(self._path(weights))

    def _check_base_model(self) -> None:
        self._check_params("base_model", {
            "image_size": at_least(VGG16_MIN_IMAGE_SIZE),
            "dense_units": at_least(1),
            "dropout": FRACTION,
            "pooling": one_of(("avg", "max"), "'avg' or 'max'"),
            "weights": Check(
                lambda weights: weights in ("imagenet", "none") or self._path(weights).is_file(),
                "'imagenet', 'none' or the path of an existing weights file",
            ),
        })

    def prepare_base_model(self) -> PrepareBaseModelConfig:
        base = self.params["base_model"]
        return PrepareBaseModelConfig(
            root_dir=self._dir("prepare_base_model"),
            seed=base["seed"],
            image_size=base["image_size"],
            harmonise=base["harmonise"],
            weights=self._weights(),
            pooling=base["pooling"],
            dense_units=base["dense_units"],
            dropout=float(base["dropout"]),
        )

    def _augmentation(self) -> AugmentationConfig:
        augmentation = self.params["features"]["augmentation"]
        return AugmentationConfig(
            flip=augmentation["flip"],
            rotation=float(augmentation["rotation"]),
            zoom=float(augmentation["zoom"]),
            contrast=float(augmentation["contrast"]),
        )

    def _check_features(self) -> None:
        self._check_params("features", {
            "batch_size": at_least(1),
            "views": at_least(1),
            "precision": one_of(PRECISIONS),
            "engine": one_of(ENGINES),
            **{f"augmentation.{key}": FRACTION for key in ("rotation", "zoom", "contrast")},
        })

    def features(self) -> FeaturesConfig:
        features = self.params["features"]
        return FeaturesConfig(
            root_dir=self._dir("features"),
            data_dir=self._dir("data_ingestion"),
            base_model_dir=self._dir("prepare_base_model"),
            weights=self._weights(),
            seed=features["seed"],
            batch_size=features["batch_size"],
            views=features["views"],
            augmentation=self._augmentation(),
            precision=features["precision"],
            engine=features["engine"],
        )

    def _check_training(self) -> None:
        names = self.params["training"]["head"]["candidates"]
        self._check_params("training", {
            "batch_size": at_least(1),
            "epochs": at_least(1),
            "learning_rate": POSITIVE,
            "early_stopping_patience": at_least(1),
            "head.candidates": Check(
                lambda _: bool(names) and all(n in HEADS for n in names) and len(set(names)) == len(names),
                f"a list of distinct names from {HEADS}",
            ),
            "head.logistic_c": Check(  # only the logistic head uses them
                lambda c: "logistic" not in names or (bool(c) and all(is_number(v) and v > 0 for v in c)),
                "a list of positive numbers",
            ),
            "head.cv_folds": at_least(2),
            "ood_components": at_least(1),
            "ood_quantile": between(0.5, 1),
            "fine_tune.blocks": between(0, VGG16_CONV_BLOCKS),
            "fine_tune.epochs": at_least(1),
            "fine_tune.learning_rate": POSITIVE,
        })

    def training(self) -> TrainingConfig:
        train = self.params["training"]
        return TrainingConfig(
            root_dir=self._dir("training"),
            data_dir=self._dir("data_ingestion"),
            base_model_dir=self._dir("prepare_base_model"),
            weights=self._weights(),
            features_dir=self._dir("features"),
            seed=train["seed"],
            batch_size=train["batch_size"],
            epochs=train["epochs"],
            learning_rate=float(train["learning_rate"]),
            early_stopping_patience=train["early_stopping_patience"],
            class_weights=train["class_weights"],
            head_candidates=tuple(train["head"]["candidates"]),
            logistic_c=tuple(float(c) for c in train["head"]["logistic_c"]),
            cv_folds=train["head"]["cv_folds"],
            augmentation=self._augmentation(),
            ood_components=train["ood_components"],
            ood_quantile=float(train["ood_quantile"]),
            fine_tune_blocks=train["fine_tune"]["blocks"],
            fine_tune_epochs=train["fine_tune"]["epochs"],
            fine_tune_learning_rate=float(train["fine_tune"]["learning_rate"]),
            precision=self.params["features"]["precision"],
            engine=self.params["features"]["engine"],
            tracking=self.tracking(),
        )

    def _check_evaluation(self) -> None:
        self._check_params("evaluation", {
            "promotion_metric": one_of(PROMOTION_METRICS),
            "bootstrap_resamples": at_least(100),
            "shortcut_margin": FRACTION,
            "serving_tolerance.label_changes": at_least(0),
            "serving_tolerance.roc_auc": at_least(0),
        })

    def evaluation(self) -> EvaluationConfig:
        evaluation = self.params["evaluation"]
        return EvaluationConfig(
            root_dir=self._dir("evaluation"),
            data_dir=self._dir("data_ingestion"),
            model_dir=self._dir("training"),
            base_model_dir=self._dir("prepare_base_model"),
            scores_path=self._path(self.config["evaluation"]["scores_file"]),
            positive_class=self.params["data"]["positive_class"],
            bootstrap_resamples=evaluation["bootstrap_resamples"],
            shortcut_margin=float(evaluation["shortcut_margin"]),
            seed=evaluation["seed"],
            tolerated_label_changes=evaluation["serving_tolerance"]["label_changes"],
            tolerated_roc_auc_change=float(evaluation["serving_tolerance"]["roc_auc"]),
        )

    def _check_tracking(self) -> None:
        self._check_config("tracking", {
            "http_max_retries": at_least(0),
            "http_timeout_seconds": at_least(1),
            "http_backoff_factor": at_least(0),
        })

    def tracking(self) -> TrackingConfig:
        tracking = self.config["tracking"]
        # The environment wins so that DagsHub or a team server is opt-in without editing files.
        server = settings.tracking_uri()
        uri = server or tracking["tracking_uri"]
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = f"sqlite:///{self._path(uri.removeprefix('sqlite:///'))}"
        return TrackingConfig(
            tracking_uri=uri,
            # A server keeps its own artifact store; the local folder is only for the local store.
            artifact_location=None if server else self._path(tracking["artifact_location"]).as_uri(),
            experiment=tracking["experiment"],
            registered_model=tracking["registered_model"],
            alias=tracking["alias"],
            http=HttpLimits(
                tracking["http_max_retries"], tracking["http_timeout_seconds"], tracking["http_backoff_factor"]
            ),
        )

    def _check_serving(self) -> None:
        self._check_config("serving", {
            "max_upload_mb": POSITIVE,
            "class_names": Check(
                lambda names: all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in names.items())
                and len({v.strip().casefold() for v in names.values()}) == len(names),
                "a mapping of class names to non-empty display names, no two alike",
            ),
            "dicom_window.width": POSITIVE,
            "precision": one_of(PRECISIONS),
            "engine": one_of(ENGINES),
            "max_batch": at_least(1),
            **dict.fromkeys(("read_timeout_seconds", "body_deadline_seconds", "predict_wait_seconds"), POSITIVE),
            **{f"decode_budget.{key}": POSITIVE for key in CONFIG_SCHEMA["serving"]["decode_budget"]},
            "model_retry_seconds": POSITIVE,
            "monitoring.window": at_least(10),
            "monitoring.drift_alert_psi": POSITIVE,
            "monitoring.max_log_mb": POSITIVE,
        })

    def serving(self) -> ServingConfig:
        serving = self.config["serving"]
        budget = serving["decode_budget"]
        return ServingConfig(
            model_dir=self._path(serving["model_dir"]),
            registration_file=self._path(serving["registration_file"]),
            model_card_file=self._path(serving["model_card_file"]),
            max_upload_bytes=int(serving["max_upload_mb"] * 1024 * 1024),
            class_names=dict(serving["class_names"]),
            dicom_window_center=float(serving["dicom_window"]["center"]),
            dicom_window_width=float(serving["dicom_window"]["width"]),
            precision=serving["precision"],
            engine=serving["engine"],
            max_batch=serving["max_batch"],
            read_timeout_seconds=float(serving["read_timeout_seconds"]),
            body_deadline_seconds=float(serving["body_deadline_seconds"]),
            predict_wait_seconds=float(serving["predict_wait_seconds"]),
            decode_budget=DecodeBudgetConfig(
                max_image_pixels=budget["max_image_pixels"],
                max_request_pixels=budget["max_request_pixels"],
                max_image_bytes=int(budget["max_image_decoded_mb"] * 1024 * 1024),
                max_request_bytes=int(budget["max_request_decoded_mb"] * 1024 * 1024),
            ),
            model_retry_seconds=float(serving["model_retry_seconds"]),
            monitoring=MonitoringConfig(
                log_file=self._path(serving["monitoring"]["log_file"]),
                window=serving["monitoring"]["window"],
                drift_alert_psi=float(serving["monitoring"]["drift_alert_psi"]),
                max_log_bytes=int(serving["monitoring"]["max_log_mb"] * 1024 * 1024),
            ),
            use_registry=settings.tracking_uri() is not None,
            tracking=self.tracking(),
        )

    def registry(self) -> RegistryConfig:
        return RegistryConfig(
            root_dir=self._dir("register"),
            data_dir=self._dir("data_ingestion"),
            base_model_dir=self._dir("prepare_base_model"),
            model_dir=self._dir("training"),
            evaluation_dir=self._dir("evaluation"),
            scores_path=self._path(self.config["evaluation"]["scores_file"]),
            promotion_metric=self.params["evaluation"]["promotion_metric"],
            positive_class=self.params["data"]["positive_class"],
            params=flatten({group: values for group, values in self.params.items() if group != "tabular"}),
            tracking=self.tracking(),
            serving=self.serving(),
        )

    def tabular(self) -> TabularConfiguration:
        """The tabular tasks (breast cancer, colorectal survival): their stages' and serving's settings."""
        return TabularConfiguration(
            (self.config_path, self.params_path),
            (self.config["tabular"], self.params["tabular"]),
            self._path,
            self.tracking,
        )
