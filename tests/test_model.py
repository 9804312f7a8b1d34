"""Stage 2's model: harmonisation and preprocessing inside it, a correctly frozen base, local weights, precision."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cancer_classifier.chest_ct.modeling import (
    Harmonise,
    build_classifier,
    build_head,
    load_classifier,
    unfreeze_last_blocks,
    with_head,
)
from cancer_classifier.chest_ct.scoring import Scorer, Variant
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_classifier(48, 3, "none", "avg", 8, 0.2, harmonise=True)


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
    assert Scorer(model).network.outputs[0].shape[-1] == 512


def test_unfreezing_the_last_block_leaves_the_rest_frozen(tmp_path, model):
    model.save(tmp_path / "m.keras")
    copy = load_classifier(tmp_path / "m.keras")
    unfreeze_last_blocks(copy.get_layer("vgg16"), 1)
    base = copy.get_layer("vgg16")
    assert [layer.name for layer in base.layers if layer.trainable and layer.weights] == [
        "block5_conv1",
        "block5_conv2",
        "block5_conv3",
    ]
    assert not base.get_layer("block4_conv3").trainable


def test_saved_model_predicts_the_same(tmp_path, model):
    images = np.random.default_rng(2).uniform(0, 255, (2, 70, 70, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    assert np.array_equal(
        load_classifier(tmp_path / "m.keras").predict(images, verbose=0), model.predict(images, verbose=0)
    )


def test_local_pretrained_weights_file_loads():
    weights = shared_path("models/vgg16_notop.weights.h5")
    pretrained = build_classifier(64, 2, str(weights), "avg", 8, 0.2, harmonise=False).get_layer("vgg16")
    reference = keras.applications.VGG16(include_top=False, weights=str(weights), input_shape=(64, 64, 3))
    for name in ("block1_conv1", "block5_conv3"):
        for ours, theirs in zip(pretrained.get_layer(name).get_weights(), reference.get_layer(name).get_weights()):
            assert np.array_equal(ours, theirs)


def body_image(height: int, width: int, top: int, left: int, size: tuple[int, int], tint=(1.0, 1.0, 1.0)) -> np.ndarray:
    """A bright elliptical 'body' with a dark 'lung' inside, placed anywhere in a black frame."""
    yy, xx = np.mgrid[:height, :width]
    cy, cx, ry, rx = top + size[0] / 2, left + size[1] / 2, size[0] / 2, size[1] / 2
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    lung = ((yy - cy) / (ry / 2)) ** 2 + ((xx - cx - rx / 3) / (rx / 4)) ** 2 <= 1
    gray = np.where(inside, 180.0, 0.0) - np.where(lung, 150.0, 0.0)
    return (gray[..., None] * np.array(tint)).astype("float32")


def test_harmonisation_removes_framing_colour_and_intensity_range():
    harmonise = Harmonise(64, harmonise=True)
    centred = harmonise.one(tf.constant(body_image(200, 200, 50, 20, (100, 160)))).numpy()
    # The same body, elsewhere in a bigger frame, tinted and dimmed: the same harmonised image.
    moved = body_image(300, 420, 170, 230, (100, 160), tint=(0.5, 0.4, 0.3)) + 10
    assert np.abs(harmonise.one(tf.constant(moved)).numpy() - centred).mean() < 2.0
    assert np.array_equal(centred[..., 0], centred[..., 2])  # grayscale as RGB
    # Aspect kept: a 100 x 160 body spans the full width and 40 of 64 rows, black padding above and below.
    body_rows = np.flatnonzero(centred[..., 0].max(axis=1) > 25)
    assert centred[..., 0].max(axis=0).min() > 25 and 36 <= len(body_rows) <= 44
    assert centred[:8].max() == 0 and centred[-8:].max() == 0


def test_harmonisation_off_only_resizes():
    image = np.random.default_rng(3).uniform(0, 255, (90, 50, 3)).astype("float32")
    resized = tf.image.resize(image, (32, 32), antialias=True).numpy()
    assert np.array_equal(Harmonise(32, harmonise=False).one(tf.constant(image)).numpy(), resized)


def test_training_path_matches_serving_path_exactly(tmp_path, model):
    """Batches harmonised image by image (training, evaluation) give what the whole model gives
    each raw upload (serving), for uploads of different sizes."""
    paths = []
    for i, (h, w) in enumerate([(120, 90), (64, 200), (300, 300)]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(body_image(h, w, h // 5, w // 6, (h // 2, w // 2)).astype("uint8")).save(paths[-1])
    scorer = Scorer(model)
    _, batched = scorer.score_files(paths, batch_size=2)
    uploads = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    _, served = scorer.score_images(uploads)
    for upload, probabilities, one_by_one in zip(uploads, batched, served):
        assert np.allclose(model.predict(upload[None].astype("float32"), verbose=0)[0], probabilities, atol=1e-6)
        assert np.allclose(one_by_one, probabilities, atol=1e-6)


def test_bfloat16_scorer_runs_only_the_base_in_bfloat16(model):
    """The head, its standardisation and the probabilities stay float32: a bfloat16 head lost a third
    of its accuracy where it was served."""
    images = [np.random.default_rng(4).integers(0, 256, (48, 60, 3)).astype("uint8") for _ in range(2)]
    fast = Scorer(model, Variant("tensorflow", "mixed_bfloat16"))
    assert fast.base.get_layer("block1_conv1").dtype_policy.name == "mixed_bfloat16"
    assert all(layer.dtype_policy.name == "float32" for layer in fast.head.layers)
    assert fast.pooling.dtype_policy.name == "float32"
    assert all(np.array_equal(a, b) for a, b in zip(fast.base.get_weights(), model.get_layer("vgg16").get_weights()))
    features, probabilities = fast.score_images(images)
    assert features.dtype == probabilities.dtype == np.float32
    reference = Scorer(model).score_images(images)
    assert np.allclose(probabilities, reference[1], atol=0.02)
    assert np.abs(features - reference[0]).max() <= 0.02 * np.abs(reference[0]).max()
    assert Scorer(model).base is model.get_layer("vgg16")  # float32 scores the saved layers themselves


def test_a_new_head_keeps_the_base_and_serves_through_the_same_path(model):
    logistic = build_head("logistic", 3, 8, 0.2)
    assert [layer.name for layer in logistic.layers] == ["feature_norm", "probabilities"]
    swapped = with_head(model, logistic)
    assert swapped.get_layer("vgg16") is model.get_layer("vgg16") and swapped.get_layer("head") is logistic
    image = np.random.default_rng(5).integers(0, 256, (50, 50, 3)).astype("uint8")
    expected = swapped.predict(image[None].astype("float32"), verbose=0)[0]
    np.testing.assert_allclose(Scorer(swapped).score_images([image])[1][0], expected, atol=1e-6)
