"""Stage 2: the base model, described: VGG16's weights (with their sha256), input size, harmonisation,
pooling and the MLP head's settings, in ``base_model_info.json``.

It writes no copy of VGG16. The network is code (``modeling.build_classifier``) and its weights are a
file, Keras's ImageNet download or a seeded random initialisation, so the stages that run VGG16
(features, training) build it from this description; a weights file that changed since is refused
there, and training checks that its base is bit for bit the one the features came from. So this
stage imports no TensorFlow: it takes a second, where building, saving and loading a 58 MB copy cost
a TensorFlow start here and a load in each later stage.
"""

from pathlib import Path

from cancer_classifier.core.errors import StageInputError
from cancer_classifier.core.io import atomic_directory, load_json, save_json, sha256_file
from cancer_classifier.core.logging import logger
from cancer_classifier.entity import PrepareBaseModelConfig

BASE_MODEL_INFO_FILE = "base_model_info.json"
BUILD_KEYS = ("image_size", "harmonise", "pooling", "seed", "mlp_head", "weights")  # what builds the base


def load_base_info(base_model_dir: Path) -> dict:
    """The stage's description of the base; StageInputError (what to run) if missing or from older code."""
    path = Path(base_model_dir) / BASE_MODEL_INFO_FILE
    if not path.is_file():
        raise StageInputError(f"{path} not found: run the prepare_base_model stage first (dvc repro)")
    info = load_json(path)
    if missing := [key for key in BUILD_KEYS if key not in info]:
        raise StageInputError(
            f"{path} lacks {', '.join(missing)} (written by an older version): run `dvc repro -f prepare_base_model`"
        )
    return info


def describe_weights(weights: str) -> dict:
    """Where the base weights came from, recorded with every model trained on them."""
    if weights == "none":
        return {"weights": "none", "description": "random initialisation (no pretrained weights)"}
    if weights == "imagenet":
        return {"weights": "imagenet", "description": "Keras ImageNet VGG16 weights (downloaded by Keras)"}
    return {"weights": Path(weights).name, "description": "local weights file", "sha256": sha256_file(Path(weights))}


def check_weights(info: dict, weights: str) -> None:
    """StageInputError unless ``weights`` are the ones ``info`` describes (a file by its sha256)."""
    recorded, current = info.get("sha256", info["weights"]), describe_weights(weights).get("sha256", weights)
    if current != recorded:
        raise StageInputError(
            f"the base weights {weights} are not the ones prepare_base_model described ({info['weights']}, "
            f"{recorded}): a weights file changed since? run `dvc repro -f prepare_base_model` and `dvc repro`"
        )


class PrepareBaseModel:
    def __init__(self, config: PrepareBaseModelConfig) -> None:
        self.config = config

    def run(self) -> Path:
        config = self.config
        with atomic_directory(config.root_dir) as out:
            save_json(out / BASE_MODEL_INFO_FILE, {
                "image_size": config.image_size,
                "harmonise": config.harmonise,
                "pooling": config.pooling,
                "seed": config.seed,  # initialises random weights ("none") and the untrained head
                "mlp_head": {"dense_units": config.dense_units, "dropout": config.dropout},
                **describe_weights(config.weights),
            })
        logger.info("base model described: VGG16 at %d px, %s weights", config.image_size, config.weights)
        return config.root_dir / BASE_MODEL_INFO_FILE
