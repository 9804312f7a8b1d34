"""The one path from pixels to probabilities, used by the features stage, training, evaluation,
the register stage's champion comparison, the app and Grad-CAM:

    raw RGB pixels -> harmonise (float32) -> VGG16 preprocessing and base (float32 or bfloat16,
    computed by TensorFlow or OpenVINO) -> pooled features (float32; the out-of-distribution check
    reads them) -> head (float32, TensorFlow) -> probabilities (float32)

A *variant* is the engine and precision of the frozen base's pass. TensorFlow in float32 is the
reference; whether another variant is harmless for a given model is measured by the evaluation
stage, which scores the test split in every variant. Grad-CAM always differentiates TensorFlow.
"""

from dataclasses import dataclass
from functools import cached_property

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from cancer_classifier.chest_ct.modeling import (
    NATIVE_BFLOAT16_FLAGS,
    PRECISIONS,
    base_in_precision,
    cpu_flags,
    harmonise_layer,
    image_batches,
)
from cancer_classifier.core.errors import EngineUnavailable
from cancer_classifier.core.limits import limit_size
from cancer_classifier.core.settings import inference_threads

ENGINES = ("tensorflow", "openvino")
OPENVINO_PRECISION = {"float32": "f32", "mixed_bfloat16": "bf16"}  # INFERENCE_PRECISION_HINT values


@dataclass(frozen=True, order=True)
class Variant:
    """How the frozen base computes: its engine and precision; written ``engine/precision``."""

    engine: str
    precision: str

    def __post_init__(self) -> None:
        if self.engine not in ENGINES or self.precision not in PRECISIONS:
            raise ValueError(f"a variant is one of {ENGINES} / one of {PRECISIONS}, got {self}")

    def __str__(self) -> str:
        return f"{self.engine}/{self.precision}"

    @classmethod
    def parse(cls, text: str) -> "Variant":
        """``engine/precision``; a bare precision (model cards written before engines) is TensorFlow's."""
        engine, _, precision = text.rpartition("/")
        return cls(engine or "tensorflow", precision)


REFERENCE = Variant("tensorflow", "float32")
VARIANTS = tuple(Variant(engine, precision) for engine in ENGINES for precision in PRECISIONS)


def resolve_variant(engine: str, precision: str) -> Variant:
    """``auto`` settings for this CPU, chosen by measurement (benchmarks/results.md; batch 1, as served):
    bfloat16 where the CPU computes it natively; OpenVINO on AVX-512 CPUs (2.2x TensorFlow in bfloat16 on
    AMD Zen 5, 1.7x in float32 on an Intel Xeon without bfloat16); TensorFlow elsewhere (AVX2 only: not
    measured, so the reference stays)."""
    flags = cpu_flags()
    if precision == "auto":
        precision = "mixed_bfloat16" if flags & NATIVE_BFLOAT16_FLAGS else "float32"
    if engine == "auto":
        engine = "openvino" if "avx512f" in flags else "tensorflow"
    return Variant(engine, precision)


def to_openvino(preprocess: keras.layers.Layer, base: keras.Model, pooling: keras.layers.Layer, image_size: int):
    """The model's preprocessing, base and pooling as one OpenVINO model (converted in memory from the
    same float32 weights) that maps harmonised images to pooled float32 features."""
    import openvino as ov  # only where this engine is used

    inputs = keras.Input((image_size, image_size, 3), name="harmonised")
    network = keras.Model(inputs, pooling(base(preprocess(inputs), training=False)))
    spec = tf.TensorSpec((None, image_size, image_size, 3), tf.float32)
    function = tf.function(lambda x: network(x, training=False), input_signature=[spec])
    return ov.convert_model(function.get_concrete_function())


