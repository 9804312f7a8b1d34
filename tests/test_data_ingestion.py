"""Stage 1 on small generated data: decoding, duplicates, conflicts, sources and the leak-free split."""

import csv
import functools
import http.server
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cancer_classifier.chest_ct.components import data_ingestion
from cancer_classifier.chest_ct.components.data_ingestion import DataIngestion, group_split
from cancer_classifier.chest_ct.components.synthetic import phantom
from cancer_classifier.core.errors import DataSourceError
from cancer_classifier.core.io import sha256_file

ADENO = "adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib"


def read_manifest(root: Path) -> list[dict]:
    with open(root / "artifacts/data_ingestion/manifest.csv", newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture
def kaggle_folder(tmp_path: Path) -> Path:
    """A Kaggle-style folder with every quirk of the real dataset, in miniature."""
    source = tmp_path / "source" / "Data" / "train"
    rng = np.random.default_rng(0)
    for folder, profile in [(ADENO, 0), ("normal", None)]:
        (source / folder).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(phantom(80, profile, rng), mode="L").save(source / folder / f"{i}.png")
    adeno, normal = source / ADENO, source / "normal"
    shutil.copy(normal / "0.png", normal / "0 - Copy.png")  # exact duplicate, same label
    Image.open(normal / "1.png").convert("RGBA").save(normal / "1 (2).png")  # same pixels, other encoding
    shutil.copy(normal / "2.png", adeno / "conflict.png")  # same image, two labels
    Image.open(adeno / "3.png").convert("P").save(adeno / "palette.png")  # exact copy as a palette image
    Image.open(adeno / "4.png").convert("RGB").save(adeno / "4.jpg", quality=95)  # near-duplicate (lossy)
    (adeno / "notes.png").write_text("not an image")
    (adeno / "truncated.png").write_bytes((adeno / "5.png").read_bytes()[:300])
    (adeno / "empty.png").write_bytes(b"")
    (source.parent / "large.cell.carcinoma_x").mkdir()  # a class not asked for
    Image.fromarray(phantom(80, 1, rng), mode="L").save(source.parent / "large.cell.carcinoma_x" / "l1.png")
    return tmp_path / "source"


def ingest(project, source: str, **config) -> dict:
    manager = project(config={"data_ingestion": {"source": source, **config}})
    return DataIngestion(manager.data_ingestion()).run()


def test_folder_source_checks_every_image(project, kaggle_folder, tmp_path):
    report = ingest(project, str(kaggle_folder))
    rejected = {Path(r["file"]).name: r["reason"] for r in report["rejected"]}
    assert set(rejected) == {"notes.png", "truncated.png", "empty.png"}
    assert "not a recognised image" in rejected["notes.png"]
    assert "empty" in rejected["empty.png"]
    assert report["exact_duplicates_removed"] == 3  # "0 - Copy", the RGBA copy, the palette copy
    conflict = report["conflicting_labels"]
    assert len(conflict) == 1 and conflict[0]["labels"] == ["adenocarcinoma", "normal"]
    assert report["ignored_folders"] == ["large.cell.carcinoma_x"]
    rows = read_manifest(tmp_path)
    assert len(rows) == report["images_kept"] == 12 + 12 + 1 - 1  # + the JPEG copy - normal/2 (conflict)
    kept = {r["source_path"] for r in rows}
    assert not kept & {"Data/train/normal/2.png", f"Data/train/{ADENO}/conflict.png"}
    assert sum(sum(c.values()) for c in report["counts"].values()) == len(rows)
    for row in rows:  # every stored image is decoded RGB, named by its content hash
        with Image.open(tmp_path / "artifacts/data_ingestion" / row["file"]) as image:
            assert image.mode == "RGB" and row["sha256"] in row["file"]


def test_near_duplicates_stay_in_one_split(project, kaggle_folder, tmp_path):
    report = ingest(project, str(kaggle_folder))
    rows = read_manifest(tmp_path)
    splits_of_group: dict[str, set] = {}
    for row in rows:
        splits_of_group.setdefault(row["group"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits_of_group.values())
    jpeg_group = next(g for g in report["near_duplicate_groups"] if any(f.endswith("4.jpg") for f in g["files"]))
    assert any(f.endswith("/4.png") for f in jpeg_group["files"])


def test_group_split_is_stratified_seeded_and_never_splits_a_group():
    rng = np.random.default_rng(1)
    labels = list(rng.choice(["a", "b", "c"], 300))
    groups = [i // 3 if i < 90 else i for i in range(300)]  # 30 groups of three, then singletons
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    split = group_split(groups, labels, fractions, seed=7)
    assert split == group_split(groups, labels, fractions, seed=7)
    assert split != group_split(groups, labels, fractions, seed=8)
    for g in set(groups):
        assert len({split[i] for i in range(300) if groups[i] == g}) == 1
    for label in "abc":
        in_class = [s for s, truth in zip(split, labels) if truth == label]
        assert all(abs(in_class.count(s) / len(in_class) - f) < 0.08 for s, f in fractions.items())


def test_synthetic_source_is_deterministic(project, tmp_path):
    first = ingest(project, "synthetic")
    manifest = (tmp_path / "artifacts/data_ingestion/manifest.csv").read_text()
    assert first["dataset"]["demo"] is True
    assert ingest(project, "synthetic")["counts"] == first["counts"]
    assert (tmp_path / "artifacts/data_ingestion/manifest.csv").read_text() == manifest


def test_zip_source_with_checksum(project, kaggle_folder, tmp_path):
    archive = shutil.make_archive(str(tmp_path / "ct"), "zip", kaggle_folder)
    report = ingest(project, archive, source_sha256=sha256_file(Path(archive)))
    assert report["images_kept"] == 24
    with pytest.raises(DataSourceError, match="sha256 does not match"):
        ingest(project, archive, source_sha256="0" * 64)


def test_zip_member_outside_the_archive_is_refused(project, tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("../escaped.png", b"x")
    with pytest.raises(DataSourceError, match="outside the archive"):
        ingest(project, str(archive))
    assert not (tmp_path.parent / "escaped.png").exists()


def test_an_external_test_set_of_copies_is_refused_with_the_reason(project, kaggle_folder):
    with pytest.raises(DataSourceError, match="external_test .* left after removing copies of ingested images"):
        ingest(project, str(kaggle_folder), external_test=str(kaggle_folder))


def test_a_zip_bomb_is_refused_before_anything_is_extracted(project, tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("normal/zeros.png", bytes(50 * 1024 * 1024))  # 50 MB that deflate to ~50 KB
    with pytest.raises(DataSourceError, match="zip bomb"):
        ingest(project, str(archive))


def test_a_zip_or_download_beyond_the_size_limits_is_refused(project, kaggle_folder, tmp_path, http_server,
                                                            monkeypatch):
    archive = Path(shutil.make_archive(str(tmp_path / "ct"), "zip", kaggle_folder))
    monkeypatch.setattr(data_ingestion, "MAX_SOURCE_FILES", 5)
    with pytest.raises(DataSourceError, match="more than the 5 allowed"):
        ingest(project, str(archive))
    monkeypatch.setattr(data_ingestion, "MAX_SOURCE_FILES", 200_000)
    monkeypatch.setattr(data_ingestion, "MAX_SOURCE_BYTES", 10_000)
    with pytest.raises(DataSourceError, match="unpacks to .* more than the 10,000 allowed"):
        ingest(project, str(archive))
    with pytest.raises(DataSourceError, match="bytes announced, more than the 10,000 allowed"):
        ingest(project, f"{http_server}/ct.zip", source_sha256=sha256_file(archive))
    assert not list(tmp_path.rglob("*.partial"))


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on loopback serving tmp_path."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_url_source_is_verified_before_use(project, kaggle_folder, tmp_path, http_server):
    archive = Path(shutil.make_archive(str(tmp_path / "ct"), "zip", kaggle_folder))
    report = ingest(project, f"{http_server}/ct.zip", source_sha256=sha256_file(archive))
    assert report["images_kept"] == 24
    before = (tmp_path / "artifacts/data_ingestion/manifest.csv").read_text()
    with pytest.raises(DataSourceError, match="the download was discarded"):
        ingest(project, f"{http_server}/ct.zip", source_sha256="f" * 64)
    # the failed run left the previous, complete output untouched and no partial files behind
    assert (tmp_path / "artifacts/data_ingestion/manifest.csv").read_text() == before
    assert not list((tmp_path / "artifacts").glob(".*partial"))


def test_configured_class_without_a_folder_is_a_clear_error(project, kaggle_folder):
    manager = project(
        config={"data_ingestion": {"source": str(kaggle_folder)}},
        params={"data": {"classes": ["adenocarcinoma", "normal", "squamous.cell.carcinoma"]}},
    )
    with pytest.raises(DataSourceError, match=r"names \['squamous.cell.carcinoma'\].*folders found"):
        DataIngestion(manager.data_ingestion()).run()
