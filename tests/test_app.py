"""The web app and JSON API, through Flask's test client, on the model the tiny pipeline trained."""

import base64
import dataclasses
import io
import json
import re
import shutil
import struct
import sys
import zlib

import numpy as np
import pydicom
import pytest
from markupsafe import escape
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from cancer_classifier.chest_ct import scoring
from cancer_classifier.chest_ct.modeling import load_classifier
from cancer_classifier.chest_ct.scoring import REFERENCE, Variant, resolve_variant
from cancer_classifier.chest_ct.serving.inputs import Window, dicom_to_rgb
from cancer_classifier.chest_ct.serving.predictor import Predictor, admitted_variants
from cancer_classifier.core.images import decode_image
from cancer_classifier.core.io import load_json
from cancer_classifier.core.limits import MAX_SIDE, limit_size
from cancer_classifier.serving.app import create_app
from tests.conftest import shared_path

LUNG = Window(-600, 1500)
SBU_SLICE = "data/dicom/covid19-ny-sbu/A048383/axial/19001231-30.dcm"
JPEG_LOSSLESS = "data/dicom/barre-ct-mono2-16-chest/CT_JPEG70.dcm"


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def metadata(serving) -> dict:
    return load_json(serving.model_dir / "model_metadata.json")


@pytest.fixture(scope="module")
def png_bytes(trained_project) -> bytes:
    test_images = sorted((trained_project.data_ingestion().root_dir).rglob("*.png"))
    assert test_images, "the tiny pipeline wrote no images"
    return test_images[0].read_bytes()




def upload(client, data: bytes, name: str = "image.png", explain: bool = False):
    url = "/predict?explain=1" if explain else "/predict"
    return client.post(url, data={"file": (io.BytesIO(data), name)}, content_type="multipart/form-data")


