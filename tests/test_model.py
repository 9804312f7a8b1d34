"""Stage 2's model: preprocessing inside it, a correctly frozen base, weights from a local file."""

import keras
import numpy as np
import pytest

from cancer_classifier.modeling import build_classifier, feature_extractor, load_classifier, unfreeze_last_blocks
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_classifier(48, 3, "none", "avg", 8, 0.2)


def test_preprocessing_lives_in_the_model(model):
    images = np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 3)).astype("float32")
    expected = keras.applications.vgg16.preprocess_input(images.copy())
    assert np.array_equal(model.get_layer("vgg16_preprocess")(images).numpy(), expected)
    other_size = np.random.default_rng(1).uniform(0, 255, (1, 97, 61, 3)).astype("float32")
    probabilities = model.predict(other_size, verbose=0)  # any input size: the model resizes
    assert probabilities.shape == (1, 3) and np.isclose(probabilities.sum(), 1, atol=1e-5)


def test_base_is_frozen_and_only_the_head_trains(model):
    assert model.get_layer("vgg16").trainable is False
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert trainable == {"head"}
    assert feature_extractor(model).output.shape[-1] == 512


def test_unfreezing_the_last_block_leaves_the_rest_frozen(tmp_path, model):
    model.save(tmp_path / "m.keras")
    copy = load_classifier(tmp_path / "m.keras")
    unfreeze_last_blocks(copy, 1)
    base = copy.get_layer("vgg16")
    assert [layer.name for layer in base.layers if layer.trainable and layer.weights] == [
        "block5_conv1", "block5_conv2", "block5_conv3"
    ]
    assert not base.get_layer("block4_conv3").trainable


def test_saved_model_predicts_the_same(tmp_path, model):
    images = np.random.default_rng(2).uniform(0, 255, (2, 70, 70, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    assert np.array_equal(load_classifier(tmp_path / "m.keras").predict(images, verbose=0), model.predict(images, verbose=0))


def test_local_pretrained_weights_file_loads():
    weights = shared_path("models/vgg16_notop.weights.h5")
    pretrained = build_classifier(64, 2, str(weights), "avg", 8, 0.2).get_layer("vgg16")
    reference = keras.applications.VGG16(include_top=False, weights=str(weights), input_shape=(64, 64, 3))
    for name in ("block1_conv1", "block5_conv3"):
        for ours, theirs in zip(pretrained.get_layer(name).get_weights(), reference.get_layer(name).get_weights()):
            assert np.array_equal(ours, theirs)
