"""Every model choice on small data, the saved preprocessing round trip, evaluation, the registry gate."""

import dataclasses
import os

import numpy as np
import pytest
import skops.io
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from cancer_classifier.core.io import load_json, save_json
from cancer_classifier.core.metrics import HEADLINE
from cancer_classifier.tabular.components.data import load_split
from cancer_classifier.tabular.components.evaluation import TabularEvaluation
from cancer_classifier.tabular.components.ingestion import TabularIngestion
from cancer_classifier.tabular.components.registry import TabularRegistry
from cancer_classifier.tabular.components.training import TabularTraining
from cancer_classifier.tabular.model import METADATA_FILE, MODEL_FILE, TabularModel
from cancer_classifier.tabular.serving import TabularPredictor
from tests.tabular_support import tabular_project

DOCKER_LAB = ["mean radius", "mean texture", "mean smoothness", "mean perimeter"]
SMALL = {
    "random_forest": {"n_estimators": 30},
    "hist_gradient_boosting": {"max_iter": 30},
    "keras": {"epochs": 40, "patience": 5},
}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("tabular-models")
    manager = tabular_project(root, colorectal=False)
    TabularIngestion(manager.tabular().ingestion("breast-cancer")).run()
    return root


def train(root, kind: str, features="all"):
    manager = tabular_project(root, {"breast-cancer": {"model": {"kind": kind, "features": features, **SMALL}}}, False)
    config = manager.tabular().training("breast-cancer")
    return TabularTraining(config).run(), config


@pytest.mark.parametrize("kind", ["logistic_regression", "random_forest", "hist_gradient_boosting", "keras"])
def test_each_model_choice_learns_breast_cancer(ingested, kind):
    model, config = train(ingested, kind)
    test, labels = load_split(config.data_dir, "test")
    proba = model.predict_proba(test)
    assert proba.shape == (len(test), 2) and np.allclose(proba.sum(axis=1), 1)
    malignant = model.classes.index("malignant")
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(labels == malignant, proba[:, malignant]) > 0.95
    assert model.metadata["model"]["kind"] == kind
    assert "not for clinical use" in model.metadata["intended_use"]


def test_docker_lab_network_on_four_features_is_a_params_choice(ingested):
    model, config = train(ingested, "keras", DOCKER_LAB)
    assert [c.name for c in model.columns] == DOCKER_LAB
    assert model.pipeline.named_steps["model"].model_.layers[-1].get_config()["activation"] == "sigmoid"
    test, labels = load_split(config.data_dir, "test")
    assert (model.predict_proba(test).argmax(axis=1) == labels).mean() > 0.8


@pytest.mark.parametrize("kind", ["logistic_regression", "keras"])
def test_saved_preprocessing_round_trip(ingested, kind):
    model, config = train(ingested, kind)
    train_rows, _ = load_split(config.data_dir, "train")
    test, _ = load_split(config.data_dir, "test")
    loaded = TabularModel.load(config.root_dir)
    np.testing.assert_allclose(loaded.predict_proba(test), model.predict_proba(test), rtol=1e-6)
    scaler = loaded.pipeline.named_steps["preprocess"].named_transformers_["scale"]
    # fitted on the training split only, and it travels inside the artifact
    np.testing.assert_allclose(scaler.mean_, train_rows.mean().to_numpy())
    assert loaded.metadata == model.metadata


def test_a_model_file_holding_an_untrusted_type_is_refused_without_running_it(ingested, tmp_path):
    """Someone who can write the artifact store hides os.system in the Pipeline: skops refuses the
    file, because only the listed types may be built from it."""
    model, _ = train(ingested, "logistic_regression")
    hostile = Pipeline([("run", FunctionTransformer(os.system, kw_args={})), ("model", model.pipeline)])
    skops.io.dump(hostile, tmp_path / MODEL_FILE)
    save_json(tmp_path / METADATA_FILE, model.metadata)
    with pytest.raises(skops.io.exceptions.UntrustedTypesFoundException, match="system"):
        TabularModel.load(tmp_path)


def test_evaluation_uses_the_chest_ct_metric_set_and_the_registry_gate(ingested):
    train(ingested, "logistic_regression")
    tabular = tabular_project(ingested, colorectal=False).tabular()
    report = TabularEvaluation(tabular.evaluation("breast-cancer")).run()
    assert set(report["metrics"]) == set(HEADLINE)
    assert report["metrics"]["roc_auc"] > 0.97 and report["test_rows"] == 114
    low, high = report["ci95"]["roc_auc"]
    assert low <= report["metrics"]["roc_auc"] <= high
    assert report["cross_validation"]["folds"] == 3 and report["cross_validation"]["roc_auc_mean"] > 0.97
    assert sum(map(sum, report["confusion_matrix"])) == 114
    scores = load_json(ingested / "scores/breast-cancer.json")
    assert scores["roc_auc"] == round(report["metrics"]["roc_auc"], 4)
    # every bound a scalar of its own: `dvc metrics show` and `dvc exp show` drop lists
    for name, (low, high) in report["ci95"].items():
        assert (scores[f"{name}_ci95_low"], scores[f"{name}_ci95_high"]) == (round(low, 4), round(high, 4))
    assert not [key for key, value in scores.items() if isinstance(value, list | dict)]
    for plot in ("roc.png", "precision_recall.png", "calibration.png", "confusion_matrix.png"):
        assert (tabular.evaluation("breast-cancer").root_dir / plot).stat().st_size > 1000
    first = TabularRegistry(tabular.registry("breast-cancer")).run()
    second = TabularRegistry(tabular.registry("breast-cancer")).run()
    assert first["promoted"] and not second["promoted"] and "does not beat champion version 1" in second["reason"]
    registration = load_json(ingested / "artifacts/tabular/breast-cancer/register/registration.json")
    assert registration["registered_model"] == "breast-cancer-classifier" and registration["version"] == "2"
    # The app in registry mode serves the champion (version 1), loaded from its skops file.
    (config,) = (c for c in tabular.serving() if c.task.name == "breast-cancer")
    registered = TabularPredictor.from_config(dataclasses.replace(config, use_registry=True))
    local = TabularPredictor.from_config(config)
    assert (registered.info.source, registered.info.version) == ("registry", "1")
    test, _ = load_split(tabular.evaluation("breast-cancer").data_dir, "test")
    assert registered.predict(test.head(20)) == local.predict(test.head(20))