def png_of(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds no pixels: tiny bytes, huge image."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def dicom_bytes(stored: np.ndarray, photometric: str = "MONOCHROME2", pixels: bool = True) -> bytes:
    """A minimal valid CT DICOM file (preamble, DICM, Explicit VR Little Endian) in memory."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = "Secret^Patient", "PID-424242"
    ds.Modality = "CT"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    if pixels:
        ds.PixelData = stored.astype("<i2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def assert_json_error(response, status: int) -> dict:
    assert response.status_code == status, response.data[:500]
    assert response.is_json
    body = response.get_json()
    assert isinstance(body.get("error"), str) and body["error"]
    assert "Traceback" not in response.get_data(as_text=True)
    return body


# -- the factory and the plain routes ---------------------------------------------------------


def test_factory_applies_test_config_and_upload_limit(app, serving):
    assert app.testing
    assert app.config["MAX_CONTENT_LENGTH"] == serving.max_upload_bytes
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert {"/", "/predict", "/health", "/ready", "/metrics", "/model-card", "/model-card.md"} <= rules
    assert not any("train" in rule for rule in rules), "serving must offer no training route"


def test_health_and_ready(client, metadata):
    assert client.get("/health").get_json()["status"] == "ok"
    ready = client.get("/ready")
    assert ready.status_code == 200
    body = ready.get_json()
    assert body["status"] == "ready"
    assert body["model"]["name"] == "chest-ct-classifier"
    assert body["model"]["version"] == "1"  # the register stage's first version
    assert body["model"]["classes"] == metadata["classes"]
    assert "not for clinical use" in body["intended_use"]


def test_page_shows_demo_banner_upload_form_and_offline_assets(client, metadata):
    page = client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert metadata["demo"] and "DEMO" in html
    assert metadata["intended_use"] in html
    assert 'type="file"' in html and 'name="file"' in html
    assert "http://" not in html and "https://" not in html, "no CDN: the page must work offline"
    for asset in ("/static/app.css", "/static/app.js"):
        assert asset in html
        assert client.get(asset).status_code == 200


BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


@pytest.mark.parametrize(("path", "current"), [("/", "Chest CT"), ("/monitoring", "Monitoring"), ("/model-card", None)])
def test_every_page_has_the_base_banner_navigation_and_footer(client, metadata, path, current):
    """base.html: one head, banner, task navigation and footer for every page."""
    page = client.get(path, headers={"Accept": BROWSER_ACCEPT})
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert '<header class="banner banner-demo" role="note">' in html and metadata["intended_use"] in html
    assert '<nav class="tasks" aria-label="Tasks">' in html
    assert html.count('aria-current="page"') == (current is not None)
    if current:
        assert f'<a href="{path}" aria-current="page">{current}</a>' in html
    assert '<a href="/ready">/ready</a>' in html and '<a href="/health">/health</a>' in html
    assert html.count('<link rel="stylesheet" href="/static/app.css">') == 1


def test_security_headers_and_request_id(client):
    response = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    forged = client.get("/health", headers={"X-Request-ID": "<script>; evil"})
    assert forged.headers["X-Request-ID"] != "<script>; evil"


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/nope", 404), ("GET", "/predict", 405), ("POST", "/train", 404)]
)
def test_unknown_routes_answer_json(client, method, path, status):
    assert_json_error(client.open(path, method=method), status)


# -- display names and the model card page ---------------------------------------------------


def page_class_names(html: str) -> dict:
    """The class name -> display name mapping the chest CT page hands its script."""
    found = re.search(r"data-class-names='([^']*)'", html)
    assert found, "the upload form carries no data-class-names"
    return json.loads(found.group(1))


def test_pages_show_display_names_while_the_api_keeps_class_names(client, serving, metadata, png_bytes):
    shown = {name: serving.class_names[name] for name in metadata["classes"]}
    assert shown == {"adenocarcinoma": "Adenocarcinoma", "normal": "Normal"}  # config/config.yaml
    html = client.get("/").get_data(as_text=True)
    assert f"classes: {', '.join(shown.values())}" in html
    assert page_class_names(html) == shown
    body = upload(client, png_bytes).get_json()
    assert list(body["probabilities"]) == metadata["classes"] and body["label"] in metadata["classes"]
    monitoring = client.get("/monitoring").get_data(as_text=True)
    assert all(f"<tr><td>{name}</td>" in monitoring for name in shown.values())
    assert set(client.get("/monitoring?format=json").get_json()["class_mix"]) <= set(metadata["classes"])


def test_a_class_without_a_display_name_is_shown_by_its_name(app, serving, metadata):
    renamed = dataclasses.replace(serving, class_names={"normal": "Normal lung tissue"})
    predictor = app.extensions["model"].predictor  # the module's, not loaded again
    html = create_app({"TESTING": True, "SERVING_CONFIG": renamed, "PREDICTOR": predictor}).test_client().get("/")
    html = html.get_data(as_text=True)
    assert "classes: adenocarcinoma, Normal lung tissue" in html
    assert page_class_names(html) == {"adenocarcinoma": "adenocarcinoma", "normal": "Normal lung tissue"}


def test_the_model_card_is_a_page_for_browsers(client, serving):
    card = json.loads(serving.model_card_file.read_text())
    evaluation = card["evaluation"]
    response = client.get("/model-card", headers={"Accept": BROWSER_ACCEPT})
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "Accept" in response.vary
    html = " ".join(response.get_data(as_text=True).split())  # whitespace as a browser shows it
    assert "<h1>Model card</h1>" in html and "<code>chest-ct-classifier</code> version <code>1</code>" in html
    assert f'<p id="card-intended-use" class="notice"><strong>{card["intended_use"]}</strong></p>' in html
    low, high = evaluation["ci95"]["roc_auc"]
    assert f"<td>ROC-AUC</td> <td>{evaluation['metrics']['roc_auc']:.3f}</td> <td>{low:.3f} – {high:.3f}</td>" in html
    assert "95% bootstrap interval" in html
    assert f"{evaluation['test_images']} images of the {escape(evaluation['split'])}" in html
    assert f"Source <code>{card['data']['source']}</code>" in html and "<th>Adenocarcinoma</th>" in html
    assert all(f"<li>{escape(limit)}</li>" in html for limit in card["known_limits"])
    assert "mlflow_tracking_uri" not in html and card["training"]["mlflow_tracking_uri"] not in html
    index = client.get("/").get_data(as_text=True)
    assert '<a href="/model-card">model card</a>' in index and 'href="/model-card?format=json"' in index


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/json, text/html;q=0.5"])
def test_programs_get_the_model_card_as_json(client, serving, accept):
    response = client.get("/model-card", headers={"Accept": accept} if accept else {})
    assert response.status_code == 200 and response.is_json
    assert response.get_json() == json.loads(serving.model_card_file.read_text())
    forced = client.get("/model-card?format=json", headers={"Accept": BROWSER_ACCEPT})
    assert forced.is_json and forced.get_json() == response.get_json()


def test_a_missing_model_card_is_a_503_for_browsers_too(serving, tmp_path):
    config = dataclasses.replace(serving, model_card_file=tmp_path / "evaluation" / "model_card.json")
    client = create_app({"TESTING": True, "SERVING_CONFIG": config}).test_client()
    body = assert_json_error(client.get("/model-card", headers={"Accept": BROWSER_ACCEPT}), 503)
    assert "model_card.json" in body["error"] and "dvc repro" in body["error"]
    assert "(no model card yet)" in client.get("/").get_data(as_text=True)


def crafted_card(tmp_path, monkeypatch, app, card: dict | str) -> None:
    """Serve ``card`` (a dict, or raw text) as the module's model's card for the rest of the test."""
    path = tmp_path / "crafted" / "model_card.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(card if isinstance(card, str) else json.dumps(card))
    monkeypatch.setattr(app.extensions["model"].predictor.card, "json_path", path)


def card_page(client) -> str:
    response = client.get("/model-card", headers={"Accept": BROWSER_ACCEPT})
    assert response.status_code == 200 and response.mimetype == "text/html", response.data[:500]
    html = response.get_data(as_text=True)
    assert "not for clinical use" in html.split("</header>")[0].lower()
    return " ".join(html.split())


def test_an_old_or_partial_model_card_renders(client, app, serving, monkeypatch, tmp_path):
    """A card from an older pipeline (no external test, variants or model-input baseline), one without a
    baseline, or an empty one: a page with what there is, the served model's notice at its head."""
    card = json.loads(serving.model_card_file.read_text())
    old = {key: value for key, value in card.items()
           if key not in ("external_test", "serving_variants", "model_input_baseline", "model_sha256")}
    old["evaluation"] = {key: value for key, value in card["evaluation"].items() if key != "variant"}
    crafted_card(tmp_path, monkeypatch, app, old)
    html = card_page(client)
    assert "<h2>External test</h2>" not in html and "Servable variants" not in html
    assert "scored through the app's own path in ." not in html and "averaging." in html
    assert "<h2>Known limits</h2>" in html and '<table id="card-metrics"' in html
    crafted_card(tmp_path, monkeypatch, app, {k: v for k, v in card.items() if k != "shortcut_baseline"})
    assert "Shortcut baseline" not in card_page(client)
    crafted_card(tmp_path, monkeypatch, app, {})
    intended_use = app.extensions["model"].predictor.info.intended_use
    assert f'<p id="card-intended-use" class="notice"><strong>{intended_use}</strong></p>' in card_page(client)


@pytest.mark.parametrize("broken", [
    {"evaluation": {"split": "test split"}},  # no metrics
    {"evaluation": "see the PDF"},
    {"evaluation": {"metrics": [0.9], "ci95": [[0.8, 1.0]], "per_class": ["adenocarcinoma"]}},
    {"evaluation": {"metrics": {"roc_auc": 0.9}, "ci95": {"roc_auc": 0.8}}, "shortcut_baseline": {"model": "x"}},
    {"shortcut_baseline": {"metrics": 1, "ci95": {"roc_auc": [0.5]}}, "evaluation": {}},
    {"data": {"counts": {"train": 5}}, "training": {}, "serving_variants": {"servable": 3}, "base_weights": "vgg"},
    {"data": {"counts": [1, 2]}, "known_limits": "none", "external_test": ["x"]},
])
def test_a_card_of_the_wrong_shape_is_a_page_never_a_500(client, app, serving, monkeypatch, tmp_path, broken):
    """A registered model's card can hold anything: the page shows what it can (never a 500), JSON is the card."""
    card = json.loads(serving.model_card_file.read_text())
    crafted_card(tmp_path, monkeypatch, app, card | broken)
    card_page(client)
    assert client.get("/model-card").get_json() == json.loads(json.dumps(card | broken))


def test_a_card_the_page_cannot_show_is_a_503_naming_the_json(client, app, monkeypatch):
    from cancer_classifier.chest_ct.serving import routes

    def broken_template(*args, **kwargs):
        raise TypeError("a card no template foresaw")

    monkeypatch.setattr(routes, "render_template", broken_template)
    body = assert_json_error(client.get("/model-card", headers={"Accept": BROWSER_ACCEPT}), 503)
    assert "?format=json" in body["error"] and "card no template foresaw" not in body["error"]
    assert client.get("/model-card").is_json  # programs still get the card


def test_model_card_strings_are_escaped_on_the_page(client, app, serving, monkeypatch, tmp_path):
    card = json.loads(serving.model_card_file.read_text())
    hostile = "<script>alert(1)</script>"
    card |= {"model": hostile, "intended_use": f'"><img src=x onerror=alert(1)>{hostile}', "known_limits": [hostile]}
    card["data"] = card["data"] | {"source": hostile, "counts": {hostile: {"normal": hostile}}}
    card["evaluation"] = card["evaluation"] | {"split": hostile, "per_class": {hostile: {"support": hostile}}}
    crafted_card(tmp_path, monkeypatch, app, card)
    html = card_page(client)
    assert "<script>" not in html and "<img src=x" not in html and "&lt;script&gt;" in html


def test_the_card_counts_line_up_with_the_class_columns(client, app, serving, monkeypatch, tmp_path):
    """Each count sits under its class, whatever the order of a split's keys."""
    card = json.loads(serving.model_card_file.read_text())
    card["data"] = card["data"] | {"counts": {"train": {"adenocarcinoma": 3, "normal": 7},
                                              "test": {"normal": 2, "adenocarcinoma": 5}, "external": {"normal": 4}}}
    crafted_card(tmp_path, monkeypatch, app, card)
    html = card_page(client)
    assert "<th>split</th><th>Adenocarcinoma</th><th>Normal</th>" in html
    assert "<td>train</td><td>3</td><td>7</td>" in html and "<td>test</td><td>5</td><td>2</td>" in html
    assert "<td>external</td><td>—</td><td>4</td>" in html


@pytest.mark.parametrize(("query", "mimetype"), [
    ("format=html", "text/html"), ("format=HTML", "text/html"), ("format=json", "application/json"),
    ("format=md", "text/markdown"), ("format=markdown", "text/markdown"), ("format=", "application/json"),
])
def test_the_model_card_format_parameter(client, query, mimetype):
    response = client.get(f"/model-card?{query}", headers={"Accept": "application/json"})
    assert response.status_code == 200 and response.mimetype == mimetype


@pytest.mark.parametrize("value", ["xml", "pdf", "x" * 5000])
def test_an_unknown_model_card_format_is_a_400(client, value):
    body = assert_json_error(client.get(f"/model-card?format={value}", headers={"Accept": BROWSER_ACCEPT}), 400)
    assert "json, html or md" in body["error"] and len(body["error"]) < 200


@pytest.mark.parametrize(("accept", "mimetype"), [
    ("text/html;q=0, application/json", "application/json"),
    ("application/json, text/html", "application/json"),
    ("application/json;q=0.1, text/html", "text/html"),
    ("text/*", "text/html"),
    (";;;,,=q", "application/json"),  # malformed: a program
    ("text/html;q=x" + ", x/y" * 1000, "application/json"),
    ("image/png", "application/json"),
])
def test_odd_accept_headers(client, accept, mimetype):
    for method in ("GET", "HEAD"):
        response = client.open("/model-card", method=method, headers={"Accept": accept})
        assert response.status_code == 200 and response.mimetype == mimetype
        assert "Accept" in response.vary


@pytest.mark.parametrize("path", ["/", "/monitoring", "/model-card"])
def test_the_banner_says_not_for_clinical_use_whatever_the_model_metadata_says(client, app, monkeypatch, path):
    """The notice is the model's (its metadata); a registered model whose metadata lost it still gets it."""
    predictor = app.extensions["model"].predictor
    claim = "Cleared for diagnostic use."
    monkeypatch.setattr(predictor, "info", dataclasses.replace(predictor.info, intended_use=claim, demo=False))
    banner = client.get(path, headers={"Accept": BROWSER_ACCEPT}).get_data(as_text=True).split("</header>")[0]
    assert claim in banner and "<strong>Not for clinical use.</strong>" in banner


def test_a_hostile_display_name_reaches_the_script_intact_and_inert(app, serving, metadata):
    hostile = "N'o\"r<m>&l</script><script>alert(1)</script>"
    renamed = dataclasses.replace(serving, class_names={"normal": hostile})
    predictor = app.extensions["model"].predictor
    client = create_app({"TESTING": True, "SERVING_CONFIG": renamed, "PREDICTOR": predictor}).test_client()
    html = client.get("/").get_data(as_text=True)
    assert "<script>alert" not in html
    assert page_class_names(html) == {"adenocarcinoma": "adenocarcinoma", "normal": hostile}
    card = client.get("/model-card", headers={"Accept": BROWSER_ACCEPT}).get_data(as_text=True)
    assert "<script>alert" not in card and str(escape(hostile)) in card


def test_the_page_without_a_model_has_the_notice_and_no_dead_card_link(serving, tmp_path):
    empty = dataclasses.replace(serving, model_dir=tmp_path / "training", registration_file=tmp_path / "none.json")
    client = create_app({"TESTING": True, "SERVING_CONFIG": empty}).test_client()
    html = client.get("/").get_data(as_text=True)
    assert "<strong>Not for clinical use.</strong>" in html.split("</header>")[0]
    assert "/model-card" not in html and "fetch.js" not in html
    assert_json_error(client.get("/model-card", headers={"Accept": BROWSER_ACCEPT}), 503)


# -- predictions ------------------------------------------------------------------------------


def test_predict_upload(client, png_bytes, metadata):
    response = upload(client, png_bytes)
    assert response.status_code == 200
    body = response.get_json()
    assert list(body["probabilities"]) == metadata["classes"]
    assert sum(body["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["model"] == {
        "name": "chest-ct-classifier", "version": "1", "demo": True, "precision": "float32", "engine": "tensorflow"
    }
    assert body["intended_use"] == metadata["intended_use"]
    assert "gradcam_png" not in body
    assert isinstance(body["in_distribution"], bool) and isinstance(body["ood_score"], float)


def test_a_prediction_says_where_its_time_went(client, png_bytes):
    """Server-Timing (waiting for the prediction slot, decode, model, total), which the benchmark reads to
    split HTTP's overhead."""
    for files in ([png_bytes], [png_bytes, png_bytes]):
        response = client.post("/predict", data={"file": [(io.BytesIO(f), "s.png") for f in files]},
                               content_type="multipart/form-data")
        assert response.status_code == 200
        parts = dict(item.split(";dur=") for item in response.headers["Server-Timing"].split(", "))
        assert list(parts) == ["queue", "decode", "model", "total"]
        assert 0 < sum(float(parts[part]) for part in ("queue", "decode", "model")) <= float(parts["total"])
    assert list(dict(item.split(";dur=") for item in client.get("/health").headers["Server-Timing"].split(", "))) == [
        "total"]


def test_predict_json_base64_matches_upload(client, png_bytes):
    by_json = client.post("/predict", json={"image": base64.b64encode(png_bytes).decode()})
    assert by_json.status_code == 200
    assert by_json.get_json()["probabilities"] == upload(client, png_bytes).get_json()["probabilities"]


def test_predict_explain_returns_gradcam_png_on_the_models_view(client, png_bytes, saved_model):
    body = upload(client, png_bytes, explain=True).get_json()
    overlay = decode_image(base64.b64decode(body["gradcam_png"]))
    size = saved_model.get_layer("harmonise").image_size  # cropped to the body and squared, as the model saw it
    assert overlay.shape == (size, size, 3)


@pytest.fixture(scope="module")
def saved_model(serving):
    return load_classifier(serving.model_dir / "model.keras")


def assert_served_equals_saved(client, saved_model, metadata, data: bytes, pixels: np.ndarray) -> None:
    """Same file, same numbers: the app adds no preprocessing of its own."""
    expected = saved_model.predict(pixels[None].astype("float32"), verbose=0)[0]
    served = upload(client, data, "file.bin").get_json()["probabilities"]
    np.testing.assert_allclose([served[c] for c in metadata["classes"]], expected, atol=1e-5)


def test_served_prediction_equals_the_saved_model(client, saved_model, metadata, png_bytes):
    assert_served_equals_saved(client, saved_model, metadata, png_bytes, decode_image(png_bytes))


@pytest.mark.real_data
def test_served_dicom_prediction_equals_the_saved_model(client, saved_model, metadata):
    dicom = shared_path(SBU_SLICE).read_bytes()
    assert_served_equals_saved(client, saved_model, metadata, dicom, dicom_to_rgb(dicom, LUNG))


OV_BF16, OV_F32, TF_BF16 = (Variant.parse(v) for v in ("openvino/mixed_bfloat16", "openvino/float32",
                                                          "tensorflow/mixed_bfloat16"))


CPU_KINDS = {  # the CPUs this project runs on, by the flags that decide (all have avx2)
    "AMD EPYC AVX2": ({"avx2"}, REFERENCE),
    "Intel Xeon AVX-512": ({"avx2", "avx512f"}, OV_F32),
    "AMD Zen 5": ({"avx2", "avx512f", "avx512_bf16"}, OV_BF16),
    "Intel Sapphire Rapids": ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, OV_BF16),
}


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_auto_chooses_the_measured_fastest_variant_for_each_cpu_kind(monkeypatch, kind):
    """Every branch of the automatic choice, forced, whatever CPU runs the test."""
    flags, expected = CPU_KINDS[kind]
    monkeypatch.setattr(scoring, "cpu_flags", lambda: flags)
    assert resolve_variant("auto", "auto") == expected
    assert resolve_variant("auto", "float32") == Variant(expected.engine, "float32")
    assert resolve_variant("tensorflow", "auto") == Variant("tensorflow", expected.precision)
    assert resolve_variant("tensorflow", "mixed_bfloat16") == TF_BF16  # an explicit setting is kept


def test_a_variant_is_served_only_where_the_evaluation_found_it_harmless():
    every = {REFERENCE, OV_BF16, OV_F32, TF_BF16}
    assert admitted_variants("openvino", "mixed_bfloat16", every, "m")[0] == OV_BF16
    assert admitted_variants("openvino", "mixed_bfloat16", {REFERENCE, OV_F32}, "m")[0] == OV_F32
    # a card from before engines admitted TensorFlow bfloat16: kept where OpenVINO's was never measured
    assert admitted_variants("openvino", "mixed_bfloat16", {REFERENCE, TF_BF16}, "m")[0] == TF_BF16
    assert admitted_variants("openvino", "mixed_bfloat16", {REFERENCE}, "m") == [REFERENCE]  # measured harmful
    assert admitted_variants("tensorflow", "mixed_bfloat16", set(), "m") == [REFERENCE]  # never measured
    assert admitted_variants("tensorflow", "float32", every, "m") == [REFERENCE]
    assert admitted_variants("openvino", "mixed_bfloat16", every, "m") == [OV_BF16, TF_BF16, OV_F32, REFERENCE]


def test_an_engine_that_cannot_run_here_falls_back_to_the_reference(serving, monkeypatch):
    """OpenVINO missing (its import really fails): the admitted OpenVINO variants are skipped, not a 503."""
    monkeypatch.setitem(sys.modules, "openvino", None)
    forced = dataclasses.replace(serving, engine="openvino", precision="mixed_bfloat16")
    info = Predictor.from_config(forced).info
    assert (info.engine, info.precision) == ("tensorflow", "mixed_bfloat16")  # the next admitted variant


def test_the_reply_says_which_variant_was_served(client, png_bytes):
    model = upload(client, png_bytes, "file.bin").get_json()["model"]
    assert (model["engine"], model["precision"]) == ("tensorflow", "float32")


def test_very_large_images_are_downscaled_before_the_model():
    tall = limit_size(np.zeros((3000, 1000, 3), dtype=np.uint8))
    assert tall.shape == (MAX_SIDE, 683, 3)
    ct_slice = np.zeros((512, 512, 3), dtype=np.uint8)
    assert limit_size(ct_slice) is ct_slice


# -- bad input: always JSON 4xx, never a stack trace ------------------------------------------



BAD_UPLOADS = {
    "empty file": (lambda serving: b"", 400),
    "text named .png": (lambda serving: b"just some text, not a picture\n" * 10, 415),
    "truncated png": (lambda serving: png_of(np.full((64, 64, 3), 128, np.uint8))[:60], 400),
    "20000x20000 png (bomb guard)": (lambda serving: png_header_only(20000, 20000), 413),  # over the decode budget
    "gif (unsupported type)": (lambda serving: b"GIF89a" + b"\0" * 100, 415),
    "truncated dicom": (lambda serving: dicom_bytes(np.zeros((8, 8)))[:200], 400),
    "dicom without pixels": (lambda serving: dicom_bytes(np.zeros((8, 8)), pixels=False), 400),
    "larger than the upload limit": (lambda serving: b"\0" * (serving.max_upload_bytes + 1), 413),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_get_json_errors(client, serving, case):
    make, status = BAD_UPLOADS[case]
    assert_json_error(upload(client, make(serving), "upload.png"), status)


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        ("{not json", "application/json", 400),
        ("[1, 2]", "application/json", 400),
        ("{}", "application/json", 400),
        ('{"img": "aGVsbG8="}', "application/json", 400),
        ('{"image": "aGVsbG8=", "extra": 1}', "application/json", 400),
        ('{"image": 42}', "application/json", 400),
        ('{"image": "not base64 !!"}', "application/json", 400),
        ('{"image": "aGVsbG8="}', "application/json", 415),  # base64 of "hello": not an image
        ('{"image": "aGVsbG8="}', "application/json; charset=latin-1", 415),
        ("hello", "text/plain", 415),
        ("", None, 415),
    ],
)
def test_bad_requests_get_json_errors(client, body, content_type, status):
    assert_json_error(client.post("/predict", data=body, content_type=content_type), status)


