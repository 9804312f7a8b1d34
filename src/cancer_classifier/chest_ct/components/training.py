"""Stage 4: choose and train the head on the cached frozen-base features, then optionally fine-tune.

The features stage paid the VGG16 passes once; the head candidates are cross-validated on its arrays
in seconds (``components/heads.py``). Fine-tuning (unfrozen last blocks) starts from the chosen head
and runs end to end on images, as it must, through the scoring path in the configured precision.

The per-epoch curves (the MLP candidate's in cross-validation, fine-tuning's) are written through
dvclive to ``<root_dir>/dvclive/plots/metrics/`` (``training_curves``), for ``dvc plots``.
"""

import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf

from cancer_classifier.chest_ct.components.dataset import dataset_info, split_files, split_rows
from cancer_classifier.chest_ct.components.features import augmenter, extract_features, load_features
from cancer_classifier.chest_ct.components.heads import HeadTrainer, class_weights, select_head
from cancer_classifier.chest_ct.components.prepare_base_model import check_weights, load_base_info
from cancer_classifier.chest_ct.modeling import (
    INPUT_REFERENCE_FILE,
    MODEL_FILE,
    base_classifier,
    image_batches,
    intended_use,
    unfreeze_last_blocks,
    weights_fingerprint,
    with_head,
)
from cancer_classifier.chest_ct.ood import REFERENCE_FILE, fit_reference
from cancer_classifier.chest_ct.scoring import Scorer, Variant, resolve_variant
from cancer_classifier.core.errors import StageInputError
from cancer_classifier.core.io import atomic_directory, load_json, save_json
from cancer_classifier.core.logging import logger
from cancer_classifier.core.plots import log_curves
from cancer_classifier.core.tracking import public_uri, tracking_errors, use_experiment
from cancer_classifier.entity import TrainingConfig


class MlflowEpochLogger(keras.callbacks.Callback):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        mlflow.log_metrics({f"{self.prefix}{k}": float(v) for k, v in (logs or {}).items()}, step=epoch)


def early_stopping(config: TrainingConfig) -> keras.callbacks.EarlyStopping:
    """Stop fine-tuning when validation loss stops improving, keeping the best epoch."""
    return keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.early_stopping_patience, restore_best_weights=True
    )


def training_curves(history: dict) -> dict[str, list[float]]:
    """The stage's per-epoch curves by dvclive name, ``<phase>/<split>/<metric>``: ``head/{train,val}/loss``
    (the MLP candidate, averaged over the cross-validation folds: a fold's fitting and early-stopping
    rows) and, when fine-tuning ran, ``fine_tune/{train,val}/{loss,accuracy}`` (the train and val splits)."""
    curves = {}
    curve = history["head_selection"].get("curve")
    if curve:
        curves |= {"head/train/loss": curve["train_loss"], "head/val/loss": curve["val_loss"]}
    for keras_name, values in history.get("fine_tune", {}).items():  # loss, accuracy, val_loss, val_accuracy
        split, metric = ("val", keras_name[4:]) if keras_name.startswith("val_") else ("train", keras_name)
        curves[f"fine_tune/{split}/{metric}"] = values
    return curves


# Cheap statistics of the training images that serving compares live traffic with (drift).
INPUT_STATISTICS = ("width", "height", "mean", "std")
REFERENCE_BINS = 10


def input_reference(data_dir: Path, classes: list[str]) -> dict:
    """Decile bins of each input statistic over the training split, and its class mix.

    The outer bins hold values below the training minimum and above the training maximum, so traffic
    outside the training range shows as drift even where the training values were all equal.
    """
    rows = split_rows(data_dir, "train")
    reference = {"images": len(rows), "statistics": {}, "class_mix": {}}
    for name in INPUT_STATISTICS:
        values = np.array([float(row[name]) for row in rows])
        deciles = np.quantile(values, np.linspace(0, 1, REFERENCE_BINS + 1)[1:-1])
        edges = np.unique([values.min(), *deciles, np.nextafter(values.max(), np.inf)])
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
        reference["statistics"][name] = {"edges": edges.tolist(), "fractions": (counts / len(values)).tolist()}
    labels = [row["label"] for row in rows]
    reference["class_mix"] = {name: labels.count(name) / len(labels) for name in classes}
    return reference


