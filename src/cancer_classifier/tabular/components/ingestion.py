"""Tabular stage 1: read the task's table, check it against the declared schema, split it once.

A violation (undeclared or missing column, missing, mistyped, out-of-range or unknown value, a target
outside its two classes, a duplicate row) stops the stage with a report naming the column and rows,
or, where params say ``drop``, drops those rows and counts them. Leakage columns are dropped first.

Outputs (one folder, replaced atomically): ``train.csv``, ``test.csv`` (declared columns + target)
and ``dataset.json`` (task, schema, classes, what was dropped and why, split counts).
"""

import io
import urllib.request

import pandas as pd
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from cancer_classifier.core.errors import DataSourceError
from cancer_classifier.core.io import atomic_directory, save_json, sha256_bytes
from cancer_classifier.core.logging import logger
from cancer_classifier.entity.tabular import TabularIngestionConfig
from cancer_classifier.tabular.schema import Violation, table_violations, typed

DOWNLOAD_TIMEOUT_SECONDS = 120
MIN_ROWS_PER_CLASS = 5  # the split and cross-validation need a few of each class


class TabularDataError(DataSourceError):
    """The table does not match its declared schema; the message names the columns and rows."""


def read_source(config: TabularIngestionConfig) -> pd.DataFrame:
    """The raw table from scikit-learn's copy, a CSV file or an http(s) URL to a CSV."""
    if config.source == "sklearn:breast_cancer":
        bunch = load_breast_cancer(as_frame=True)
        frame = bunch.frame.drop(columns="target")
        frame[config.target] = bunch.target_names[bunch.target.to_numpy()]
        return frame
    if config.source.startswith(("http://", "https://")):
        logger.info("downloading %s", config.source)
        with urllib.request.urlopen(config.source, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
            data = response.read()
    else:
        with open(config.source, "rb") as file:
            data = file.read()
    if config.source_sha256 and sha256_bytes(data) != config.source_sha256.lower():
        raise TabularDataError(f"{config.source}: sha256 {sha256_bytes(data)} does not match the configured one")
    try:
        return pd.read_csv(io.BytesIO(data))
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise TabularDataError(f"{config.source}: not a readable CSV ({error})") from None


def check_columns(frame: pd.DataFrame, config: TabularIngestionConfig) -> pd.DataFrame:
    """Drop the leakage columns; fail on declared columns that are absent or columns nobody declared."""
    declared = [c.name for c in config.columns] + [config.target]
    absent = [name for name in declared if name not in frame.columns]
    undeclared = [name for name in frame.columns if name not in declared and name not in config.drop_columns]
    schema, where = f"config/tabular_schemas/{config.task.name}.yaml", f"params.yaml tabular.{config.task.name}.data"
    if absent:
        raise TabularDataError(f"{config.source}: declared column(s) {absent} are not in the table ({schema})")
    if undeclared:
        raise TabularDataError(
            f"{config.source}: undeclared column(s) {undeclared}: declare them in {schema} "
            f"or, if they are identifiers or known only after the outcome, list them in {where}.drop_columns"
        )
    return frame[declared]


def target_violations(frame: pd.DataFrame, config: TabularIngestionConfig) -> list[Violation]:
    outside = ~frame[config.target].isin(config.classes).to_numpy()
    if not outside.any():
        return []
    rows = tuple(int(i) for i in outside.nonzero()[0])
    return [Violation(config.target, f"not one of the target's classes {list(config.classes)}", rows)]


def apply_policy(frame: pd.DataFrame, violations: list[Violation], policy: str, what: str, source: str) -> pd.DataFrame:
    """Stop with the report, or drop every row named in it (rows are the frame's index: source row numbers)."""
    if not violations:
        return frame
    report = "\n  ".join(v.describe() for v in violations)
    if policy == "fail":
        raise TabularDataError(f"{source}: {what} (rows count from 1, the first data row):\n  {report}")
    rows = sorted({row for v in violations for row in v.rows})
    logger.warning("dropping %d row(s) with %s:\n  %s", len(rows), what, report)
    return frame.drop(index=rows)


def duplicate_violations(frame: pd.DataFrame) -> list[Violation]:
    repeated = frame.duplicated(keep="first")
    if not repeated.any():
        return []
    return [Violation("(all columns)", "repeats an earlier row", tuple(int(i) for i in frame.index[repeated]))]


class TabularIngestion:
    def __init__(self, config: TabularIngestionConfig) -> None:
        self.config = config

    def validated(self) -> tuple[pd.DataFrame, dict]:
        """The checked table (declared columns typed, target as class names) and what was done to it."""
        config = self.config
        raw = read_source(config)
        logger.info("%s: read %d rows x %d columns from %s", config.task.name, len(raw), raw.shape[1], config.source)
        frame = check_columns(raw, config).reset_index(drop=True)  # index = source row, kept through the drops
        invalid = table_violations(frame, config.columns) + target_violations(frame, config)
        frame = apply_policy(frame, invalid, config.on_invalid, "values the schema does not allow", config.source)
        duplicates = duplicate_violations(frame)
        frame = apply_policy(frame, duplicates, config.on_duplicate, "duplicate rows", config.source)
        counts = frame[config.target].value_counts()
        if any(counts.get(name, 0) < MIN_ROWS_PER_CLASS for name in config.classes):
            raise TabularDataError(
                f"{config.source}: each class needs at least {MIN_ROWS_PER_CLASS} rows; got {counts.to_dict()}"
            )
        report = {
            "rows_read": len(raw),
            "leakage_columns_dropped": [c for c in config.drop_columns if c in raw.columns],
            "leakage_columns_absent": [c for c in config.drop_columns if c not in raw.columns],
            "invalid": [v.as_dict() for v in invalid],
            "invalid_rows_dropped": len({r for v in invalid for r in v.rows}),
            "duplicate_rows_dropped": sum(len(v.rows) for v in duplicates),
            "rows_kept": len(frame),
        }
        table = typed(frame, config.columns)
        table[config.target] = frame[config.target].astype(str)
        return table.reset_index(drop=True), report

    def run(self) -> dict:
        config = self.config
        table, report = self.validated()
        train, test = train_test_split(
            table, test_size=config.test_size, stratify=table[config.target], random_state=config.seed
        )
        dataset = {
            "task": config.task.name,
            "title": config.task.title,
            "kind": config.task.kind,
            "source": config.source,
            "target": config.target,
            "classes": list(config.classes),
            "positive_class": config.positive_class,
            "columns": [c.as_dict() for c in config.columns],
            "split": {"method": "stratified by target, seeded", "test_size": config.test_size, "seed": config.seed},
            "counts": {name: part[config.target].value_counts().reindex(config.classes, fill_value=0).to_dict()
                       for name, part in (("train", train), ("test", test))},
            **report,
        }
        with atomic_directory(config.root_dir) as out:
            train.to_csv(out / "train.csv", index=False)
            test.to_csv(out / "test.csv", index=False)
            save_json(out / "dataset.json", dataset)
        logger.info("%s: %d rows kept (%d invalid, %d duplicate dropped); train %s, test %s", config.task.name,
                    len(table), report["invalid_rows_dropped"], report["duplicate_rows_dropped"],
                    dataset["counts"]["train"], dataset["counts"]["test"])
        return dataset