class OpenVinoFeatures:
    """``to_openvino``'s model compiled for this CPU in one precision, or EngineUnavailable where OpenVINO
    would compute another one (it runs bfloat16 on AVX-512 CPUs, natively or emulated, and silently
    falls back to float32 on CPUs without AVX-512)."""

    def __init__(self, preprocess: keras.layers.Layer, base: keras.Model, pooling: keras.layers.Layer,
                 image_size: int, precision: str) -> None:
        try:
            import openvino as ov
        except ImportError as error:
            raise EngineUnavailable(f"OpenVINO is not installed ({error}): pip install -r requirements.txt") from None

        settings = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision], "PERFORMANCE_HINT": "LATENCY"}
        # TensorFlow's thread budget, which gunicorn.conf.py divides among the workers, binds OpenVINO too
        if threads := inference_threads():
            settings["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(to_openvino(preprocess, base, pooling, image_size), "CPU", settings)
        effective = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        if effective != settings["INFERENCE_PRECISION_HINT"]:
            raise EngineUnavailable(f"OpenVINO computes {effective}, not {precision}, on this CPU")

    def __call__(self, harmonised: np.ndarray) -> np.ndarray:
        request = self.compiled.create_infer_request()  # one per call: callers may be threads
        return np.array(request.infer([harmonised])[0], dtype="float32")


class Scorer:
    """A saved classifier, scoring in one variant (by default the reference, TensorFlow float32);
    EngineUnavailable where that variant cannot compute on this machine."""

    def __init__(self, model: keras.Model, variant: Variant = REFERENCE) -> None:
        self.model, self.variant = model, variant
        self.harmonise = harmonise_layer(model)
        self.preprocess = model.get_layer("vgg16_preprocess")
        self.pooling = model.get_layer("pooling")  # a float32 layer: bfloat16 activations are cast up first
        self.head = model.get_layer("head")
        self.openvino = (
            OpenVinoFeatures(self.preprocess, model.get_layer("vgg16"), self.pooling, self.harmonise.image_size,
                             variant.precision)
            if variant.engine == "openvino" else None
        )

    @cached_property
    def base(self) -> keras.Model:
        """TensorFlow's base in this precision: scores for the TensorFlow engine; Grad-CAM and fine-tuning
        use it with any engine. Built when first needed, so an OpenVINO scorer copies no base it never uses."""
        return base_in_precision(self.model, self.variant.precision)

    @cached_property
    def network(self) -> keras.Model:
        """Harmonised images -> [pooled features, probabilities], all in TensorFlow."""
        inputs = keras.Input((None, None, 3), name="harmonised")
        features = self.pooling(self.base(self.preprocess(inputs), training=False))
        return keras.Model(inputs, [features, self.head(features)], name=f"scorer_{self.variant.precision}")

    # Graphs of the per-request work: run op by op (eagerly), harmonising one slice, the head and
    # TensorFlow's pass cost 15, 2.5 and tens of ms more per request, for the same numbers.
    @cached_property
    def _harmonise_one(self) -> tf.types.experimental.PolymorphicFunction:
        return tf.function(self.harmonise.one, input_signature=[tf.TensorSpec((None, None, 3), tf.float32)])

    @cached_property
    def _head(self) -> tf.types.experimental.PolymorphicFunction:
        spec = tf.TensorSpec((None, int(self.head.input_shape[-1])), tf.float32)
        return tf.function(lambda features: self.head(features, training=False), input_signature=[spec])

    @cached_property
    def _network(self) -> tf.types.experimental.PolymorphicFunction:
        network, size = self.network, self.harmonise.image_size  # built eagerly: it copies weights
        spec = tf.TensorSpec((None, size, size, 3), tf.float32)
        return tf.function(lambda images: network(images, training=False), input_signature=[spec])

    @property
    def overlaps_decoding(self) -> bool:
        """Whether input decoding may run beside this scorer's pass: not OpenVINO's, whose threads then
        contend with tf.data's (its feature pass ran at 103 GFLOP/s so, 151 on decoded batches)."""
        return self.openvino is None

    @property
    def n_classes(self) -> int:
        return int(self.head.output_shape[-1])

    def score(self, harmonised: np.ndarray | tf.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Pooled features (n, 512) and probabilities (n, classes) of a batch of harmonised images."""
        if self.openvino is None:
            features, probabilities = self._network(tf.cast(harmonised, tf.float32))
            return features.numpy(), probabilities.numpy()
        features = self.openvino(keras.ops.convert_to_numpy(harmonised))
        return features, self._head(features).numpy()

    def score_batches(self, batches: tf.data.Dataset, total: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        """Every batch of a dataset of harmonised images, concatenated, with a progress bar."""
        features, probabilities = [], []
        with tqdm(total=total, desc=f"{what} ({self.variant})", unit="img", mininterval=2) as bar:
            for batch in batches:
                f, p = self.score(batch)
                features.append(f)
                probabilities.append(p)
                bar.update(len(p))
        if not probabilities:
            features_size = int(self.pooling.output.shape[-1])
            return np.zeros((0, features_size), "float32"), np.zeros((0, self.n_classes), "float32")
        return np.concatenate(features), np.concatenate(probabilities)

    def score_files(self, paths: list[str], batch_size: int = 16, what: str = "scoring") -> tuple[np.ndarray, ...]:
        """Ingested image files (decoded and harmonised in parallel), in order."""
        batches = image_batches(paths, self.harmonise, batch_size, self.overlaps_decoding)
        return self.score_batches(batches, len(paths), what)

    def harmonised(self, image: np.ndarray) -> tf.Tensor:
        """One raw upload (H, W, 3), size-limited and harmonised exactly as the files are."""
        return self._harmonise_one(tf.convert_to_tensor(limit_size(image), dtype="float32"))

    def score_images(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw uploads of any sizes: harmonised one by one, then one forward pass for all."""
        return self.score(tf.stack([self.harmonised(image) for image in images]))