class Training:
    def __init__(self, config: TrainingConfig) -> None:
        self.config = config
        self.base_info = load_base_info(config.base_model_dir)
        self.variant = resolve_variant(config.engine, config.precision)
        self.precision = self.variant.precision

    def base_of_features(self, n_classes: int) -> keras.Model:
        """The untrained classifier, its VGG16 base bit for bit the one the cached features came from."""
        info_path = self.config.features_dir / "features_info.json"
        if not info_path.is_file():
            raise StageInputError(f"{info_path} not found: run the features stage first (dvc repro)")
        features_info = load_json(info_path)
        check_weights(self.base_info, self.config.weights)
        model = base_classifier(self.base_info, self.config.weights, n_classes)
        if weights_fingerprint(model.get_layer("vgg16")) != features_info.get("base_sha256"):
            raise StageInputError(
                f"the VGG16 base built for training differs from the one the features in {self.config.features_dir} "
                "came from (base_sha256 in features_info.json): run `dvc repro -f features` and `dvc repro`"
            )
        return model

    def fine_tune(self, model: keras.Model, train: tuple, val: tuple, n_classes: int) -> dict:
        """Train the last conv blocks and the head end to end, through the scoring path in its precision."""
        config = self.config
        scorer = Scorer(model, Variant("tensorflow", self.precision))
        unfreeze_last_blocks(scorer.base, config.fine_tune_blocks)
        end_to_end = keras.Model(scorer.network.input, scorer.network.outputs[1])
        end_to_end.compile(  # compiled after changing trainable, at a very low rate
            optimizer=keras.optimizers.Adam(config.fine_tune_learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        augment = augmenter(config.augmentation, config.seed)

        def labelled(paths: list[str], labels: np.ndarray) -> tf.data.Dataset:
            # unbatch() loses the count; stated again, every epoch is a whole one (Keras otherwise warns
            # that the input "ran out of data" when it ends)
            images = image_batches(paths, scorer.harmonise, config.batch_size).unbatch()
            images = images.apply(tf.data.experimental.assert_cardinality(len(paths)))
            return tf.data.Dataset.zip(images, tf.data.Dataset.from_tensor_slices(labels))

        train_ds = (
            labelled(*train).shuffle(len(train[0]), seed=config.seed).batch(config.batch_size)
            .map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE)
        )
        history = end_to_end.fit(
            train_ds, validation_data=labelled(*val).batch(config.batch_size), epochs=config.fine_tune_epochs,
            class_weight=class_weights(train[1], n_classes) if config.class_weights else None,
            callbacks=[early_stopping(config), MlflowEpochLogger("fine_tune_")], verbose=2,
            shuffle=False,  # train_ds shuffles itself; Keras warns that its own shuffle does not apply to datasets
        )
        model.get_layer("vgg16").set_weights(scorer.base.get_weights())  # a bfloat16 copy keeps float32 weights
        return history.history

    def choose_head(self, model: keras.Model, cached: dict, classes: list[str]) -> tuple[keras.Model, dict]:
        """Cross-validate the head candidates on train + val features; the model with the refitted winner."""
        config = self.config
        groups = [np.array([row["group"] for row in split_rows(config.data_dir, s)]) for s in ("train", "val")]
        views = len(cached["train"]) // max(len(groups[0]), 1)
        x = np.concatenate([cached["train"], cached["val"]])
        y = np.concatenate([cached["train_labels"], cached["val_labels"]])
        # an image's augmented views share its group, so no fold holds out a view of a training image
        groups = np.concatenate([np.tile(groups[0], views), groups[1]])
        mlp = self.base_info["mlp_head"]
        trainer = HeadTrainer(config, len(classes), mlp["dense_units"], mlp["dropout"])
        head, report = select_head(trainer, x, y, groups, config.cv_folds, config.seed)
        return with_head(model, head), report

    def run(self) -> Path:
        config = self.config
        info = dataset_info(config.data_dir)
        classes = info["classes"]
        cached = load_features(config.features_dir)
        model = self.base_of_features(len(classes))
        keras.utils.set_random_seed(config.seed)
        train, val = split_files(config.data_dir, "train"), split_files(config.data_dir, "val")
        experiment_id = use_experiment(config.tracking, "training")
        started = time.perf_counter()
        with (
            tracking_errors(config.tracking.tracking_uri, "training"),
            mlflow.start_run(experiment_id=experiment_id) as run,
        ):
            mlflow.set_tags({"stage": "training", "demo": str(info["demo"]).lower()})
            model, selection = self.choose_head(model, cached, classes)
            mlflow.set_tags({"head": selection["chosen"], "head_reason": selection["reason"]})
            mlflow.log_metrics({
                f"cv_roc_auc_{name.replace(' ', '_').replace('=', '')}": result["cv_roc_auc"]
                for name, result in selection["candidates"].items()
            })
            history = {"head_selection": selection}
            x_train, x_val = cached["train"][: len(train[0])], cached["val"]
            if config.fine_tune_blocks:
                history["fine_tune"] = self.fine_tune(model, train, val, len(classes))
                # fine-tuning moved the features: the reference must describe the final model's
                final = Scorer(model, self.variant)
                x_train, x_val = (extract_features(final, paths, config.batch_size) for paths in (train[0], val[0]))
            ood = fit_reference(x_train, x_val, config.ood_components, config.ood_quantile)
        seconds = time.perf_counter() - started
        features_info = load_json(config.features_dir / "features_info.json")
        with atomic_directory(config.root_dir) as out:
            model.save(out / MODEL_FILE)
            ood.save(out / REFERENCE_FILE)
            save_json(out / INPUT_REFERENCE_FILE, input_reference(config.data_dir, classes))
            save_json(out / "class_indices.json", {name: i for i, name in enumerate(classes)})
            save_json(out / "model_metadata.json", {
                "classes": classes,
                "image_size": self.base_info["image_size"],
                "demo": info["demo"],
                "data_source": info["source"],
                "head": selection["chosen"],
                "intended_use": intended_use(info["demo"]),
            })
            save_json(out / "history.json", history)
            log_curves(out, training_curves(history))
            save_json(out / "training_info.json", {
                "mlflow_run_id": run.info.run_id,
                "mlflow_tracking_uri": public_uri(config.tracking.tracking_uri),  # where that run is
                "seed": config.seed,
                "train_images": len(train[0]),
                "val_images": len(val[0]),
                "feature_views": features_info["views"],
                "feature_variant": features_info["variant"],  # engine/precision of the features the head learned
                "precision": self.precision,
                "head": selection["chosen"],
                "head_selection": selection["reason"],
                "fine_tune_epochs": len(history.get("fine_tune", {}).get("loss", [])),
                "train_seconds": round(seconds, 1),
            })
        logger.info("trained in %.0f s; model saved to %s", seconds, config.root_dir / MODEL_FILE)
        return config.root_dir / MODEL_FILE
