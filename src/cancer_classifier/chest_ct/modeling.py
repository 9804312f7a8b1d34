"""The classifier's architecture, shared by training and serving.

The model takes raw RGB pixels (0..255) of any size: resizing and VGG16's own preprocessing are
layers inside it, so training, evaluation and serving can never preprocess differently.
"""

import hashlib
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from cancer_classifier.core.errors import StageInputError

VGG16_FEATURES = 512
from cancer_classifier.core.notices import NOT_FOR_CLINICAL_USE  # noqa: E402 (re-exported)

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


@keras.saving.register_keras_serializable(package="cancer_classifier")
class Harmonise(layers.Layer):
    """Raw RGB pixels (0..255) of any size -> a square ``image_size`` image, one image at a time.

    Off, it only resizes (bilinear, antialiased). On, it first removes cues of where an image came
    from rather than what it shows: colour (grayscale as RGB), the intensity range (stretched so the
    darkest pixel is 0 and the brightest 255), the framing around the body (cropped to the rows and
    columns the body occupies) and the aspect ratio (kept, padded with black to a square).
    Each image of a batch is treated alone, so a batch gives exactly what single images give.
    """

    # A pixel is "body" above 10% of the image's intensity range; a row or column is inside the body
    # when at least 2% of its pixels are: thin text overlays and the scanner table's edge are not.
    BODY_LEVEL = 0.1
    BODY_LINE_FRACTION = 0.02

    def __init__(self, image_size: int, harmonise: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.image_size = image_size
        self.harmonise = harmonise

    def get_config(self) -> dict:
        return {**super().get_config(), "image_size": self.image_size, "harmonise": self.harmonise}

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], self.image_size, self.image_size, 3)

    def call(self, images):
        images = tf.cast(images, "float32")
        spec = tf.TensorSpec((self.image_size, self.image_size, 3), "float32")
        return tf.map_fn(self.one, images, fn_output_signature=spec)

    def one(self, image: tf.Tensor) -> tf.Tensor:
        """One (H, W, 3) image -> (image_size, image_size, 3)."""
        size = (self.image_size, self.image_size)
        if not self.harmonise:
            return tf.image.resize(image, size, method="bilinear", antialias=True)
        gray = tf.reduce_mean(image, axis=-1, keepdims=True)
        low, high = tf.reduce_min(gray), tf.reduce_max(gray)
        gray = (gray - low) * (255.0 / tf.maximum(high - low, 1e-6))
        body = tf.cast(gray > 255.0 * self.BODY_LEVEL, "float32")
        rows = tf.reduce_mean(body, axis=[1, 2]) >= self.BODY_LINE_FRACTION
        cols = tf.reduce_mean(body, axis=[0, 2]) >= self.BODY_LINE_FRACTION
        top, bottom = _first_last(rows)
        left, right = _first_last(cols)
        height, width = bottom - top, right - left
        side = tf.maximum(height, width)
        # Pad to a square with black (the stretched background), body centred, then resize.
        square = tf.pad(gray[top:bottom, left:right], [
            [(side - height) // 2, side - height - (side - height) // 2],
            [(side - width) // 2, side - width - (side - width) // 2],
            [0, 0],
        ])
        resized = tf.image.resize(square, size, method="bilinear", antialias=True)
        return tf.repeat(tf.clip_by_value(resized, 0.0, 255.0), 3, axis=-1)


def _first_last(inside: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The span [first, last + 1) of True values; the whole range when there is none (a blank image)."""
    length = tf.shape(inside)[0]
    if_any = tf.reduce_any(inside)
    first = tf.where(if_any, tf.argmax(tf.cast(inside, "int32"), output_type="int32"), 0)
    last = tf.where(if_any, length - tf.argmax(tf.cast(inside[::-1], "int32"), output_type="int32"), length)
    return first, last


def vgg16_base(image_size: int, weights: str) -> keras.Model:
    """VGG16 without its top; weights 'imagenet' (download), 'none' (random) or a local weights file."""
    return keras.applications.VGG16(
        include_top=False, weights=None if weights == "none" else weights, input_shape=(image_size, image_size, 3)
    )


def build_head(kind: str, n_classes: int, dense_units: int, dropout: float) -> keras.Sequential:
    """The classifier on pooled features, always float32: ``logistic`` (standardise, softmax) or ``mlp``
    (standardise, dropout, one hidden ReLU layer, dropout, softmax)."""
    hidden = [
        layers.Dropout(dropout, dtype="float32"),
        layers.Dense(dense_units, activation="relu", dtype="float32"),
        layers.Dropout(dropout, dtype="float32"),
    ]
    return keras.Sequential(
        [
            keras.Input((VGG16_FEATURES,)),
            layers.Normalization(name="feature_norm", dtype="float32"),  # adapted to the training features
            *(hidden if kind == "mlp" else []),
            layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities"),
        ],
        name="head",
    )


def with_head(model: keras.Model, head: keras.Model) -> keras.Model:
    """The classifier with another head: the same harmonisation, preprocessing, base and pooling layers."""
    inputs = keras.Input((None, None, 3), name="image")
    x = model.get_layer("vgg16_preprocess")(model.get_layer("harmonise")(inputs))
    features = model.get_layer("pooling")(model.get_layer("vgg16")(x, training=False))
    return keras.Model(inputs, head(features), name=model.name)


def build_classifier(
    image_size: int, n_classes: int, weights: str, pooling: str, dense_units: int, dropout: float, harmonise: bool
) -> keras.Model:
    base = vgg16_base(image_size, weights)
    base.trainable = False
    pool = layers.GlobalAveragePooling2D if pooling == "avg" else layers.GlobalMaxPooling2D
    inputs = keras.Input((None, None, 3), name="image")
    x = Harmonise(image_size, harmonise, name="harmonise")(inputs)
    x = base(vgg16_preprocess()(x), training=False)  # BatchNorm-free VGG16; inference mode keeps fine-tuning safe
    outputs = build_head("mlp", n_classes, dense_units, dropout)(pool(name="pooling")(x))
    return keras.Model(inputs, outputs, name="vgg16_classifier")


def base_classifier(info: dict, weights: str, n_classes: int) -> keras.Model:
    """The untrained classifier that prepare_base_model described (``info``), with VGG16's weights from
    ``weights`` ('imagenet', 'none' or a file). Seeds Keras's random generators."""
    keras.utils.set_random_seed(info["seed"])  # "none": the same random base in every stage that builds it
    head = info["mlp_head"]
    return build_classifier(info["image_size"], n_classes, weights, info["pooling"], head["dense_units"],
                            head["dropout"], info["harmonise"])


def weights_fingerprint(model: keras.Model) -> str:
    """sha256 of a model's weights: two stages that build the base must compute with the same one."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def harmonise_layer(model: keras.Model) -> Harmonise:
    return model.get_layer("harmonise")


def unfreeze_last_blocks(base: keras.Model, blocks: int) -> None:
    """Make the last ``blocks`` conv blocks of a VGG16 base trainable and keep its other layers frozen."""
    base.trainable = True
    trainable = tuple(f"block{i}_" for i in range(6 - blocks, 6))
    for layer in base.layers:
        layer.trainable = layer.name.startswith(trainable)


MODEL_FILE = "model.keras"  # the trained classifier, as training writes it and serving reads it
INPUT_REFERENCE_FILE = "input_reference.json"  # the training images' statistics, for drift monitoring


def load_classifier(path: Path) -> keras.Model:
    if not Path(path).is_file():
        raise StageInputError(f"{path} not found: run the stage that writes it first (dvc repro)")
    # safe_mode: a .keras file holding a lambda or pickled code is refused, never run; our own layers
    # are registered by importing this module.
    return keras.models.load_model(path, compile=False, safe_mode=True)


def intended_use(demo: bool) -> str:
    """The notice every model carries: in its metadata, its MLflow tags, the app and the API."""
    return ("DEMO model trained on synthetic phantoms, not on patient images. " if demo else "") + NOT_FOR_CLINICAL_USE


PRECISIONS = ("float32", "mixed_bfloat16")


NATIVE_BFLOAT16_FLAGS = {"avx512_bf16", "amx_bf16"}


def cpu_flags() -> set[str]:
    """This CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere it is emulated, not faster."""
    return bool(cpu_flags() & NATIVE_BFLOAT16_FLAGS)


def base_in_precision(model: keras.Model, precision: str) -> keras.Model:
    """The model's VGG16 base, with the same weights, computing in ``precision``.

    Only the convolutional base may run in bfloat16: standardising features or computing
    probabilities in bfloat16 loses too much (a bfloat16 head cost a third of the accuracy).
    """
    base = model.get_layer("vgg16")
    if precision == "float32":
        return base

    def clone(layer: layers.Layer) -> layers.Layer:
        if isinstance(layer, layers.InputLayer):
            return layer.__class__.from_config(layer.get_config())
        return layer.__class__.from_config({**layer.get_config(), "dtype": precision})

    copy = keras.models.clone_model(base, clone_function=clone)
    copy.set_weights(base.get_weights())
    return copy


def image_batches(paths: list[str], harmonise: Harmonise, batch_size: int, overlap: bool = True) -> tf.data.Dataset:
    """Decode, harmonise each image exactly as the model does, and batch; with ``overlap``, in parallel
    threads while the model computes the previous batch, else one batch at a time when asked for.

    Feed the batches to ``scoring.Scorer.score_batches``; order is preserved.
    """

    def load(path: tf.Tensor) -> tf.Tensor:
        return harmonise.one(tf.cast(tf.io.decode_png(tf.io.read_file(path), channels=3), "float32"))

    images = tf.data.Dataset.from_tensor_slices(paths)
    if not overlap:
        return images.map(load).batch(batch_size)
    return images.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size).prefetch(
        tf.data.AUTOTUNE
    )
