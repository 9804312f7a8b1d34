"""Tabular configuration and schema validation: good and bad tables, fail and drop policies."""

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_breast_cancer

from cancer_classifier.config import ConfigurationManager
from cancer_classifier.core.errors import ConfigError
from cancer_classifier.entity import ColumnSpec
from cancer_classifier.tabular.components.ingestion import TabularDataError, TabularIngestion
from cancer_classifier.tabular.schema import column_violations
from tests.conftest import REPO, shared_path, write_project
from tests.tabular_support import tabular_project


def breast_csv(folder, edit=None) -> str:
    """The built-in breast cancer table as a CSV (target column ``diagnosis``), optionally edited."""
    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.drop(columns="target")
    frame["diagnosis"] = bunch.target_names[bunch.target.to_numpy()]
    if edit:
        frame = edit(frame)
    path = folder / "breast.csv"
    frame.to_csv(path, index=False)
    return str(path)


def ingestion(tmp_path, source: str, data: dict | None = None):
    config = {"tabular": {"tasks": {"breast-cancer": {"source": source}}}}
    params = {"tabular": {"breast-cancer": {"data": data or {}}}}
    manager = ConfigurationManager(*write_project(tmp_path, config, params), project_root=tmp_path)
    return TabularIngestion(manager.tabular().ingestion("breast-cancer"))


def set_value(row: int, column: str, value):
    def edit(frame):
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
        return frame
    return edit


# -- configuration ----------------------------------------------------------------------------


def test_repo_config_validates_and_colorectal_is_opt_in():
    tabular = ConfigurationManager(REPO / "config/config.yaml", REPO / "params.yaml", project_root=REPO).tabular()
    assert tabular.enabled == ("breast-cancer",)
    assert tabular.task("colorectal-survival").kind == "prognostic"
    with pytest.raises(ConfigError, match=r"tabular.tasks.colorectal-survival.source' is not set: set it"):
        tabular.ingestion("colorectal-survival")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"enabled": ["breast-cancer", "lung"]}, r"'tabular.enabled' must be distinct task names"),
        ({"breast-cancer": {"model": {"kind": "svm"}}}, r"'tabular.breast-cancer.model.kind' must be one of"),
        ({"breast-cancer": {"model": {"features": ["mean radius", "nope"]}}}, r"features' must be 'all' or a list"),
        ({"breast-cancer": {"data": {"columns": {"mean radius": {"type": "number", "min": 0, "max": 50, "unit": ""}}}}},
         r"unknown key\(s\) \['tabular.breast-cancer.data.columns'\]"),  # the columns are in their own file
        ({"breast-cancer": {"data": {"positive_class": "cancer"}}}, r"data.positive_class' must be one of"),
        ({"breast-cancer": {"evaluation": {"cv_folds": 1}}}, r"evaluation.cv_folds' must be 0"),
        ({"breast-cancer": {"model": {"keras": {"hidden_units": []}}}}, r"keras.hidden_units' must be a list"),
        ({"breast-cancer": {"data": {"on_invalid": "ignore"}}}, r"data.on_invalid' must be one of"),
    ],
)
def test_bad_tabular_params_name_the_file_and_key(tmp_path, params, message):
    with pytest.raises(ConfigError, match=message) as error:
        ConfigurationManager(*write_project(tmp_path, None, {"tabular": params}), project_root=tmp_path)
    assert "params.yaml" in str(error.value)


def with_schemas(tmp_path, edit) -> ConfigurationManager:
    """The test project with its breast-cancer column schemas edited (``edit(columns)``)."""
    config_path, params_path = write_project(tmp_path)
    schemas = config_path.parent / "tabular_schemas"
    columns = yaml.safe_load((schemas / "breast-cancer.yaml").read_text())
    edit(columns)
    (schemas / "breast-cancer.yaml").write_text(yaml.safe_dump(columns, sort_keys=False))
    return ConfigurationManager(config_path, params_path, project_root=tmp_path)