def test_multipart_without_file_field(client):
    body = assert_json_error(client.post("/predict", data={"image": "x"}, content_type="multipart/form-data"), 400)
    assert "'file'" in body["error"]


# -- DICOM ------------------------------------------------------------------------------------


def test_dicom_window_rescale_and_monochrome1():
    # stored + intercept -1024 -> HU -1024, -550, 150, 976; lung window [-1350, 150] -> 0..1
    stored = np.array([[0, 474], [1174, 2000]])
    gray = dicom_to_rgb(dicom_bytes(stored), LUNG)
    assert gray.shape == (2, 2, 3) and gray.dtype == np.uint8
    np.testing.assert_array_equal(gray[..., 0], [[55, 136], [255, 255]])
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    inverted = dicom_to_rgb(dicom_bytes(stored, photometric="MONOCHROME1"), LUNG)
    np.testing.assert_array_equal(inverted[..., 0], 255 - gray[..., 0])


@pytest.mark.parametrize("source", [pytest.param("shared slice", marks=pytest.mark.real_data), "pydicom CT_small"])
def test_predict_dicom(client, source, metadata):
    path = shared_path(SBU_SLICE) if source == "shared slice" else pydicom.examples.get_path("ct")
    response = upload(client, path.read_bytes(), "slice.bin")  # judged by content, not name
    assert response.status_code == 200, response.get_json()
    assert set(response.get_json()["probabilities"]) == set(metadata["classes"])


