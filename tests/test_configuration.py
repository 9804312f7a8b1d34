"""The ConfigurationManager: good configs give frozen entities, bad ones a message naming file and key."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from cancer_classifier.config import ConfigurationManager
from cancer_classifier.core.errors import ConfigError
from tests.conftest import REPO, write_project


def test_repo_config_gives_frozen_typed_entities():
    manager = ConfigurationManager(REPO / "config/config.yaml", REPO / "params.yaml", project_root=REPO)
    ingestion = manager.data_ingestion()
    assert ingestion.is_synthetic and ingestion.classes == ("adenocarcinoma", "normal")
    assert isinstance(manager.training().root_dir, Path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        manager.training().epochs = 1  # type: ignore[misc]


def test_tracking_uri_comes_from_environment_when_set(project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    tracking = project().tracking()
    assert tracking.tracking_uri == "http://127.0.0.1:5000"
    assert tracking.artifact_location is None  # the server keeps its own artifact store


@pytest.mark.parametrize(
    ("config", "params", "message"),
    [
        ({}, {"data": {"classez": ["a"]}}, "unknown key(s) ['data.classez']"),
        ({"tracking": {"alias": None}}, {}, "'tracking.alias' must be str"),
        ({}, {"training": {"epochs": -1}}, "'training.epochs' must be at least 1"),
        ({}, {"training": {"epochs": "10"}}, "'training.epochs' must be int"),
        ({}, {"training": {"class_weights": 1}}, "'training.class_weights' must be bool"),
        ({}, {"base_model": {"image_size": 16}}, "'base_model.image_size' must be at least 32"),
        ({}, {"base_model": {"pooling": "mean"}}, "'base_model.pooling' must be 'avg' or 'max'"),
        ({}, {"base_model": {"weights": "missing.weights.h5"}}, "'base_model.weights'"),
        ({}, {"data": {"classes": ["normal"]}}, "'data.classes' must be a list of at least two"),
        ({}, {"data": {"positive_class": "squamous"}}, "'data.positive_class' must be one of"),
        ({}, {"data": {"split": {"train": 0.5, "val": 0.1, "test": 0.1}}}, "'data.split'"),
        ({}, {"training": {"fine_tune": {"blocks": 6}}}, "'training.fine_tune.blocks' must be between 0 and 5"),
        ({}, {"evaluation": {"promotion_metric": "loss"}}, "'evaluation.promotion_metric'"),
        ({}, {"features": {"engine": "onnx"}}, "'features.engine' must be one of ('auto', 'tensorflow', 'openvino')"),
        ({"serving": {"engine": "OpenVINO"}}, {}, "'serving.engine' must be one of ('auto', 'tensorflow', 'openvino')"),
        ({}, {"evaluation": {"serving_tolerance": {"roc_auc": -1}}}, "'evaluation.serving_tolerance.roc_auc'"),
        ({"data_ingestion": {"source": "no/such/folder"}}, {}, "'data_ingestion.source' is 'no/such/folder'"),
        (
            {"data_ingestion": {"source": "https://example.org/ct.zip"}},
            {},
            "'data_ingestion.source_sha256' is required",
        ),
        (
            {"data_ingestion": {"external_test": "https://example.org/test.zip"}},
            {},
            "config.yaml: 'data_ingestion.external_test_sha256' is required",
        ),
        (
            {"data_ingestion": {"external_test": "no/such/test"}},
            {},
            "config.yaml: 'data_ingestion.external_test' is 'no/such/test', which does not exist; expected a folder",
        ),
        ({"data_ingestion": {"source_sha256": "abc"}}, {}, "'data_ingestion.source_sha256' must be 64 hex digits"),
        (
            {"data_ingestion": {"external_test": "https://example.org/test.zip", "external_test_sha256": "g" * 64}},
            {},
            "config.yaml: 'data_ingestion.external_test_sha256' must be 64 hex digits",
        ),
        (
            {"serving": {"class_names": {"normal": " "}}},
            {},
            "config.yaml: 'serving.class_names' must be a mapping of class names to non-empty display names",
        ),
        (  # two classes shown alike on the page could not be told apart
            {"serving": {"class_names": {"adenocarcinoma": "normal"}}},
            {},
            "config.yaml: 'serving.class_names' must be a mapping of class names to non-empty display names, no two alike",
        ),
        ({}, {"data": {"classes": ["normal", ["adenocarcinoma"]]}}, "'data.classes' must be a list of at least two"),
    ],
)
def test_bad_values_name_file_key_and_expectation(project, config, params, message):
    with pytest.raises(ConfigError) as error:
        project(config=config, params=params)
    assert message in str(error.value)
    assert ".yaml" in str(error.value)


# Every value check with no case above: (file, dotted key, a bad value, what the message expects).
VALUE_CHECKS = [
    ("params", "data.near_duplicate_distance", -1, "at least 0"),
    ("params", "data.synthetic.images_per_class", 9, "at least 10"),
    ("params", "data.synthetic.image_size", 31, "at least 32"),
    ("params", "base_model.dense_units", 0, "at least 1"),
    ("params", "base_model.dropout", 1, "in [0, 1)"),
    ("params", "features.batch_size", 0, "at least 1"),
    ("params", "features.views", 0, "at least 1"),
    ("params", "features.precision", "float16", "one of ('auto', 'float32', 'mixed_bfloat16')"),
    ("params", "features.augmentation.rotation", 1, "in [0, 1)"),
    ("params", "features.augmentation.zoom", -0.1, "in [0, 1)"),
    ("params", "features.augmentation.contrast", 1.5, "in [0, 1)"),
    ("params", "training.batch_size", 0, "at least 1"),
    ("params", "training.learning_rate", 0, "a positive number"),
    ("params", "training.early_stopping_patience", 0, "at least 1"),
    ("params", "training.head.candidates", ["svm"], "a list of distinct names from ('logistic', 'mlp')"),
    ("params", "training.head.candidates", ["mlp", "mlp"], "a list of distinct names from ('logistic', 'mlp')"),
    ("params", "training.head.candidates", [], "a list of distinct names from ('logistic', 'mlp')"),
    ("params", "training.head.candidates", [["logistic"]], "a list of distinct names from ('logistic', 'mlp')"),
    ("params", "training.head.logistic_c", [], "a list of positive numbers"),
    ("params", "training.head.logistic_c", [0.1, True], "a list of positive numbers"),
    ("params", "training.head.cv_folds", 1, "at least 2"),
    ("params", "training.ood_components", 0, "at least 1"),
    ("params", "training.ood_quantile", 0.4, "between 0.5 and 1"),
    ("params", "training.fine_tune.blocks", -1, "between 0 and 5"),
    ("params", "training.fine_tune.epochs", 0, "at least 1"),
    ("params", "training.fine_tune.learning_rate", -0.1, "a positive number"),
    ("params", "evaluation.bootstrap_resamples", 99, "at least 100"),
    ("params", "evaluation.shortcut_margin", 1, "in [0, 1)"),
    ("params", "evaluation.serving_tolerance.label_changes", -1, "at least 0"),
    ("config", "tracking.http_max_retries", -1, "at least 0"),
    ("config", "tracking.http_timeout_seconds", 0, "at least 1"),
    ("config", "tracking.http_backoff_factor", -1, "at least 0"),
    ("config", "serving.max_upload_mb", 0, "a positive number"),
    ("config", "serving.dicom_window.width", 0, "a positive number"),
    ("config", "serving.precision", "bf16", "one of ('auto', 'float32', 'mixed_bfloat16')"),
    ("config", "serving.max_batch", 0, "at least 1"),
    ("config", "serving.read_timeout_seconds", 0, "a positive number"),
    ("config", "serving.body_deadline_seconds", -1, "a positive number"),
    ("config", "serving.predict_wait_seconds", 0, "a positive number"),
    ("config", "serving.decode_budget.max_image_pixels", 0, "a positive number"),
    ("config", "serving.decode_budget.max_request_pixels", 0, "a positive number"),
    ("config", "serving.decode_budget.max_image_decoded_mb", 0, "a positive number"),
    ("config", "serving.decode_budget.max_request_decoded_mb", -1.5, "a positive number"),
    ("config", "serving.model_retry_seconds", 0, "a positive number"),
    ("config", "serving.monitoring.window", 9, "at least 10"),
    ("config", "serving.monitoring.drift_alert_psi", 0, "a positive number"),
    ("config", "serving.monitoring.max_log_mb", 0, "a positive number"),
    # the tabular tasks' sections (config/tabular.py; tests/test_tabular_data.py has the others)
    ("config", "tabular.max_rows", 0, "at least 1"),
    ("config", "tabular.tasks.breast-cancer.kind", "screening", "one of ('diagnostic', 'prognostic')"),
    ("params", "tabular.breast-cancer.data.classes", ["benign"], "two distinct class names (strings)"),
    ("params", "tabular.breast-cancer.data.on_duplicate", "keep", "one of ('fail', 'drop')"),
    ("params", "tabular.breast-cancer.data.test_size", 1, "a fraction in (0, 1)"),
    ("params", "tabular.breast-cancer.data.drop_columns", [1], "a list of column names"),
    ("params", "tabular.breast-cancer.model.keras.validation_fraction", 0, "a fraction in (0, 1)"),
    *[
        ("params", f"tabular.breast-cancer.model.{key}", 0, "a positive number")
        for key in (
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
        )
    ],
    ("params", "tabular.breast-cancer.evaluation.cv_folds", -1, "0 (no cross-validation) or at least 2"),
    ("params", "tabular.breast-cancer.evaluation.bootstrap_resamples", 99, "at least 100"),
    (
        "params",
        "tabular.breast-cancer.evaluation.promotion_metric",
        "loss",
        "one of ('roc_auc', 'accuracy', 'f1', 'sensitivity', 'specificity', 'jaccard')",
    ),
]


def nested(key: str, value) -> dict:
    """The override setting one dotted key: ``{"a": {"b": value}}`` for ``"a.b"``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


