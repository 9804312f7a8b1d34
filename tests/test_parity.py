"""The app's answers over HTTP (real gunicorn) equal the evaluation's predictions.csv for the same
files, with the serving precision forced to float32 and to bfloat16, on any CPU (bfloat16 is
emulated where it is not native). The tiny project's tolerance admits bfloat16, so both precisions
are really served here; the default and real-data models are checked in test_dvc_pipeline.py and
test_real_data.py."""

import pytest

from cancer_classifier.modeling import PRECISIONS
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
