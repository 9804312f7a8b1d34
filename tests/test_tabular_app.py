"""The tabular pages and JSON API (``POST /predict/<task>``), through Flask's test client."""

import dataclasses

import pytest
from sklearn.datasets import load_breast_cancer

from cancer_classifier.serving.app import create_app
from cancer_classifier.tabular.components.data import load_split
from tests.tabular_support import COLORECTAL, run_task, tabular_project


@pytest.fixture(scope="module")
def tabular_manager(tmp_path_factory):
    manager = tabular_project(tmp_path_factory.mktemp("tabular-app"))
    run_task(manager, "breast-cancer")
    if COLORECTAL.is_file():
        run_task(manager, "colorectal-survival")
    return manager


@pytest.fixture(scope="module")
def tabular_app(tabular_manager, serving):
    configs = tabular_manager.tabular().serving()
    return create_app({"TESTING": True, "SERVING_CONFIG": serving, "TABULAR_SERVING": configs})


@pytest.fixture
def tclient(tabular_app):
    return tabular_app.test_client()


@pytest.fixture(scope="module")
def breast_rows(tabular_manager):
    test, labels = load_split(tabular_manager.tabular().ingestion("breast-cancer").root_dir, "test")
    return test, labels


def colorectal_record() -> dict:
    if not COLORECTAL.is_file():
        pytest.skip(f"{COLORECTAL} not found: set CANCER_CLASSIFIER_SHARED to the shared data folder")
    return {
        "Country": "UK", "Age": 64, "Gender": "F", "Cancer_Stage": "Regional", "Tumor_Size_mm": 30,
        "Family_History": "No", "Smoking_History": "Yes", "Alcohol_Consumption": "No", "Obesity_BMI": "Overweight",
        "Diet_Risk": "Moderate", "Physical_Activity": "Low", "Diabetes": "No", "Inflammatory_Bowel_Disease": "No",
        "Genetic_Mutation": "No", "Screening_History": "Regular", "Early_Detection": "Yes",
        "Treatment_Type": "Surgery", "Incidence_Rate_per_100K": 40, "Mortality_Rate_per_100K": 12,
        "Urban_or_Rural": "Urban", "Economic_Classification": "Developed", "Healthcare_Access": "High",
        "Insurance_Status": "Insured",
    }


# The model's column order: config/tabular_schemas/breast-cancer.yaml lists them in the table's order.
FIRST, LAST = load_breast_cancer().feature_names[0], load_breast_cancer().feature_names[-1]


def predict(client, task: str, payload):
    return client.post(f"/predict/{task}", json=payload)


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert "Traceback" not in response.get_data(as_text=True)
    return body["error"]


def test_health_and_ready_list_every_task_and_version(tclient):
    tasks = tclient.get("/health").get_json()["tasks"]
    assert tasks["chest-ct"]["loaded"] and tasks["breast-cancer"]["version"] == "1"
    assert tasks["breast-cancer"]["name"] == "breast-cancer-classifier"
    assert tasks["breast-cancer"]["kind"] == "diagnostic"
    ready = tclient.get("/ready")
    assert ready.status_code == 200
    assert ready.get_json()["tasks"] == tasks
    colorectal = tasks["colorectal-survival"]
    assert colorectal["kind"] == "prognostic" and colorectal["required"] is False
    assert colorectal["loaded"] == COLORECTAL.is_file()


def test_a_required_task_without_a_model_makes_ready_503(tabular_manager, serving, tmp_path):
    configs = tuple(
        dataclasses.replace(c, model_dir=tmp_path / "none", required=True) for c in tabular_manager.tabular().serving()
    )
    client = create_app({"TESTING": True, "SERVING_CONFIG": serving, "TABULAR_SERVING": configs}).test_client()
    ready = client.get("/ready")
    assert ready.status_code == 503 and "breast-cancer: no breast-cancer model yet" in ready.get_json()["reason"]
    assert "dvc repro" in error_of(predict(client, "breast-cancer", {"features": [[1] * 30]}), 503)
    assert client.get("/tabular/breast-cancer").status_code == 200


def test_records_and_features_give_the_same_answers_for_several_rows(tclient, breast_rows):
    test, labels = breast_rows
    rows = test.head(3)
    by_features = predict(tclient, "breast-cancer", {"features": rows.values.tolist()}).get_json()
    by_records = predict(tclient, "breast-cancer", {"records": rows.to_dict(orient="records")}).get_json()
    assert by_features["predictions"] == by_records["predictions"] and len(by_features["predictions"]) == 3
    first = by_features["predictions"][0]
    assert set(first["probabilities"]) == {"benign", "malignant"}
    assert first["probability"] == max(first["probabilities"].values())
    assert by_features["columns"] == list(test.columns)
    expected = {"name": "breast-cancer-classifier", "version": "1", "demo": False, "precision": None,
                "engine": None}
    assert by_features["model"] == expected
    assert by_features["kind"] == "diagnostic" and "not for clinical use" in by_features["intended_use"]
    answers = predict(tclient, "breast-cancer", {"features": test.values.tolist()}).get_json()["predictions"]
    names = ["benign", "malignant"]
    assert sum(a["label"] == names[y] for a, y in zip(answers, labels)) / len(labels) > 0.9


