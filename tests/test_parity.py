"""The app's answers over HTTP (real gunicorn) equal the evaluation's predictions.csv for the same
files, with the serving variant forced to each engine (TensorFlow, OpenVINO) and precision (float32,
bfloat16), on any CPU (bfloat16 is emulated where it is not native), and with ``auto``. The tiny
project's tolerance admits every variant, so each is really served here; the default and real-data
models are checked in test_dvc_pipeline.py and test_real_data.py."""

import json

import pytest

from cancer_classifier.chest_ct.scoring import resolve_variant
from cancer_classifier.chest_ct.serving.predictor import Predictor
from cancer_classifier.config import ConfigurationManager
from cancer_classifier.core.io import load_json
from tests.conftest import TINY_PARAMS
from tests.parity import COMPUTABLE, SETTINGS, expected_variant, serve_artifacts, served_parity


@pytest.mark.parametrize("setting", SETTINGS)
def test_served_answers_equal_the_evaluated_predictions(trained_project, tmp_path, setting):
    project = serve_artifacts(trained_project.root, tmp_path / "served", setting, TINY_PARAMS)
    parity = served_parity(project, trained_project.evaluation().data_dir)
    print(f"\n{setting}: {parity}")
    # every variant this CPU computes is servable for this model, so each is served as forced; one it
    # cannot compute was never scored, and the app serves what the rule picks among the scored ones
    forced = resolve_variant(*setting.split("/"))
    servable = load_json(trained_project.evaluation().root_dir / "evaluation.json")["serving_variants"]["servable"]
    assert servable == [str(v) for v in COMPUTABLE]
    assert parity.variant == (str(forced) if forced in COMPUTABLE else expected_variant(setting, servable))
    assert parity.holds(), parity
    assert parity.ood_agreement >= 0.97


def test_bfloat16_needs_the_evaluation_of_this_very_model_file(trained_project, tmp_path):
    """A model card left from an earlier model (training re-run, evaluation not) cannot admit bfloat16."""
    # TensorFlow bfloat16: computed on every CPU (emulated where not native)
    project = serve_artifacts(trained_project.root, tmp_path / "served", "tensorflow/mixed_bfloat16", TINY_PARAMS)
    manager = ConfigurationManager(project / "config/config.yaml", project / "params.yaml", project)
    info = Predictor.from_config(manager.serving()).info
    assert (info.engine, info.precision) == ("tensorflow", "mixed_bfloat16")
    card_file = manager.serving().model_card_file
    card_file.write_text(json.dumps(json.loads(card_file.read_text()) | {"model_sha256": "0" * 64}))
    info = Predictor.from_config(manager.serving()).info
    assert (info.engine, info.precision) == ("tensorflow", "float32")
