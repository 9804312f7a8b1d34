"""Grad-CAM on the model the tiny pipeline trained: a heatmap in 0..1 and an overlay PNG."""

import io

import numpy as np
import pytest
from PIL import Image

from cancer_classifier.chest_ct.modeling import PRECISIONS, load_classifier
from cancer_classifier.chest_ct.scoring import Scorer, Variant
from cancer_classifier.chest_ct.serving.gradcam import GradCam, overlay, to_png
from cancer_classifier.core.images import decode_image


@pytest.fixture(scope="module")
def model(trained_project):
    return load_classifier(trained_project.serving().model_dir / "model.keras")


@pytest.fixture(scope="module")
def image(trained_project) -> np.ndarray:
    path = sorted(trained_project.data_ingestion().root_dir.rglob("*.png"))[0]
    return decode_image(path.read_bytes())


@pytest.fixture(scope="module", params=PRECISIONS)
def scorer(request, model) -> Scorer:
    """Both precisions on every CPU: bfloat16 is emulated where it is not native. Grad-CAM always
    differentiates TensorFlow: with another served engine, the app takes the answer from that engine."""
    return Scorer(model, Variant("tensorflow", request.param))


def test_heatmap_is_scaled_0_1_at_the_last_conv_resolution(model, scorer, image):
    heatmap, probabilities = GradCam(scorer)(image)
    size = model.get_layer("harmonise").image_size
    assert heatmap.shape == (size // 16, size // 16)  # block5_conv3 sits after four 2x poolings
    assert heatmap.dtype == np.float32
    assert heatmap.min() >= 0 and heatmap.max() <= 1
    assert heatmap.max() in (0, pytest.approx(1))


def test_split_model_gives_the_served_probabilities_and_features(model, scorer, image):
    """Running the scorer's layers in two parts around block5_conv3 must not change what is served."""
    heatmap, probabilities, features, view = GradCam(scorer).explain(image)
    assert view.shape == (model.get_layer("harmonise").image_size,) * 2 + (3,) and view.dtype == np.uint8
    expected_features, expected = scorer.score_images([image])
    np.testing.assert_allclose(probabilities, expected[0], atol=1e-5)
    np.testing.assert_allclose(features, expected_features[0], rtol=1e-4, atol=1e-4)


def test_each_class_gets_its_own_heatmap(model, image):
    cam = GradCam(Scorer(model))
    first, _ = cam(image, class_index=0)
    second, _ = cam(image, class_index=1)
    assert first.shape == second.shape
    assert not np.allclose(first, second)


def test_overlay_blends_the_jet_heatmap_onto_the_image_size():
    image = np.full((50, 70, 3), 100, dtype=np.uint8)
    heatmap = np.zeros((4, 4), dtype=np.float32)
    blended = overlay(image, heatmap, alpha=0.4)
    assert blended.shape == image.shape and blended.dtype == np.uint8
    # jet at 0 is dark blue (0, 0, 0.5): 0.4 * (0, 0, 127) + 0.6 * 100
    np.testing.assert_allclose(blended[25, 35], [60, 60, 111], atol=1)
    hot = overlay(image, np.ones((4, 4), dtype=np.float32), alpha=0.4)
    assert hot[25, 35, 0] > hot[25, 35, 2]  # jet at 1 is red


def test_png_round_trip():
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(to_png(image)))), image)
