"""The out-of-distribution guard and the model card, served from the model the tiny pipeline trained.

Flask's test client against the real trained model, its real ``ood_reference.npz`` and the real
evaluation outputs: nothing under test is mocked.
"""

import dataclasses
import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw

from cancer_classifier.chest_ct.components.dataset import split_files
from cancer_classifier.chest_ct.modeling import load_classifier
from cancer_classifier.chest_ct.ood import REFERENCE_FILE, OODReference
from cancer_classifier.chest_ct.serving.predictor import Predictor
from cancer_classifier.core.images import decode_image
from cancer_classifier.serving.app import create_app

# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classes(serving) -> list[str]:
    return json.loads((serving.model_dir / "model_metadata.json").read_text())["classes"]


@pytest.fixture(scope="module")
def test_split_pngs(trained_project) -> list[bytes]:
    paths, _ = split_files(trained_project.evaluation().data_dir, "test")
    assert paths, "the tiny pipeline has no test split"
    return [Path(path).read_bytes() for path in paths]






def upload(client, data: bytes, explain: bool = False):
    url = "/predict?explain=1" if explain else "/predict"
    return client.post(url, data={"file": (io.BytesIO(data), "upload.bin")}, content_type="multipart/form-data")


def png_of(image: np.ndarray | Image.Image) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


# -- inputs unlike the phantoms the demo model was trained on ---------------------------------


def blank(value: int) -> bytes:
    return png_of(np.full((256, 256, 3), value, dtype=np.uint8))


