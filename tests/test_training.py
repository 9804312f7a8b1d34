"""Training helpers: feature standardisation that survives dead units, balanced class weights."""

import keras
import numpy as np

from cancer_classifier.components.training import class_weights, fit_normalization


def test_a_feature_constant_in_training_does_not_explode_on_new_data():
    rng = np.random.default_rng(0)
    features = rng.normal(5, 2, (50, 4)).astype("float32")
    features[:, 2] = 0  # a ReLU unit that never fired on the training images
    layer = keras.layers.Normalization()
    layer.build((None, 4))
    fit_normalization(layer, features)
    trained = layer(features).numpy()
    assert np.allclose(trained[:, [0, 1, 3]].mean(axis=0), 0, atol=1e-4)
    assert np.allclose(trained[:, [0, 1, 3]].std(axis=0), 1, atol=1e-2)
    unseen = layer(np.full((1, 4), 5, dtype="float32")).numpy()
    assert np.abs(unseen).max() < 10  # plain adapt() divides by ~0 here and gives about 1e7


def test_class_weights_balance_the_loss():
    labels = np.array([0] * 30 + [1] * 10)
    weights = class_weights(labels, 2)
    assert weights[0] * 30 == weights[1] * 10
    assert np.isclose(sum(weights[c] * (labels == c).sum() for c in weights), len(labels))