def test_the_column_schemas_are_their_own_file_next_to_config_yaml():
    """Out of params.yaml (its params would fill `dvc exp show`): a dependency of each task's ingestion."""
    tabular = ConfigurationManager(REPO / "config/config.yaml", REPO / "params.yaml", project_root=REPO).tabular()
    assert tabular.schema_file("breast-cancer") == REPO / "config/tabular_schemas/breast-cancer.yaml"
    assert [c.name for c in tabular.ingestion("breast-cancer").columns] == list(load_breast_cancer().feature_names)
    assert not [key for key in tabular.registry("breast-cancer").params if ".data.columns" in key]
    ingestion = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["tabular_ingestion"]["do"]
    assert "config/tabular_schemas/${item}.yaml" in ingestion["deps"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["mean radius"].update(min=5, max=1), r"'mean radius.min/max' must be two numbers with min < max"),
        (lambda c: c["mean radius"].update(type="text"), r"'mean radius.type' must be one of"),
        (lambda c: c["mean area"].pop("unit"),
         r"'mean area' must be a mapping with the keys \['max', 'min', 'type', 'unit'\]"),
        (lambda c: c.update(diagnosis={"type": "category", "categories": ["a", "b"]}),
         r"must declare neither the target nor a dropped column .*got \['diagnosis'\]"),
        (lambda c: c.update({False: {"type": "category", "categories": ["a"]}}), r"column names must be strings"),
        (lambda c: c.update(site={"type": "category", "categories": ["a", "a"]}),
         r"'site.categories' must be a list of distinct strings"),
        (lambda c: c.clear(), r"expected a mapping|at least one column"),
    ],
)
def test_bad_column_schemas_name_the_file_and_key(tmp_path, edit, message):
    with pytest.raises(ConfigError, match=message) as error:
        with_schemas(tmp_path, edit)
    assert "tabular_schemas/breast-cancer.yaml" in str(error.value)


def test_each_configured_task_needs_its_schema_file_and_no_other(tmp_path):
    config_path, params_path = write_project(tmp_path)
    schemas = config_path.parent / "tabular_schemas"
    (schemas / "colorectal-survival.yaml").rename(schemas / "lung.yaml")
    with pytest.raises(ConfigError, match=r"tabular_schemas: no column schema for the task\(s\) \['colorectal-surv"):
        ConfigurationManager(config_path, params_path, project_root=tmp_path)
    (schemas / "lung.yaml").rename(schemas / "colorectal-survival.yaml")
    (schemas / "lung.yaml").write_text("age: {type: integer, min: 0, max: 120, unit: years}\n")
    with pytest.raises(ConfigError, match=r"column schema\(s\) for the unknown task\(s\) \['lung'\]"):
        ConfigurationManager(config_path, params_path, project_root=tmp_path)


def test_missing_csv_source_names_the_config_key(tmp_path):
    config = {"tabular": {"tasks": {"breast-cancer": {"source": "no/such.csv"}}}}
    manager = ConfigurationManager(*write_project(tmp_path, config, None), project_root=tmp_path)
    with pytest.raises(ConfigError, match=r"config.yaml: 'tabular.tasks.breast-cancer.source' is 'no/such.csv'"):
        manager.tabular().ingestion("breast-cancer")


# -- one column -------------------------------------------------------------------------------


def test_column_checks_name_the_problem_and_rows():
    spec = ColumnSpec("age", "integer", "years", 18, 110)
    values = pd.Series([40, None, "forty", 12, 200, 41.5, True, 60], dtype=object)
    found = {v.problem: v.rows for v in column_violations(values, spec)}
    assert found == {
        "missing": (1,),
        "not a number": (2, 6),
        "not a whole number": (5,),
        "below the minimum 18": (3,),
        "above the maximum 110": (4,),
    }
    stage = ColumnSpec("stage", "category", categories=("I", "II"))
    assert [(v.problem, v.rows) for v in column_violations(pd.Series(["I", "III", 2], dtype=object), stage)] == [
        ("not one of ['I', 'II']", (1, 2))
    ]


# -- whole tables -----------------------------------------------------------------------------