def test_colorectal_is_served_as_prognostic(tclient):
    body = predict(tclient, "colorectal-survival", {"records": [colorectal_record()]}).get_json()
    assert body["kind"] == "prognostic" and body["intended_use"].startswith("Prognostic model")
    assert body["predictions"][0]["label"] in ("Yes", "No")
    page = tclient.get("/tabular/colorectal-survival").get_data(as_text=True)
    assert "PROGNOSTIC" in page and "it does not diagnose" in page
    assert '<option value="Metastatic">' in page and 'name="Age"' in page and 'step="1"' in page


def test_breast_cancer_page_has_a_form_with_units_and_ranges(tclient):
    page = tclient.get("/tabular/breast-cancer")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert 'name="mean radius"' in html and 'min="0" max="50"' in html and "(image units)" in html
    assert "breast-cancer-classifier" in html and "not for clinical use" in html
    assert "http://" not in html and "https://" not in html
    for asset in ("/static/fetch.js", "/static/bars.js", "/static/tabular.js", "/static/tabular.css"):
        assert asset in html and tclient.get(asset).status_code == 200


def test_the_tabular_pages_extend_the_base_page(tclient):
    """base.html's banner, task navigation (this task marked current, monitoring included) and footer."""
    html = tclient.get("/tabular/breast-cancer").get_data(as_text=True)
    assert '<header class="banner banner-demo" role="note">' in html and "not for clinical use" in html
    assert '<a href="/tabular/breast-cancer" aria-current="page">' in html and html.count('aria-current="page"') == 1
    assert '<a href="/">Chest CT</a>' in html and '<a href="/monitoring">Monitoring</a>' in html
    assert '<a href="/ready">/ready</a>' in html and "<code>POST /predict/breast-cancer</code>" in html
    chest_ct = tclient.get("/").get_data(as_text=True)
    assert '<a href="/tabular/breast-cancer">' in chest_ct and '<a href="/" aria-current="page">' in chest_ct


def breast_record(breast_rows, **changes) -> dict:
    return breast_rows[0].head(1).to_dict(orient="records")[0] | changes


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (lambda r: {"features": [list(r.values())[:29]]}, "row 1: expected 30 values in the order"),
        (lambda r: {"features": [[*list(r.values())[:29], "big"]]},
         f"row 1, field '{LAST}': expected a number, got 'big'"),
        (lambda r: {"records": [r | {"mean radius": "12.5"}]}, "row 1, field 'mean radius': expected a number"),
        (lambda r: {"records": [r | {"mean radius": True}]}, "row 1, field 'mean radius': expected a number"),
        (lambda r: {"records": [r, r | {"mean radius": 99}]}, "field 'mean radius': above the maximum 50 (row 2)"),
        (lambda r: {"records": [r | {"mean area": -1}]}, "field 'mean area': below the minimum 0 (row 1)"),
        (lambda r: {"records": [r | {"mean area": None}]}, "field 'mean area': missing (row 1)"),
        (lambda r: {"records": [{k: v for k, v in r.items() if k != "mean area"}]}, "row 1: missing field 'mean area'"),
        (lambda r: {"records": [r | {"age": 40}]}, "row 1: unknown field 'age'"),
        (lambda r: {"records": [list(r.values())]}, "row 1: expected an object keyed by column"),
        (lambda r: {"records": []}, '"records" must be a non-empty list'),
        (lambda r: {"features": [list(r.values())] * 1001}, "1001 rows in one request; at most 1000"),
        (lambda r: {"features": [list(r.values())], "records": [r]}, "exactly one key"),
        (lambda r: {"image": "abc"}, "exactly one key"),
        (lambda r: [r], "exactly one key"),
    ],
)
def test_bad_input_gets_a_400_naming_the_field(tclient, breast_rows, payload, message):
    assert message in error_of(predict(tclient, "breast-cancer", payload(breast_record(breast_rows))), 400)


def test_non_finite_numbers_and_malformed_json_are_400(tclient, breast_rows):
    body = '{"features": [[' + ", ".join(["NaN"] + ["1"] * 29) + "]]}"
    response = tclient.post("/predict/breast-cancer", data=body, content_type="application/json")
    assert f"field '{FIRST}': expected a number, got nan" in error_of(response, 400)
    malformed = tclient.post("/predict/breast-cancer", data="{features", content_type="application/json")
    assert "exactly one key" in error_of(malformed, 400)


def test_unknown_category_names_the_field(tclient):
    record = colorectal_record() | {"Cancer_Stage": "Stage V"}
    message = error_of(predict(tclient, "colorectal-survival", {"records": [record]}), 400)
    assert message == "field 'Cancer_Stage': not one of ['Localized', 'Regional', 'Metastatic'] (row 1)"
    numeric = error_of(predict(tclient, "colorectal-survival", {"records": [colorectal_record() | {"Gender": 1}]}), 400)
    assert "row 1, field 'Gender': expected one of ['F', 'M'], got 1" == numeric


def test_wrong_content_type_unknown_task_and_method(tclient):
    csv = tclient.post("/predict/breast-cancer", data="1,2", content_type="text/csv")
    assert "application/json" in error_of(csv, 415)
    assert "unknown task 'lung'" in error_of(predict(tclient, "lung", {"features": [[1]]}), 404)
    assert "unknown task" in error_of(tclient.get("/tabular/lung"), 404)
    error_of(tclient.get("/predict/breast-cancer"), 405)