@pytest.mark.real_data
def test_compressed_dicom_decodes_or_says_what_to_install(client):
    response = upload(client, shared_path(JPEG_LOSSLESS).read_bytes(), "scout.dcm")
    if response.status_code == 200:  # a JPEG plugin (pylibjpeg or gdcm) is installed
        assert "label" in response.get_json()
    else:
        body = assert_json_error(response, 415)
        assert "1.2.840.10008.1.2.4.70" in body["error"] and "pip install pylibjpeg" in body["error"]


def test_no_patient_identifiers_in_replies_or_logs(client, records):
    replies = [upload(client, dicom_bytes(np.zeros((16, 16)))), upload(client, dicom_bytes(np.zeros((8, 8)))[:300])]
    replies.append(upload(client, pydicom.examples.get_path("ct").read_bytes(), "x.dcm"))
    text = " ".join(r.get_data(as_text=True) for r in replies)
    text += " ".join(record.getMessage() + json.dumps(getattr(record, "fields", {})) for record in records)
    for identifier in ("Secret", "PID-424242", "CompressedSamples", "1CT1"):
        assert identifier not in text
    logged = [r for r in records if r.name.endswith("access")]
    assert len(logged) == 3
    assert {"request_id", "endpoint", "status", "latency_ms", "model_version"} <= set(logged[0].fields)