def test_built_in_breast_cancer_table_passes_and_splits_stratified(tmp_path):
    dataset = ingestion(tmp_path, "sklearn:breast_cancer").run()
    assert dataset["rows_read"] == 569 == dataset["rows_kept"]
    assert dataset["counts"]["test"] == {"benign": 72, "malignant": 42}
    assert len(dataset["columns"]) == 30 and not dataset["invalid"]
    test = pd.read_csv(tmp_path / "artifacts/tabular/breast-cancer/ingestion/test.csv")
    train = pd.read_csv(tmp_path / "artifacts/tabular/breast-cancer/ingestion/train.csv")
    assert len(train) + len(test) == 569 and not set(map(tuple, train.values)) & set(map(tuple, test.values))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (set_value(3, "mean radius", 99.0), r"column 'mean radius': above the maximum 50 in 1 row\(s\): 4"),
        (set_value(10, "mean texture", "abc"), r"column 'mean texture': not a number in 1 row\(s\): 11"),
        (set_value(0, "worst area", None), r"column 'worst area': missing in 1 row\(s\): 1"),
        (set_value(5, "diagnosis", "unsure"), r"column 'diagnosis': not one of the target's classes"),
        (lambda f: f.drop(columns="mean area"), r"declared column\(s\) \['mean area'\] are not in the table"),
        (lambda f: f.assign(patient_id=range(len(f))), r"undeclared column\(s\) \['patient_id'\].*drop_columns"),
    ],
)
def test_a_violation_stops_with_the_column_and_rows(tmp_path, edit, message):
    with pytest.raises(TabularDataError, match=message):
        ingestion(tmp_path, breast_csv(tmp_path, edit)).run()


def test_drop_policies_drop_and_count(tmp_path):
    def edit(frame):
        frame.loc[3, "mean radius"] = 99.0
        frame.loc[7, "mean smoothness"] = -1.0
        return pd.concat([frame, frame.iloc[[0, 1]]], ignore_index=True).assign(id=0)

    source = breast_csv(tmp_path, edit)
    dataset = ingestion(tmp_path, source, {"on_invalid": "drop", "drop_columns": ["id"]}).run()
    assert dataset["invalid_rows_dropped"] == 2 and dataset["duplicate_rows_dropped"] == 2
    assert dataset["rows_read"] == 571 and dataset["rows_kept"] == 567
    assert dataset["leakage_columns_dropped"] == ["id"]
    assert {v["column"] for v in dataset["invalid"]} == {"mean radius", "mean smoothness"}
    with pytest.raises(TabularDataError, match=r"(?s)duplicate rows.*repeats an earlier row in 2 row\(s\): 570, 571"):
        ingestion(tmp_path, source, {"on_invalid": "drop", "on_duplicate": "fail", "drop_columns": ["id"]}).run()


@pytest.mark.real_data
def test_the_shared_colorectal_csv_passes_its_schema_with_leakage_columns_dropped(tmp_path):
    source = shared_path("data/colorectal/colorectal_cancer_dataset.csv")
    config = {"tabular": {"tasks": {"colorectal-survival": {"source": str(source)}}}}
    manager = ConfigurationManager(*write_project(tmp_path, config, None), project_root=tmp_path)
    table, report = TabularIngestion(manager.tabular().ingestion("colorectal-survival")).validated()
    assert report["rows_read"] == 167_497 == report["rows_kept"] and not report["invalid"]
    assert report["leakage_columns_dropped"] == ["Patient_ID", "Survival_5_years", "Mortality", "Healthcare_Costs"]
    assert not {"Patient_ID", "Survival_5_years", "Mortality", "Healthcare_Costs"} & set(table.columns)
    assert np.isclose((table["Survival_Prediction"] == "Yes").mean(), 0.5996, atol=1e-3)


def test_tabular_project_helper_keeps_colorectal_optional(tmp_path):
    manager = tabular_project(tmp_path, colorectal=False)
    with pytest.raises(ConfigError, match="is not set"):
        manager.tabular().ingestion("colorectal-survival")
