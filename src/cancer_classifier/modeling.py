"""The classifier's architecture, shared by training and serving.

The model takes raw RGB pixels (0..255) of any size: resizing and VGG16's own preprocessing are
layers inside it, so training, evaluation and serving can never preprocess differently.
"""

from pathlib import Path

import keras
import numpy as np
from keras import layers

VGG16_FEATURES = 512
NOT_FOR_CLINICAL_USE = "Research and demonstration only. Not a medical device; not for clinical use."
# Caffe-style VGG16 preprocessing: RGB -> BGR, minus the ImageNet channel means (BGR order).
VGG16_BGR_MEAN = (103.939, 116.779, 123.68)


def vgg16_preprocess() -> layers.Dense:
    """``keras.applications.vgg16.preprocess_input`` as a frozen built-in layer.

    A per-pixel Dense(3) with a permutation kernel and the negated means as bias computes
    exactly RGB -> BGR minus mean; being a stock layer, the saved model loads anywhere (MLflow
    included) without this package's code.
    """
    layer = layers.Dense(3, trainable=False, name="vgg16_preprocess")
    layer.build((None, 3))
    layer.set_weights([np.eye(3, dtype="float32")[::-1], -np.array(VGG16_BGR_MEAN, dtype="float32")])
    return layer


def resizing(image_size: int) -> layers.Resizing:
    """The one resize used everywhere: bilinear with antialiasing, as a layer."""
    return layers.Resizing(image_size, image_size, interpolation="bilinear", antialias=True, name="resize")


def vgg16_base(image_size: int, weights: str) -> keras.Model:
    """VGG16 without its top; weights 'imagenet' (download), 'none' (random) or a local weights file."""
    return keras.applications.VGG16(
        include_top=False, weights=None if weights == "none" else weights, input_shape=(image_size, image_size, 3)
    )


def build_classifier(
    image_size: int, n_classes: int, weights: str, pooling: str, dense_units: int, dropout: float
) -> keras.Model:
    base = vgg16_base(image_size, weights)
    base.trainable = False
    pool = layers.GlobalAveragePooling2D if pooling == "avg" else layers.GlobalMaxPooling2D
    head = keras.Sequential(
        [
            keras.Input((VGG16_FEATURES,)),
            layers.Normalization(name="feature_norm"),  # adapted to the training features
            layers.Dropout(dropout),
            layers.Dense(dense_units, activation="relu"),
            layers.Dropout(dropout),
            layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities"),
        ],
        name="head",
    )
    inputs = keras.Input((None, None, 3), name="image")
    x = vgg16_preprocess()(resizing(image_size)(inputs))
    x = base(x, training=False)  # BatchNorm-free VGG16, but inference mode keeps fine-tuning safe
    outputs = head(pool(name="pooling")(x))
    return keras.Model(inputs, outputs, name="vgg16_classifier")


def feature_extractor(model: keras.Model) -> keras.Model:
    """Raw pixels -> pooled VGG16 features: the part of the model that stays frozen."""
    return keras.Model(model.input, model.get_layer("pooling").output, name="feature_extractor")


def unfreeze_last_blocks(model: keras.Model, blocks: int) -> None:
    """Make the last ``blocks`` VGG16 conv blocks trainable and keep every other base layer frozen."""
    base = model.get_layer("vgg16")
    base.trainable = True
    trainable = tuple(f"block{i}_" for i in range(6 - blocks, 6))
    for layer in base.layers:
        layer.trainable = layer.name.startswith(trainable)


def load_classifier(path: Path) -> keras.Model:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found: run the stage that writes it first (dvc repro)")
    return keras.models.load_model(path, compile=False)


def intended_use(demo: bool) -> str:
    """The notice every model carries: in its metadata, its MLflow tags, the app and the API."""
    return ("DEMO model trained on synthetic phantoms, not on patient images. " if demo else "") + NOT_FOR_CLINICAL_USE
