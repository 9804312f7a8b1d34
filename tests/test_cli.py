"""The cancer-classifier command, run as a user runs it: a real process in a project folder."""

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest

from cancer_classifier.core.io import load_json
from tests.conftest import TINY_PARAMS
from tests.support import serving_copy

COMMAND = [sys.executable, "-m", "cancer_classifier.cli"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference_project(trained_project, tmp_path_factory) -> Path:
    """A copy of the tiny trained project serving the reference variant, as the ``app`` fixture does."""
    reference = {"serving": {"engine": "tensorflow", "precision": "float32"}}
    return serving_copy(trained_project.root, tmp_path_factory.mktemp("cli"), reference, TINY_PARAMS)


def test_predict_writes_what_the_app_answers_for_each_file(reference_project, trained_project, client, tmp_path):
    """A folder of PNGs plus a corrupt file: one row each, the app's answer for a good file, a reason
    for the bad one, the served model's name and version on every row."""
    images = sorted(trained_project.data_ingestion().root_dir.rglob("*.png"))[:5]
    folder = tmp_path / "scans"
    folder.mkdir()
    for i, image in enumerate(images):
        (folder / f"{i}.png").write_bytes(image.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    output = tmp_path / "out" / "predictions.csv"

    result = run("predict", str(folder), "--output", str(output), cwd=reference_project)

    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader(output.open()))
    assert [Path(row["file"]).name for row in rows] == ["0.png", "1.png", "2.png", "3.png", "4.png", "broken.png"]
    record = load_json(trained_project.registry().root_dir / "registration.json")
    assert {(row["model"], row["version"]) for row in rows} == {(record["registered_model"], str(record["version"]))}
    broken = rows.pop()
    assert broken["label"] == "" and "cannot read the PNG image" in broken["error"]
    # the same files in one request, as the command batches them (serving.max_batch per batch)
    files = [(io.BytesIO(Path(row["file"]).read_bytes()), "x.png") for row in rows]
    reply = client.post("/predict", data={"file": files}, content_type="multipart/form-data")
    assert reply.status_code == 200
    for row, served in zip(rows, reply.get_json()["predictions"], strict=True):
        assert row["label"] == served["label"] and row["error"] == ""
        assert {name: float(row[f"p_{name}"]) for name in served["probabilities"]} == served["probabilities"]
        assert row["in_distribution"] == str(served["in_distribution"])
    assert "1 could not be read" in result.stderr


def test_predict_a_missing_path_fails_in_one_line_and_writes_nothing(reference_project, tmp_path):
    output = tmp_path / "predictions.csv"
    result = run("predict", str(tmp_path / "nowhere"), "--output", str(output), cwd=reference_project)
    assert result.returncode == 1
    assert "nowhere: no such file or folder" in result.stderr and "Traceback" not in result.stderr
    assert not output.exists()


def test_help_answers_without_loading_tensorflow(tmp_path):
    check = "import sys; from cancer_classifier import cli; print('tensorflow' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert imported.stdout.strip() == "False", imported.stderr[-2000:]
    helped = run("--help", cwd=tmp_path)
    assert helped.returncode == 0 and all(command in helped.stdout for command in ("train", "predict", "serve"))
