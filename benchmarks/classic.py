"""The classic recipe, as the reference implementation trains: run alone, in this process.

    python -m benchmarks.classic --data-dir DIR --weights FILE --positive CLASS --out FILE.json [--epochs 15]

``benchmarks.training`` runs it so, in its own process, on the data_ingestion output's manifest splits
(``python -m benchmarks.benchmark classic ...`` does the same). Keras's ``ImageDataGenerator`` rescales by 1/255
and augments (rotation 40, shifts 0.2, shear 0.2, zoom 0.2, horizontal flip); images are read with
``flow_from_dataframe``, resized bilinearly to 224 px, in batches of 16. The model is VGG16 without top, frozen
whole, with Flatten and Dense softmax, trained with ``CLASSIC_OPTIMIZER`` and categorical cross-entropy in
float32: a full VGG16 forward pass per image per epoch. It writes its epoch times and test metrics as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from benchmarks.harness import BATCH, FULL, IMAGE_SIZE

if TYPE_CHECKING:  # TensorFlow loads only where a step needs it: --help stays fast
    import keras

SEED = 42
# The classic recipe's optimizer: (a keras.optimizers class name, its learning rate). The tutorial's SGD at
# 0.01 did not learn in one full run here (test ROC-AUC 0.50, loss 10-30; Flatten feeds 25,088 features);
# at 0.001 a full 15-epoch run reached test ROC-AUC 0.94 on this split (one core, 2026-12-03).
CLASSIC_OPTIMIZER = ("SGD", 0.001)


def classic_optimizer() -> dict:
    """``CLASSIC_OPTIMIZER`` as recorded in results.json."""
    name, learning_rate = CLASSIC_OPTIMIZER
    return {"name": name, "learning_rate": learning_rate}


def classic_model(weights: Path, n_classes: int) -> keras.Model:
    """The classic tutorial's model: VGG16 without top, frozen whole, Flatten, Dense softmax, ``CLASSIC_OPTIMIZER``."""
    import keras

    name, learning_rate = CLASSIC_OPTIMIZER
    base = keras.applications.VGG16(include_top=False, weights=str(weights), input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    base.trainable = False
    outputs = keras.layers.Dense(n_classes, activation="softmax")(keras.layers.Flatten()(base.output))
    model = keras.Model(base.input, outputs)
    model.compile(optimizer=getattr(keras.optimizers, name)(learning_rate=learning_rate),
                  loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
    return model


def classic_generators(data_dir: Path, classes: list[str]) -> dict:
    """The tutorial's generators, on the manifest's splits instead of a validation_split of one folder.

    Rescale by 1/255 (not VGG16's own preprocessing) and the tutorial's augmentation, bilinear resize
    to 224 px by PIL as the images are read, batches of 16; only training batches are augmented.
    """
    import pandas as pd
    import tensorflow as tf

    generator = tf.keras.preprocessing.image.ImageDataGenerator  # Keras 3 keeps it as a legacy class
    plain = generator(rescale=1.0 / 255)
    augmented = generator(rescale=1.0 / 255, rotation_range=40, horizontal_flip=True, width_shift_range=0.2,
                          height_shift_range=0.2, shear_range=0.2, zoom_range=0.2)
    manifest = pd.read_csv(data_dir / "manifest.csv")
    flow = {"directory": str(data_dir), "x_col": "file", "y_col": "label", "classes": classes,
            "target_size": (IMAGE_SIZE, IMAGE_SIZE), "batch_size": BATCH, "interpolation": "bilinear", "seed": SEED}
    return {
        split: (augmented if split == "train" else plain).flow_from_dataframe(
            manifest[manifest["split"] == split], shuffle=split == "train", **flow)
        for split in ("train", "val", "test")
    }


def epoch_timer(epochs: int) -> keras.callbacks.Callback:
    """A Keras callback timing each epoch, with a progress bar."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self.bar = tqdm(total=epochs, desc="classic recipe", unit="epoch")

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.seconds.append(time.perf_counter() - self.started)
            self.bar.set_postfix({k: round(float(v), 3) for k, v in (logs or {}).items()})
            self.bar.update()

    return EpochTimer()


def classic_recipe(data_dir: Path, weights: Path, epochs: int, positive: str, out: Path) -> None:
    """Train and test the classic recipe; write its timings and test metrics to ``out`` (JSON)."""
    import keras

    from cancer_classifier.chest_ct.components.dataset import dataset_info
    from cancer_classifier.core.metrics import headline_metrics

    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(SEED)
    classes = dataset_info(data_dir)["classes"]
    flows = classic_generators(data_dir, classes)
    model = classic_model(weights, len(classes))
    timer = epoch_timer(epochs)
    # Every image every epoch: Keras 3 takes the iterator's own length. The tutorial's
    # steps_per_epoch = samples // batch is shorter than that, and Keras 3 then alternates full and
    # leftover epochs ("Your input ran out of data"), training on about half the data.
    model.fit(flows["train"], epochs=epochs, validation_data=flows["val"], callbacks=[timer], verbose=0)
    started = time.perf_counter()
    probabilities = model.predict(flows["test"], verbose=0)
    test_seconds = time.perf_counter() - started
    scores = headline_metrics(np.asarray(flows["test"].classes), probabilities, classes.index(positive))
    out.write_text(json.dumps({"epoch_seconds": timer.seconds, "test_seconds": test_seconds,
                               "train_images": flows["train"].samples, "val_images": flows["val"].samples,
                               "test_images": len(probabilities), "scores": scores}))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe's options: this module's command line and ``benchmarks.benchmark``'s ``classic`` sub-command."""
    parser.add_argument("--data-dir", type=Path, required=True, help="a data_ingestion output folder")
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=FULL.classic_epochs)
    parser.add_argument("--positive", required=True, help="the positive (cancer) class")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for timings and test metrics")


def run(args: argparse.Namespace) -> None:
    classic_recipe(args.data_dir, args.weights, args.epochs, args.positive, args.out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