def photograph() -> bytes:
    """400 x 300 'photo': smooth random colour gradients plus sensor-like noise."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:300, 0:400] / np.array([300.0, 400.0])[:, None, None]
    channels = []
    for _ in range(3):
        a, b, c, phase = rng.uniform(-1, 1, 4)
        channels.append(0.5 + 0.25 * (a * x + b * y) + 0.25 * np.sin(2 * np.pi * (c * x + y) * 2 + phase))
    image = np.stack(channels, axis=-1) * 255 + rng.normal(0, 12, (300, 400, 3))
    return png_of(np.clip(image, 0, 255).astype(np.uint8))


def document() -> bytes:
    """A white page with lines of black text."""
    page = Image.new("RGB", (420, 560), "white")
    draw = ImageDraw.Draw(page)
    draw.text((30, 24), "QUARTERLY REPORT", fill="black")
    for line in range(28):
        text = f"{line + 1:2d}. Lorem ipsum dolor sit amet, consectetur adipiscing elit."
        draw.text((30, 60 + line * 17), text, fill="black")
    return png_of(page)


def pydicom_ct() -> bytes:
    # A real CT slice. The demo model was trained on synthetic phantoms only, so a real CT is
    # unlike its training data too: for this model it must be flagged, not confidently labelled.
    return pydicom.examples.get_path("ct").read_bytes()


UNLIKE_TRAINING = {
    "blank black image": lambda: blank(0),
    "blank white image": lambda: blank(255),
    "random-colour photograph": photograph,
    "text document": document,
    "real CT (pydicom example; the demo model saw only phantoms)": pydicom_ct,
}


# -- the two-output model ---------------------------------------------------------------------


def test_one_forward_pass_gives_the_models_own_probabilities(app, serving, test_split_pngs):
    predictor = app.extensions["model"].predictor
    assert predictor.ood is not None
    outputs = [int(output.shape[-1]) for output in predictor.scorer.network.outputs]
    assert outputs == [predictor.ood.mean.shape[-1], len(predictor.info.classes)]
    saved = load_classifier(serving.model_dir / "model.keras")
    image = decode_image(test_split_pngs[0])
    features, probabilities = (out[0] for out in predictor.scorer.score_images([image]))
    expected = saved.predict(image[None].astype("float32"), verbose=0)[0]
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    reference = OODReference.load(serving.model_dir / REFERENCE_FILE)
    assert predictor.ood.threshold == reference.threshold
    # The served flag is the reference's own verdict on these features.
    assert predictor.ood_check(features)[0] == bool(reference.in_distribution(features)[0])


# -- the guard through the API ----------------------------------------------------------------


def test_test_split_phantoms_are_mostly_in_distribution(client, test_split_pngs):
    bodies = [upload(client, data).get_json() for data in test_split_pngs]
    flags = [body["in_distribution"] for body in bodies]
    assert all(isinstance(flag, bool) for flag in flags)
    for body in bodies:
        assert body["in_distribution"] == (body["ood_score"] <= 1)
    share = sum(flags) / len(flags)
    scores = [body["ood_score"] for body in bodies]
    assert share >= 0.8, f"only {share:.0%} of {len(flags)} held-out phantoms in distribution: {scores}"


@pytest.mark.parametrize("case", list(UNLIKE_TRAINING))
def test_inputs_unlike_the_training_data_are_flagged(client, classes, case):
    response = upload(client, UNLIKE_TRAINING[case]())
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["in_distribution"] is False, f"{case}: ood_score {body['ood_score']}"
    assert body["ood_score"] > 1
    # Still an answer: label and probabilities, only flagged as not meaningful.
    assert list(body["probabilities"]) == classes
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)


@pytest.mark.parametrize("make", [lambda pngs: pngs[0], lambda pngs: blank(255)], ids=["phantom", "blank white"])
def test_explain_scores_the_same_pass_as_plain_predict(client, test_split_pngs, make):
    data = make(test_split_pngs)
    plain, explained = upload(client, data).get_json(), upload(client, data, explain=True).get_json()
    assert explained["in_distribution"] == plain["in_distribution"]
    assert explained["ood_score"] == pytest.approx(plain["ood_score"], abs=2e-3)
    assert "gradcam_png" in explained


def test_json_upload_carries_the_flag_too(client):
    import base64

    body = client.post("/predict", json={"image": base64.b64encode(blank(255)).decode()}).get_json()
    assert body["in_distribution"] is False


def test_out_of_distribution_predictions_are_counted(client):
    def count() -> float:
        for line in client.get("/metrics").get_data(as_text=True).splitlines():
            if line.startswith("ood_predictions_total "):
                return float(line.split()[1])
        raise AssertionError("no ood_predictions_total in /metrics")

    before = count()
    upload(client, blank(255))
    assert count() == before + 1


def test_ood_flag_is_in_the_access_log(client, records):
    upload(client, blank(255))
    logged = [r for r in records if r.name.endswith("access") and r.fields.get("endpoint") == "/predict"]
    assert logged and logged[-1].fields["in_distribution"] is False


def test_page_has_the_warning_and_the_script_uses_it(client):
    html = client.get("/").get_data(as_text=True)
    assert 'id="ood-warning"' in html
    assert "This image does not look like the images the model was trained on; the label below is not" in html
    script = client.get("/static/app.js").get_data(as_text=True)
    assert "in_distribution === false" in script and "Label (unreliable):" in script


def test_ready_says_the_check_is_on(client):
    assert client.get("/ready").get_json()["ood_check"] is True


# -- an older model without a reference -------------------------------------------------------


def test_model_without_a_reference_answers_null_and_warns_once(serving, tmp_path, test_split_pngs, records):
    older = tmp_path / "training"
    shutil.copytree(serving.model_dir, older)
    (older / REFERENCE_FILE).unlink()
    config = dataclasses.replace(serving, model_dir=older, registration_file=tmp_path / "none.json")
    client = create_app({"TESTING": True, "SERVING_CONFIG": config}).test_client()
    bodies = [upload(client, test_split_pngs[0]).get_json(), upload(client, blank(255), explain=True).get_json()]
    for body in bodies:
        assert body["in_distribution"] is None and body["ood_score"] is None
        assert body["label"] in body["probabilities"]
    warnings = [r for r in records if r.levelno == logging.WARNING and REFERENCE_FILE in r.getMessage()]
    assert len(warnings) == 1
    assert client.get("/ready").get_json()["ood_check"] is False


# -- the MLflow registry ----------------------------------------------------------------------


def test_registry_mode_downloads_the_reference_and_the_card(serving, test_split_pngs):
    predictor = Predictor.from_config(dataclasses.replace(serving, use_registry=True))
    local = OODReference.load(serving.model_dir / REFERENCE_FILE)
    assert predictor.ood is not None and predictor.ood.threshold == local.threshold
    np.testing.assert_array_equal(predictor.ood.mean, local.mean)
    client = create_app({"TESTING": True, "PREDICTOR": predictor}).test_client()
    assert upload(client, blank(255)).get_json()["in_distribution"] is False
    assert isinstance(upload(client, test_split_pngs[0]).get_json()["in_distribution"], bool)
    card_file = serving.model_card_file
    if card_file.is_file():  # the run logs the evaluation folder, card included
        assert client.get("/model-card").get_json() == json.loads(card_file.read_text())


# -- the model card ---------------------------------------------------------------------------


def test_model_card_json_and_markdown(client, serving):
    card_file = serving.model_card_file
    assert card_file.is_file(), (
        f"the evaluation stage wrote no {card_file.name} in {card_file.parent}: the model card routes serve "
        "that file, written by components/evaluation.py"
    )
    response = client.get("/model-card")
    assert response.status_code == 200 and response.is_json
    assert response.get_json() == json.loads(card_file.read_text())
    markdown = card_file.with_suffix(".md").read_text()
    for url in ("/model-card.md", "/model-card?format=md"):
        text = client.get(url)
        assert text.status_code == 200
        assert text.mimetype == "text/markdown"
        assert text.get_data(as_text=True) == markdown
    assert client.get("/ready").get_json()["model_card"] is True
    html = client.get("/").get_data(as_text=True)
    assert 'href="/model-card.md"' in html and "model card" in html


def test_missing_model_card_is_a_503_with_the_reason(serving, tmp_path):
    config = dataclasses.replace(serving, model_card_file=tmp_path / "evaluation" / "model_card.json")
    client = create_app({"TESTING": True, "SERVING_CONFIG": config}).test_client()
    for url in ("/model-card", "/model-card.md"):
        response = client.get(url)
        assert response.status_code == 503 and response.is_json
        assert "model_card.json" in response.get_json()["error"] and "dvc repro" in response.get_json()["error"]
    assert client.get("/ready").get_json()["model_card"] is False
    assert "no model card yet" in client.get("/").get_data(as_text=True)
