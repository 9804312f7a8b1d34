"""Several images in one /predict request: one forward pass, the same answers as one by one."""

import io
from pathlib import Path

import numpy as np
import pytest

from cancer_classifier.chest_ct.components.dataset import split_files


@pytest.fixture(scope="module")
def test_images(trained_project) -> list[bytes]:
    paths, _ = split_files(trained_project.data_ingestion().root_dir, "test")
    return [Path(path).read_bytes() for path in paths[:3]]


def post_files(client, files: list[bytes]):
    data = {"file": [(io.BytesIO(content), f"{i}.png") for i, content in enumerate(files)]}
    return client.post("/predict", data=data, content_type="multipart/form-data")


def test_a_batch_answers_each_image_as_a_single_upload_does(client, test_images):
    response = post_files(client, test_images)
    assert response.status_code == 200
    body = response.get_json()
    assert len(body["predictions"]) == len(test_images)
    assert "not for clinical use" in body["intended_use"] and body["model"]["version"]
    for content, batched in zip(test_images, body["predictions"]):
        single = post_files(client, [content]).get_json()
        assert batched["label"] == single["label"]
        assert batched["in_distribution"] == single["in_distribution"]
        for name, p in single["probabilities"].items():
            assert batched["probabilities"][name] == pytest.approx(p, abs=1e-5)
        assert batched["ood_score"] == pytest.approx(single["ood_score"], abs=1e-3)


def test_more_files_than_the_batch_limit_are_refused(app, client, test_images):
    limit = app.config["MAX_BATCH"]
    response = post_files(client, test_images[:1] * (limit + 1))
    assert response.status_code == 400
    assert f"at most {limit}" in response.get_json()["error"]


def test_a_bad_file_in_a_batch_is_named(client, test_images):
    response = post_files(client, [test_images[0], b"not an image", test_images[1]])
    assert response.status_code in (400, 415)
    assert response.get_json()["error"].startswith("file 2 of 3:")


def test_batch_probabilities_are_a_distribution(client, test_images):
    for prediction in post_files(client, test_images).get_json()["predictions"]:
        assert np.isclose(sum(prediction["probabilities"].values()), 1, atol=1e-5)
