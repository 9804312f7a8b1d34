"""Stages 3-5 on the tiny synthetic project: held-out evaluation, outputs, MLflow registry and gate."""

import base64
import csv
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from mlflow.tracking import MlflowClient

from cancer_classifier.chest_ct.components.dataset import split_files
from cancer_classifier.chest_ct.modeling import load_classifier
from cancer_classifier.chest_ct.scoring import VARIANTS
from cancer_classifier.core.images import decode_image
from cancer_classifier.core.io import load_json
from cancer_classifier.core.tracking import use_experiment
from tests.parity import COMPUTABLE


def test_training_writes_model_mapping_history_and_demo_metadata(trained_project):
    out = trained_project.training().root_dir
    assert load_json(out / "class_indices.json") == {"adenocarcinoma": 0, "normal": 1}
    metadata = load_json(out / "model_metadata.json")
    assert metadata["demo"] is True and "not for clinical use" in metadata["intended_use"]
    selection = load_json(out / "history.json")["head_selection"]
    assert selection["chosen"] in selection["candidates"] and selection["refit"] == "train + val"
    assert metadata["head"] == selection["chosen"]
    assert not list(out.parent.glob(".*partial"))


def test_evaluation_uses_only_the_held_out_test_split(trained_project):
    config = trained_project.evaluation()
    test_files, _ = split_files(config.data_dir, "test")
    train_files, _ = split_files(config.data_dir, "train")
    with open(config.root_dir / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert {row["split"] for row in rows} == {"test"}  # the tiny project has no external test set
    assert {row["variant"] for row in rows} == {str(v) for v in COMPUTABLE}
    predicted = [row["file"] for row in rows if row["variant"] == "tensorflow/float32"]
    assert sorted(predicted) == sorted(path.rsplit("/", 1)[1] for path in test_files)
    assert not set(predicted) & {path.rsplit("/", 1)[1] for path in train_files}
    report = load_json(config.root_dir / "evaluation.json")
    assert report["test_images"] == len(test_files)


def test_scores_have_every_metric_with_an_interval_and_plots(trained_project):
    config = trained_project.evaluation()
    scores = json.loads(config.scores_path.read_text())
    for name in ("accuracy", "roc_auc", "sensitivity", "specificity", "precision", "f1", "jaccard", "brier"):
        assert scores[f"{name}_ci95_low"] <= scores[name] <= scores[f"{name}_ci95_high"]
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
    assert run.data.tags["servable_variants"].split(",") == [str(v) for v in COMPUTABLE]
    assert {f"test_{str(v).replace('/', '_')}_roc_auc" for v in COMPUTABLE[1:]} <= set(run.data.metrics)
    assert "test_openvino_float32_label_changes" in run.data.metrics
    training_run = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert any(name.startswith("cv_roc_auc_") for name in training_run.data.metrics)  # the head selection
    paths, _ = split_files(trained_project.evaluation().data_dir, "test")
    image = decode_image(Path(paths[0]).read_bytes())[None].astype("float32")  # raw: the model harmonises
    # The registered model is a pyfunc that takes the file itself, as base64, as the app takes an upload.
    registered = mlflow.pyfunc.load_model(f"models:/{tracking.registered_model}@{tracking.alias}")
    served = registered.predict(pd.DataFrame({"image": [base64.b64encode(Path(paths[0]).read_bytes()).decode()]}))
    local = load_classifier(trained_project.training().root_dir / "model.keras").predict(image, verbose=0)
    classes = load_json(trained_project.training().root_dir / "class_indices.json")
    assert list(served[0]["probabilities"]) == list(classes)
    assert np.allclose(list(served[0]["probabilities"].values()), local[0], atol=1e-5)
    assert (served[0]["engine"], served[0]["precision"]) == ("tensorflow", "float32")
    assert served[0]["in_distribution"] in (True, False)
    # Installable anywhere: pinned published packages, one TensorFlow, the project's code inside the model.
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{tracking.registered_model}@{tracking.alias}"))
    requirements = (folder / "requirements.txt").read_text().split()
    assert [r for r in requirements if r.startswith("tensorflow")] == [f"tensorflow-cpu=={tf.__version__}"]
    assert all("==" in r for r in requirements) and not any("cancer" in r for r in requirements)
    assert (folder / "code/cancer_classifier/chest_ct/serving/mlflow_model.py").is_file()


def test_evaluation_scores_every_variant_and_records_which_may_be_served(trained_project):
    report = load_json(trained_project.evaluation().root_dir / "evaluation.json")
    serving = report["serving_variants"]
    assert report["variant"] == serving["reference"] == "tensorflow/float32"
    assert set(serving["variants"]) == {str(v) for v in COMPUTABLE} - {"tensorflow/float32"}
    for variant in set(VARIANTS) - set(COMPUTABLE):  # never scored, so never served, and the verdict says why
        assert f"{variant} was not measured" in serving["verdict"]
    for variant, by_split in serving["variants"].items():
        agreement = by_split["test"]
        assert agreement["images"] == report["test_images"], variant
        assert 0 <= agreement["label_changes"] <= report["test_images"]
        assert 0 <= agreement["median_probability_difference"] <= agreement["max_probability_difference"] <= 1
    # OpenVINO float32 computes the same function as TensorFlow float32, to float32 rounding.
    assert serving["variants"]["openvino/float32"]["test"]["max_probability_difference"] < 1e-4
    # The tiny project's tolerance admits every variant, so the app's paths are all exercised by the tests.
    assert serving["servable"] == [str(v) for v in COMPUTABLE] and "may NOT" not in serving["verdict"]
    scores = json.loads(trained_project.evaluation().scores_path.read_text())
    assert scores["variants"][str(COMPUTABLE[-1])]["servable"] is True and scores["external"] is None
    card = load_json(trained_project.evaluation().root_dir / "model_card.json")
    assert card["serving_variants"]["servable"] == serving["servable"]
    assert "Served variants" in (trained_project.evaluation().root_dir / "model_card.md").read_text()
