"""Stages 3-5 on the tiny synthetic project: held-out evaluation, outputs, MLflow registry and gate."""

import csv
import dataclasses
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cancer_classifier.components.dataset import split_files
from cancer_classifier.components.registry import ModelRegistry
from cancer_classifier.modeling import load_classifier
from cancer_classifier.tracking import use_experiment
from cancer_classifier.utils.common import load_json
from cancer_classifier.utils.images import decode_image


def test_training_writes_model_mapping_history_and_demo_metadata(trained_project):
    out = trained_project.training().root_dir
    assert load_json(out / "class_indices.json") == {"adenocarcinoma": 0, "normal": 1}
    metadata = load_json(out / "model_metadata.json")
    assert metadata["demo"] is True and "not for clinical use" in metadata["intended_use"]
    history = load_json(out / "history.json")["head"]
    assert len(history["loss"]) >= 1 and "val_loss" in history
    assert not list(out.parent.glob(".*partial"))


def test_evaluation_uses_only_the_held_out_test_split(trained_project):
    config = trained_project.evaluation()
    test_files, _ = split_files(config.data_dir, "test")
    train_files, _ = split_files(config.data_dir, "train")
    with open(config.root_dir / "predictions.csv", newline="") as file:
        predicted = [row["file"] for row in csv.DictReader(file)]
    assert sorted(predicted) == sorted(path.rsplit("/", 1)[1] for path in test_files)
    assert not set(predicted) & {path.rsplit("/", 1)[1] for path in train_files}
    report = load_json(config.root_dir / "evaluation.json")
    assert report["test_images"] == len(test_files)


def test_scores_have_every_metric_with_an_interval_and_plots(trained_project):
    config = trained_project.evaluation()
    scores = json.loads(config.scores_path.read_text())
    for name in ("accuracy", "roc_auc", "sensitivity", "specificity", "precision", "f1", "jaccard", "brier"):
        low, high = scores["ci95"][name]
        assert low <= scores[name] <= high
    assert scores["demo"] is True
    assert scores["roc_auc"] >= 0.75  # the tiny demo model learned the phantoms
    for plot in ("roc.png", "precision_recall.png", "calibration.png", "confusion_matrix.png"):
        assert (config.root_dir / plot).stat().st_size > 1000
    assert (config.root_dir / "dvclive/plots/sklearn/roc.json").exists()


def test_model_is_registered_with_alias_tags_and_loads_back_through_mlflow(trained_project):
    tracking = trained_project.tracking()
    use_experiment(tracking)
    client = MlflowClient()
    champion = client.get_model_version_by_alias(tracking.registered_model, tracking.alias)
    assert champion.tags["demo"] == "true" and "not for clinical use" in champion.tags["intended_use"]
    run = client.get_run(champion.run_id)
    assert run.data.metrics["test_roc_auc"] == pytest.approx(
        load_json(trained_project.evaluation().root_dir / "evaluation.json")["metrics"]["roc_auc"]
    )
    assert run.data.tags["data_manifest_sha256"] and run.data.tags["base_weights"] == "none"
    training_run = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert "head_val_loss" in training_run.data.metrics  # per-epoch metrics from training
    paths, _ = split_files(trained_project.evaluation().data_dir, "test")
    image = decode_image(Path(paths[0]).read_bytes())[None].astype("float32")  # raw: the model harmonises
    served = mlflow.pyfunc.load_model(f"models:/{tracking.registered_model}@{tracking.alias}").predict(image)
    local = load_classifier(trained_project.training().root_dir / "model.keras").predict(image, verbose=0)
    assert np.allclose(np.asarray(served), local, atol=1e-6)


def test_promotion_gate_keeps_the_champion_unless_beaten(trained_project, tmp_path):
    # Its own output folder: the session's registration.json (what serving and baking read) stays as it was.
    config = dataclasses.replace(trained_project.registry(), root_dir=tmp_path / "register")
    tracking = trained_project.tracking()
    use_experiment(tracking)
    client = MlflowClient()
    before = client.get_model_version_by_alias(tracking.registered_model, tracking.alias).version
    decision = ModelRegistry(config).run()  # same model, same score: not better
    assert decision["promoted"] is False and "does not beat" in decision["reason"]
    assert str(client.get_model_version_by_alias(tracking.registered_model, tracking.alias).version) == str(before)
    registry = ModelRegistry(config)
    newest = max(int(v.version) for v in client.search_model_versions(f"name='{tracking.registered_model}'"))
    assert registry.promote(client, str(newest), score=2.0)["promoted"] is True
    assert str(client.get_model_version_by_alias(tracking.registered_model, tracking.alias).version) == str(newest)