@pytest.mark.parametrize(
    ("file", "key", "value", "expected"), VALUE_CHECKS, ids=[f"{key}={value!r}" for _, key, value, _ in VALUE_CHECKS]
)
def test_each_value_check_names_file_key_expectation_and_value(project, file, key, value, expected):
    with pytest.raises(ConfigError) as error:
        project(**{file: nested(key, value)})
    assert str(error.value).endswith(f"{file}.yaml: '{key}' must be {expected}, got {value!r}")


@pytest.mark.parametrize(
    ("column", "message"),
    [
        (
            {"type": "category", "categories": ["a"], "unit": ""},
            "'site' must be a mapping with the keys ['categories', 'type']",
        ),
        ({"type": "number", "min": 0, "max": 1, "unit": None}, "'site.unit' must be a string ('' when unitless)"),
    ],
)
def test_bad_column_specs_name_the_schema_file_and_column(tmp_path, column, message):
    """The column checks tests/test_tabular_data.py leaves out (a task's tabular_schemas/<task>.yaml)."""
    config_path, params_path = write_project(tmp_path)
    schema = config_path.parent / "tabular_schemas" / "breast-cancer.yaml"
    schema.write_text(schema.read_text() + yaml.safe_dump({"site": column}))
    with pytest.raises(ConfigError) as error:
        ConfigurationManager(config_path, params_path, project_root=tmp_path)
    assert f"tabular_schemas/breast-cancer.yaml: {message}" in str(error.value)


def test_missing_key_is_named(project, tmp_path):
    manager = project()
    text = manager.params_path.read_text().replace("  batch_size: 16\n", "", 1)  # features: first, sorted
    manager.params_path.write_text(text)
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['features.batch_size'\]"):
        ConfigurationManager(manager.config_path, manager.params_path, project_root=tmp_path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nothere.yaml: file not found"):
        ConfigurationManager(tmp_path / "nothere.yaml", REPO / "params.yaml")


def test_a_yaml_alias_bomb_is_refused_with_the_file_named(tmp_path):
    from cancer_classifier.core.io import read_yaml

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]  # 10^9 values
    bomb = tmp_path / "params.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"params.yaml: aliases expand to more than"):
        read_yaml(bomb)
    (tmp_path / "ok.yaml").write_text("base: &b {lr: 0.1}\ncopy: *b\n")  # a plain alias is fine
    assert read_yaml(tmp_path / "ok.yaml") == {"base": {"lr": 0.1}, "copy": {"lr": 0.1}}
