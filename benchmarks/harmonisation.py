"""Measure what harmonisation does to the source shortcut, on the real chest CT data.

    python benchmarks/harmonisation.py [--shared ../shared] [--tasks two four]

For each task (adenocarcinoma vs normal; the four classes) it runs the pipeline twice on the same
de-duplicated, seeded split, with ``base_model.harmonise`` off and on (pretrained weights from
shared/models, 224 px, the README's settings), and prints the held-out ROC-AUC of the model next to
the two shortcut baselines of the evaluation stage: the files' metadata, and the intensity
statistics of what the model actually sees.
"""

import argparse
import os
import tempfile
from pathlib import Path

import yaml

from cancer_classifier.components.data_ingestion import DataIngestion
from cancer_classifier.components.evaluation import Evaluation
from cancer_classifier.components.features import Features
from cancer_classifier.components.prepare_base_model import PrepareBaseModel
from cancer_classifier.components.training import Training
from cancer_classifier.config import ConfigurationManager

REPO = Path(__file__).resolve().parents[1]
TASKS = {
    "two": ("chest-ct/train", ["adenocarcinoma", "normal"]),
    "four": ("chest-ct", ["adenocarcinoma", "large.cell.carcinoma", "normal", "squamous.cell.carcinoma"]),
}


def project(root: Path, source: Path, classes: list[str], weights: Path, harmonise: bool) -> ConfigurationManager:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for stage in ("data_ingestion", "prepare_base_model", "features", "training", "evaluation", "register"):
        config[stage]["root_dir"] = str(root / "artifacts" / stage)
    config["data_ingestion"]["source"] = str(source)
    config["evaluation"]["scores_file"] = str(root / "scores.json")
    config["tracking"] |= {"tracking_uri": f"sqlite:///{root}/mlflow.db", "artifact_location": str(root / "mlruns")}
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["classes"] = classes
    params["base_model"] |= {"weights": str(weights), "image_size": 224, "pooling": "avg", "harmonise": harmonise}
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config/config.yaml").write_text(yaml.safe_dump(config))
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return ConfigurationManager(root / "config/config.yaml", root / "params.yaml", project_root=root)


def run(manager: ConfigurationManager) -> dict:
    DataIngestion(manager.data_ingestion()).run()
    PrepareBaseModel(manager.prepare_base_model()).run()
    Features(manager.features()).run()
    Training(manager.training()).run()
    return Evaluation(manager.evaluation()).run()


def auc(block: dict) -> str:
    low, high = block["ci95"]["roc_auc"]
    return f"{block['metrics']['roc_auc']:.3f} ({low:.3f}–{high:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--shared", type=Path, default=Path(os.environ.get("CANCER_CLASSIFIER_SHARED", REPO.parent / "shared"))
    )
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["two", "four"])
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # a throw-away local store per run
    rows = []
    for task in args.tasks:
        folder, classes = TASKS[task]
        for harmonise in (False, True):
            with tempfile.TemporaryDirectory(prefix="harmonisation-") as root:
                manager = project(
                    Path(root),
                    args.shared / "data" / folder,
                    classes,
                    args.shared / "models/vgg16_notop.weights.h5",
                    harmonise,
                )
                result = run(manager)
            rows.append(
                f"| {task} classes | {'on' if harmonise else 'off'} | {result['test_images']} | "
                f"{auc(result)} | {auc(result['baseline'])} | {auc(result['input_baseline'])} |"
            )
            print(rows[-1], flush=True)
    print(
        "\n| task | harmonisation | test images | model ROC-AUC (95% CI) | metadata baseline | model-input baseline |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
