"""The promotion gate compares like with like, in one real MLflow registry shared by two projects:
a demo model (synthetic phantoms) and a model trained on a folder of images ("real data" to the gate).

The champion is scored on the challenger's own test split through the same scoring path; a demo never
displaces a real-data model and never blocks one; models for other classes never compete; an error
while reading the champion fails the stage before anything is registered.
"""

import dataclasses
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cancer_classifier.chest_ct.components.data_ingestion import DataIngestion
from cancer_classifier.chest_ct.components.evaluation import Evaluation
from cancer_classifier.chest_ct.components.features import Features
from cancer_classifier.chest_ct.components.prepare_base_model import PrepareBaseModel
from cancer_classifier.chest_ct.components.registry import Challenger, Comparison, ModelRegistry, promotion_decision
from cancer_classifier.chest_ct.components.synthetic import write_phantoms
from cancer_classifier.chest_ct.components.training import Training
from cancer_classifier.config import ConfigurationManager
from cancer_classifier.core.errors import StageInputError, TrackingError
from cancer_classifier.core.io import load_json
from cancer_classifier.core.registration import ModelStore
from cancer_classifier.core.tracking import connect, use_experiment
from tests.conftest import TINY_PARAMS, merge, run_pipeline, write_project

# One folder of images treated as a real-data source; the same registry for both projects.
FOLDER_CLASSES = ("adenocarcinoma", "normal")


def project(root: Path, registry: Path, source: str) -> ConfigurationManager:
    """A tiny project reading ``source`` and tracking into the shared ``registry`` folder."""
    config = {
        "data_ingestion": {"source": source},
        "tracking": {"tracking_uri": f"sqlite:///{registry}/mlflow.db", "artifact_location": str(registry / "mlruns")},
    }
    return ConfigurationManager(*write_project(root, config, TINY_PARAMS), project_root=root)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """The demo registered first (champion), then the real-data model: their records and managers."""
    registry = tmp_path_factory.mktemp("registry")
    folder = tmp_path_factory.mktemp("folder-source")
    synthetic = TINY_PARAMS["data"]["synthetic"]
    write_phantoms(folder, FOLDER_CLASSES, synthetic["images_per_class"], synthetic["image_size"], seed=7)
    demo = project(tmp_path_factory.mktemp("demo"), registry, "synthetic")
    real = project(tmp_path_factory.mktemp("real"), registry, str(folder))
    return {"demo": (demo, run_pipeline(demo)), "real": (real, run_pipeline(real))}


def client_for(manager: ConfigurationManager) -> MlflowClient:
    use_experiment(manager.tracking())
    return MlflowClient()


def store(manager: ConfigurationManager) -> ModelStore:
    tracking = manager.tracking()
    return ModelStore(connect(tracking), tracking.registered_model, tracking.alias)


def champion(manager: ConfigurationManager) -> str:
    tracking = manager.tracking()
    return str(client_for(manager).get_model_version_by_alias(tracking.registered_model, tracking.alias).version)


def test_a_real_data_model_replaces_a_demo_champion_whatever_their_scores(registered):
    demo, first = registered["demo"]
    real, second = registered["real"]
    assert first["promoted"] is True and first["comparison"] == "none"
    assert second["promoted"] is True and second["comparison"] == "demo against real data"
    assert "replaces the demo" in second["reason"]
    assert champion(real) == second["version"]
    record = load_json(real.registry().root_dir / "registration.json")
    assert record["champion_version"] == first["version"] and record["champion_demo"] is True


def test_a_demo_model_never_displaces_a_real_data_champion(registered, tmp_path):
    demo, _ = registered["demo"]
    real, second = registered["real"]
    again = ModelRegistry(dataclasses.replace(demo.registry(), root_dir=tmp_path / "register")).run()
    assert again["promoted"] is False and "never displaces" in again["reason"]
    assert champion(demo) == second["version"]
    tags = client_for(demo).get_model_version(demo.tracking().registered_model, again["version"]).tags
    assert tags["promotion"] == again["reason"]


