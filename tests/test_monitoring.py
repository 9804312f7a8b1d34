"""Prediction monitoring: a record per prediction (never the image), drift against the training data."""

import dataclasses
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from cancer_classifier.chest_ct.components.dataset import split_files
from cancer_classifier.serving.app import create_app
from cancer_classifier.serving.monitoring import psi
from tests.conftest import REPO


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def monitored(serving, tmp_path):
    """An app with its own prediction log, so each test sees only its own traffic."""
    monitoring = dataclasses.replace(serving.monitoring, log_file=tmp_path / "predictions.jsonl", window=100)
    app = create_app({"TESTING": True, "SERVING_CONFIG": dataclasses.replace(serving, monitoring=monitoring)})
    return app.test_client(), monitoring.log_file


def send(client, images: list[bytes]) -> None:
    for content in images:
        response = client.post("/predict", data={"file": (io.BytesIO(content), "x.png")},
                               content_type="multipart/form-data")
        assert response.status_code == 200


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift():
    assert psi([0.25, 0.25, 0.5], [0.25, 0.25, 0.5]) == pytest.approx(0)
    assert psi([0.5, 0.5, 0.0], [0.0, 0.1, 0.9]) > 0.25


def test_each_prediction_is_recorded_without_the_image(monitored, trained_project):
    client, log = monitored
    paths, _ = split_files(trained_project.data_ingestion().root_dir, "train")
    send(client, [open(p, "rb").read() for p in paths[:4]])
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 4
    assert set(records[0]) == {"time", "model_version", "label", "probability", "in_distribution", "statistics"}
    assert set(records[0]["statistics"]) == {"width", "height", "mean", "std"}


def test_training_like_traffic_is_stable_and_unlike_traffic_is_flagged(monitored, trained_project):
    client, _ = monitored
    paths, _ = split_files(trained_project.data_ingestion().root_dir, "train")
    send(client, [open(p, "rb").read() for p in paths])  # traffic exactly like the training split
    stable = client.get("/monitoring?format=json").get_json()
    assert stable["records"] == len(paths) and stable["reference"] is True
    assert max(stable["drift"].values()) < stable["alert_psi"], stable["drift"]
    assert np.isclose(sum(stable["class_mix"].values()), 1)

    bright = png(np.full((400, 300, 3), 230, dtype=np.uint8))  # another size, another intensity
    send(client, [bright] * 30)
    drifted = client.get("/monitoring?format=json").get_json()
    assert {"width", "height", "mean"} <= set(drifted["drifted"]), drifted["drift"]


def test_drift_and_class_mix_are_on_metrics_and_the_page(monitored, trained_project):
    client, _ = monitored
    paths, _ = split_files(trained_project.data_ingestion().root_dir, "test")
    send(client, [open(p, "rb").read() for p in paths[:5]])
    exposition = client.get("/metrics").get_data(as_text=True)
    assert 'input_drift_psi{statistic="mean"}' in exposition
    assert "monitored_predictions 5.0" in exposition and "recent_class_fraction{" in exposition
    page = client.get("/monitoring")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'id="drift-plot"' in html and "never the image" in html


def test_every_metric_the_grafana_dashboard_queries_is_exported(monitored, trained_project):
    client, _ = monitored
    paths, _ = split_files(trained_project.data_ingestion().root_dir, "test")
    send(client, [open(paths[0], "rb").read()])
    exported = {line.split("{")[0].split(" ")[0] for line in client.get("/metrics").get_data(as_text=True).splitlines()
                if line and not line.startswith("#")}
    dashboard = json.loads((REPO / "monitoring/grafana/dashboards/cancer-classifier.json").read_text())
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queried |= set(re.findall(r"\b([a-z_]+)(?=\s*[{\[)]|\s*$)", target["expr"]))
    queried -= {"rate", "sum", "by", "clamp_min", "histogram_quantile", "le", "label", "endpoint", "status"}
    assert queried and queried <= exported, queried - exported
