"""The pipeline on the real Kaggle chest CT images with the pretrained weights in ../shared/models.

Skipped with a reason where the shared data is absent (a user's fresh clone); CI always has it.
"""

import pytest

from cancer_classifier.components.data_ingestion import DataIngestion
from cancer_classifier.components.evaluation import Evaluation
from cancer_classifier.components.prepare_base_model import PrepareBaseModel
from cancer_classifier.components.training import Training
from tests.conftest import shared_path

pytestmark = [pytest.mark.real_data, pytest.mark.slow]


def test_adenocarcinoma_vs_normal_reaches_auc_090_on_its_own_held_out_split(project):
    manager = project(
        config={"data_ingestion": {"source": str(shared_path("data/chest-ct/train"))}},
        params={
            "base_model": {"weights": str(shared_path("models/vgg16_notop.weights.h5")), "image_size": 224,
                           "pooling": "avg", "dense_units": 64},
            "training": {"epochs": 60, "early_stopping_patience": 8},
            "evaluation": {"bootstrap_resamples": 1000},
        },
    )
    report = DataIngestion(manager.data_ingestion()).run()
    # train/normal holds 55 distinct images in 148 files; train/adenocarcinoma one copy (ad16 = ad21)
    assert report["exact_duplicates_removed"] == 93 + 1
    assert sum(report["counts"][s]["normal"] for s in report["counts"]) <= 55
    PrepareBaseModel(manager.prepare_base_model()).run()
    Training(manager.training()).run()
    result = Evaluation(manager.evaluation()).run()
    print("\nreal data, adenocarcinoma vs normal:", result["metrics"], result["ci95"]["roc_auc"], result["test_images"])
    assert result["demo"] is False
    assert result["metrics"]["roc_auc"] >= 0.90
