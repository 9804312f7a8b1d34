"""Compare settings on the real chest CT data, side by side on the same split.

    python -m benchmarks.variants --vary base_model.harmonise=false,true                 # harmonisation
    python -m benchmarks.variants --vary features.precision=float32,mixed_bfloat16 --tasks two

For each task (``two``: adenocarcinoma vs normal; ``four``: the four classes) and each value of the
varied params key, it runs the pipeline on the same de-duplicated, seeded split (pretrained weights
from shared/models, 224 px, average pooling: the README's settings; every other param at the repo's
defaults) and prints the held-out ROC-AUC of the model next to the evaluation stage's two shortcut
baselines: the files' metadata, and the intensity statistics of what the model actually sees.
"""

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from cancer_classifier.chest_ct.components.data_ingestion import DataIngestion
from cancer_classifier.chest_ct.components.evaluation import Evaluation
from cancer_classifier.chest_ct.components.features import Features
from cancer_classifier.chest_ct.components.prepare_base_model import PrepareBaseModel
from cancer_classifier.chest_ct.components.training import Training
from cancer_classifier.config import ConfigurationManager

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CANCER_CLASSIFIER_SHARED", REPO.parent / "shared"))
STAGES = ("data_ingestion", "prepare_base_model", "features", "training", "evaluation", "register")
TASKS = {
    "two": ("chest-ct/train", ["adenocarcinoma", "normal"]),
    "four": ("chest-ct", ["adenocarcinoma", "large.cell.carcinoma", "normal", "squamous.cell.carcinoma"]),
}


def project(root: Path, task: str, key: str, value: object) -> ConfigurationManager:
    folder, classes = TASKS[task]
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for stage in STAGES:
        config[stage]["root_dir"] = str(root / "artifacts" / stage)
    config["data_ingestion"]["source"] = str(SHARED / "data" / folder)
    config["evaluation"]["scores_file"] = str(root / "scores.json")
    config["tracking"] |= {"tracking_uri": f"sqlite:///{root}/mlflow.db", "artifact_location": str(root / "mlruns")}
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["classes"] = classes
    weights = str(SHARED / "models/vgg16_notop.weights.h5")
    params["base_model"] |= {"weights": weights, "image_size": 224, "pooling": "avg"}
    group, name = key.split(".", 1)
    params[group][name] = value
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config/config.yaml").write_text(yaml.safe_dump(config))
    shutil.copytree(REPO / "config/tabular_schemas", root / "config/tabular_schemas", dirs_exist_ok=True)
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
    parser.add_argument("--vary", required=True, help="params key=value1,value2 (values read as YAML)")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["four", "two"])
    args = parser.parse_args()
    key, values = args.vary.split("=", 1)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # a throw-away local store per run
    header = f"| task | {key} | test images | model ROC-AUC (95% CI) | metadata baseline | model-input baseline |"
    rows = []
    for task in args.tasks:
        for value in (yaml.safe_load(v) for v in values.split(",")):
            with tempfile.TemporaryDirectory(prefix="variants-") as root:
                result = run(project(Path(root), task, key, value))
            rows.append(
                f"| {task} classes | {value} | {result['test_images']} | {auc(result)} | "
                f"{auc(result['baseline'])} | {auc(result['input_baseline'])} |"
            )
            print(rows[-1], flush=True)
    print("\n" + header + "\n|---|---|---|---|---|---|\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
