"""The app's answers over HTTP (real gunicorn) equal the evaluation's predictions.csv for the same
files, with the serving precision forced to float32 and to bfloat16, on any CPU (bfloat16 is
emulated where it is not native). The tiny project's tolerance admits bfloat16, so both precisions
are really served here; the default and real-data models are checked in test_dvc_pipeline.py and
test_real_data.py."""

import json

import pytest

from cancer_classifier.config import ConfigurationManager
from cancer_classifier.modeling import PRECISIONS
from cancer_classifier.serving.predictor import Predictor
from tests.conftest import TINY_PARAMS
from tests.parity import serve_artifacts, served_parity


@pytest.mark.parametrize("precision", PRECISIONS)
def test_served_answers_equal_the_evaluated_predictions(trained_project, tmp_path, precision):
    project = serve_artifacts(trained_project.root, tmp_path / "served", precision, TINY_PARAMS)
    parity = served_parity(project, trained_project.evaluation().data_dir)
    print(f"\n{precision}: {parity}")
    assert parity.precision == precision  # servable for this model, so served as forced
    assert parity.holds(), parity
    assert parity.ood_agreement >= 0.97


def test_bfloat16_needs_the_evaluation_of_this_very_model_file(trained_project, tmp_path):
    """A model card left from an earlier model (training re-run, evaluation not) cannot admit bfloat16."""
    project = serve_artifacts(trained_project.root, tmp_path / "served", "mixed_bfloat16", TINY_PARAMS)
    manager = ConfigurationManager(project / "config/config.yaml", project / "params.yaml", project)
    assert Predictor.from_config(manager.serving()).info.precision == "mixed_bfloat16"
    card_file = manager.serving().model_card_file
    card_file.write_text(json.dumps(json.loads(card_file.read_text()) | {"model_sha256": "0" * 64}))
    assert Predictor.from_config(manager.serving()).info.precision == "float32"