def test_the_champion_is_scored_on_the_challengers_split_and_must_be_beaten(registered, tmp_path):
    real, second = registered["real"]
    # The same model again: the champion scores exactly what the challenger scored on this split.
    again = ModelRegistry(dataclasses.replace(real.registry(), root_dir=tmp_path / "register")).run()
    assert again["promoted"] is False and "does not beat" in again["reason"]
    assert again["champion_score"] == pytest.approx(again["score"], abs=1e-9)
    assert "this model's test split" in again["comparison"]
    assert champion(real) == second["version"]

    assert again["challenger_score"] == pytest.approx(again["score"], abs=1e-6)  # predictions.csv, as evaluated

    tracking = real.tracking()
    evaluation = load_json(real.evaluation().root_dir / "evaluation.json")
    challenger = Challenger(again["score"], False, tuple(evaluation["classes"]), evaluation["test_images"])

    def decide(margin: float) -> dict:
        """The rule alone: a challenger ``margin`` above or below the champion on the same images."""
        scored = Comparison(again["champion_score"], again["champion_score"] + margin, evaluation["test_images"])
        return promotion_decision(store(real).champion(), tracking.alias, "roc_auc", challenger, lambda _: scored)

    assert decide(-0.01)["promote"] is False
    assert decide(+0.01)["promote"] is True


def test_the_champions_training_images_are_left_out_of_the_comparison(registered, tmp_path_factory):
    """A challenger re-split from the champion's own folder: its test split holds champion training images."""
    real, second = registered["real"]
    source = real.data_ingestion().source
    root = tmp_path_factory.mktemp("resplit")
    config = {"data_ingestion": {"source": source}}
    other = ConfigurationManager(
        *write_project(
            root, config, merge(TINY_PARAMS, {"data": {"seed": 3, "split": {"train": 0.3, "val": 0.2, "test": 0.5}}})
        ),
        project_root=root,
    )
    for make in (  # every stage before register (made in turn: each reads the one before)
        lambda: DataIngestion(other.data_ingestion()),
        lambda: PrepareBaseModel(other.prepare_base_model()),
        lambda: Features(other.features()),
        lambda: Training(other.training()),
        lambda: Evaluation(other.evaluation()),
    ):
        make().run()
    champion = store(real).champion()
    assert champion.version == second["version"]
    compared = ModelRegistry(dataclasses.replace(other.registry(), tracking=real.tracking())).compare(champion)
    test_images = load_json(other.evaluation().root_dir / "evaluation.json")["test_images"]
    assert 0 < compared.images < test_images and "left out: the champion trained on them" in compared.note


def test_a_real_data_model_replaces_a_demo_champion_even_with_other_classes(registered):
    demo, first = registered["demo"]
    real, second = registered["real"]
    tracking, client = real.tracking(), client_for(real)
    client.set_registered_model_alias(tracking.registered_model, tracking.alias, first["version"])  # demo champion
    try:
        challenger = Challenger(0.5, demo=False, classes=("a", "b", "c"), test_images=10)
        compare = ModelRegistry(real.registry()).compare
        decision = promotion_decision(store(real).champion(), tracking.alias, "roc_auc", challenger, compare)
    finally:
        client.set_registered_model_alias(tracking.registered_model, tracking.alias, second["version"])
    assert decision["promote"] is True and "replaces the demo" in decision["reason"]


def test_models_for_other_classes_never_compete(registered):
    real, _ = registered["real"]
    tracking = real.tracking()
    challenger = Challenger(1.0, demo=False, classes=("a", "b", "c"), test_images=10)
    compare = ModelRegistry(real.registry()).compare
    decision = promotion_decision(store(real).champion(), tracking.alias, "roc_auc", challenger, compare)
    assert decision["promote"] is False and "never compete" in decision["reason"]
    assert "tracking.registered_model" in decision["reason"]


def test_an_error_reading_the_champion_fails_the_stage_and_registers_nothing(registered, tmp_path):
    real, second = registered["real"]
    tracking = real.tracking()
    client = client_for(real)
    before = len(client.search_model_versions(f"name='{tracking.registered_model}'"))
    artifacts = Path(tracking.artifact_location.removeprefix("file://"))
    moved = tmp_path / "moved"
    shutil.move(artifacts, moved)  # the artifact store is gone: the champion cannot be scored
    try:
        with pytest.raises((TrackingError, StageInputError), match="champion"):
            ModelRegistry(dataclasses.replace(real.registry(), root_dir=tmp_path / "register")).run()
    finally:
        shutil.move(moved, artifacts)
    assert len(client.search_model_versions(f"name='{tracking.registered_model}'")) == before
    assert not (tmp_path / "register").exists()
    assert champion(real) == second["version"]
