"""Stage 2: VGG16 (frozen) with harmonisation, its own preprocessing and a classification head."""

from pathlib import Path

import keras

from cancer_classifier.components.dataset import dataset_info
from cancer_classifier.entity import PrepareBaseModelConfig
from cancer_classifier.modeling import build_classifier
from cancer_classifier.utils.common import atomic_directory, save_json, sha256_file
from cancer_classifier.utils.logging import logger


def describe_weights(weights: str) -> dict:
    """Where the base weights came from, recorded with every model trained on them."""
    if weights == "none":
        return {"weights": "none", "description": "random initialisation (no pretrained weights)"}
    if weights == "imagenet":
        return {"weights": "imagenet", "description": "Keras ImageNet VGG16 weights (downloaded by Keras)"}
    return {"weights": Path(weights).name, "description": "local weights file", "sha256": sha256_file(Path(weights))}


class PrepareBaseModel:
    def __init__(self, config: PrepareBaseModelConfig) -> None:
        self.config = config

    def run(self) -> Path:
        config = self.config
        classes = dataset_info(config.data_dir)["classes"]
        keras.utils.set_random_seed(config.seed)
        model = build_classifier(
            config.image_size,
            len(classes),
            config.weights,
            config.pooling,
            config.dense_units,
            config.dropout,
            config.harmonise,
        )
        with atomic_directory(config.root_dir) as out:
            model.save(out / "base_model.keras")
            save_json(
                out / "base_model_info.json",
                {
                    "image_size": config.image_size,
                    "harmonise": config.harmonise,
                    "mlp_head": {"dense_units": config.dense_units, "dropout": config.dropout},  # for training
                    **describe_weights(config.weights),
                },
            )
        logger.info("base model saved: %d classes, %s weights", len(classes), config.weights)
        return config.root_dir / "base_model.keras"
