"""Read the tabular ingestion stage's outputs: the dataset description and a typed split."""

from pathlib import Path

import numpy as np
import pandas as pd

from cancer_classifier.core.errors import StageInputError
from cancer_classifier.core.io import load_json
from cancer_classifier.entity.tabular import ColumnSpec
from cancer_classifier.tabular.schema import typed


def dataset_info(data_dir: Path) -> dict:
    path = Path(data_dir) / "dataset.json"
    if not path.is_file():
        raise StageInputError(f"{path} not found: run the tabular_ingestion stage first (dvc repro)")
    return load_json(path)


def load_split(data_dir: Path, split: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The split's declared columns (typed) and its labels as class indices (order of ``classes``)."""
    info = dataset_info(data_dir)
    columns = tuple(ColumnSpec.from_dict(c) for c in info["columns"])
    dtypes = {c.name: float if c.numeric else str for c in columns}
    frame = pd.read_csv(Path(data_dir) / f"{split}.csv", dtype=dtypes | {info["target"]: str}, keep_default_na=False)
    labels = frame[info["target"]].map({name: i for i, name in enumerate(info["classes"])}).to_numpy(int)
    return typed(frame, columns), labels
