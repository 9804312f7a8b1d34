"""The ConfigurationManager: good configs give frozen entities, bad ones a message naming file and key."""

import dataclasses
from pathlib import Path

import pytest

from cancer_classifier.config import ConfigurationManager
from cancer_classifier.core.errors import ConfigError
from tests.conftest import REPO


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
    ],
)
def test_bad_values_name_file_key_and_expectation(project, config, params, message):
    with pytest.raises(ConfigError) as error:
        project(config=config, params=params)
    assert message in str(error.value)
    assert ".yaml" in str(error.value)


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