# -- metrics ----------------------------------------------------------------------------------


def test_metrics_count_requests_predictions_and_model_load(client, png_bytes):
    label = upload(client, png_bytes).get_json()["label"]
    text = client.get("/metrics").get_data(as_text=True)
    assert 'http_requests_total{endpoint="/predict",method="POST",status="200"}' in text
    assert 'http_request_duration_seconds_bucket{endpoint="/predict",le="0.5",status="200"}' in text
    assert f'predictions_total{{label="{label}"}}' in text
    assert "model_load_seconds" in text and "model_loaded" in text


# -- no model yet -----------------------------------------------------------------------------


def test_without_a_model_the_app_starts_and_says_run_dvc_repro(serving, tmp_path, png_bytes):
    empty = dataclasses.replace(serving, model_dir=tmp_path / "training", registration_file=tmp_path / "none.json")
    client = create_app({"TESTING": True, "SERVING_CONFIG": empty, "MODEL_RETRY_SECONDS": 0}).test_client()
    assert client.get("/health").status_code == 200
    ready = client.get("/ready")
    assert ready.status_code == 503 and "dvc repro" in ready.get_json()["reason"]
    assert "dvc repro" in assert_json_error(upload(client, png_bytes), 503)["error"]
    page = client.get("/")
    assert page.status_code == 200 and "dvc repro" in page.get_data(as_text=True)

    # Once the pipeline has written a model the app serves it without a restart.
    shutil.copytree(serving.model_dir, empty.model_dir)
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.get_json()["model"]["version"] == "unregistered"  # no registration record
    assert upload(client, png_bytes).status_code == 200


