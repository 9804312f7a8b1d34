"""Grad-CAM for the classifier, after keras-io ``examples/vision/grad_cam.py``.

The gradient of the chosen class score with respect to the last conv layer's activations
(``block5_conv3``), averaged per channel, weights those activations into a heatmap scaled 0-1.
VGG16 is nested inside the classifier, so instead of one sub-model to
[conv activations, predictions] the scorer's layers are run in two parts: raw pixels -> conv
activations, then conv activations -> probabilities. They are the served scoring path's own layers,
in its precision: with TensorFlow serving, the probabilities and features that come with a heatmap are
the served ones; with another engine the app takes the answer from that engine (``Predictor.predict``).
"""

import io

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from cancer_classifier.chest_ct.scoring import Scorer

LAST_CONV_LAYER = "block5_conv3"


class GradCam:
    def __init__(self, scorer: Scorer, last_conv_layer: str = LAST_CONV_LAYER) -> None:
        base = scorer.base
        self.scorer = scorer
        self.to_conv = keras.Model(base.inputs, base.get_layer(last_conv_layer).output, name="to_last_conv")
        names = [layer.name for layer in base.layers]
        self.conv_to_features = base.layers[names.index(last_conv_layer) + 1 :]  # VGG16 is a plain chain

    def __call__(self, image: np.ndarray, class_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Heatmap (h, w) in 0..1 at the conv layer's resolution, and the probabilities (n_classes,)."""
        heatmap, probabilities, _, _ = self.explain(image, class_index)
        return heatmap, probabilities

    def explain(
        self, image: np.ndarray, class_index: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Heatmap, probabilities, the pooled features (the ``pooling`` layer's output) of the same pass,
        and the model's view of the image (harmonised: cropped to the body, squared), which the heatmap maps onto."""
        view = self.scorer.harmonised(image)[None]
        with tf.GradientTape() as tape:
            # float32 for the gradient; a bfloat16 base casts it back losslessly in its next layer
            conv = tf.cast(self.to_conv(self.scorer.preprocess(view), training=False), "float32")
            tape.watch(conv)
            y = conv
            for layer in self.conv_to_features:
                y = layer(y, training=False)
            features = self.scorer.pooling(y, training=False)
            probabilities = self.scorer.head(features, training=False)
            index = int(tf.argmax(probabilities[0])) if class_index is None else class_index
            class_score = probabilities[:, index]
        grads = tape.gradient(class_score, conv)
        pooled = tf.reduce_mean(grads, axis=(0, 1, 2))  # one weight per channel
        heatmap = tf.squeeze(conv[0] @ pooled[..., tf.newaxis], axis=-1)
        heatmap = tf.maximum(heatmap, 0)
        top = float(tf.reduce_max(heatmap))
        heatmap = heatmap / top if top > 0 else heatmap  # all-zero when nothing supports the class
        view = np.uint8(np.clip(view[0].numpy(), 0, 255))
        return heatmap.numpy().astype("float32"), probabilities[0].numpy(), features[0].numpy(), view


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The heatmap in the jet colour map, resized to the image and blended onto it: (H, W, 3) uint8."""
    from matplotlib import colormaps

    jet = colormaps["jet"](np.arange(256))[:, :3]
    colored = jet[np.uint8(np.clip(heatmap, 0, 1) * 255)]  # (h, w, 3) in 0..1
    height, width = image.shape[:2]
    colored = Image.fromarray(np.uint8(colored * 255)).resize((width, height), Image.Resampling.BILINEAR)
    blended = np.asarray(colored, dtype=np.float32) * alpha + image.astype(np.float32) * (1 - alpha)
    return np.uint8(np.clip(blended, 0, 255))


def to_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