# -- the MLflow registry ----------------------------------------------------------------------




def test_registry_alias_is_served_when_tracking_is_configured(serving, png_bytes, metadata):
    """With use_registry (MLFLOW_TRACKING_URI set) the app serves models:/<name>@<alias>."""
    from mlflow.tracking import MlflowClient

    predictor = Predictor.from_config(dataclasses.replace(serving, use_registry=True))
    champion = MlflowClient().get_model_version_by_alias(serving.tracking.registered_model, serving.tracking.alias)
    version = str(champion.version)
    assert predictor.info.source == "registry"
    assert (predictor.info.name, predictor.info.version) == (serving.tracking.registered_model, version)
    assert predictor.info.demo is True and predictor.info.classes == tuple(metadata["classes"])
    assert "not for clinical use" in predictor.info.intended_use
    client = create_app({"TESTING": True, "PREDICTOR": predictor}).test_client()
    body = upload(client, png_bytes).get_json()
    expected = {"name": serving.tracking.registered_model, "version": version, "demo": True,
                "precision": "float32", "engine": "tensorflow"}
    assert body["model"] == expected


def test_registry_without_the_model_is_a_clear_503(serving, tmp_path):
    tracking = dataclasses.replace(serving.tracking, tracking_uri=f"sqlite:///{tmp_path}/empty.db")
    config = dataclasses.replace(serving, use_registry=True, tracking=tracking)
    ready = create_app({"TESTING": True, "SERVING_CONFIG": config}).test_client().get("/ready")
    assert ready.status_code == 503
    assert "models:/chest-ct-classifier@champion" in ready.get_json()["reason"]


def test_a_card_whose_classes_are_not_a_list_is_a_503_and_the_page_still_serves(client, app, monkeypatch, tmp_path):
    crafted_card(tmp_path, monkeypatch, app, {"classes": 3})
    for accept in (BROWSER_ACCEPT, "application/json"):
        body = assert_json_error(client.get("/model-card", headers={"Accept": accept}), 503)
        assert "classes are not a list" in body["error"]
    assert client.get("/").status_code == 200
