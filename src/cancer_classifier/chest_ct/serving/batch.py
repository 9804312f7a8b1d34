"""Batch prediction without a server: image files or folders to one CSV row per image.

Each file goes through exactly what the app does with an upload (the same byte and pixel budgets,
the same decoding and DICOM window, the same Predictor in the same variant), in batches of
``serving.max_batch`` files, so each row is what ``POST /predict`` answers for that file sent with the
others of its batch in one request (one file alone can differ in the sixth decimal: another batch size).
"""

import csv
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from cancer_classifier.chest_ct.serving.inputs import DecodeBudget, Window, to_rgb
from cancer_classifier.chest_ct.serving.predictor import Predictor
from cancer_classifier.core.errors import CancerClassifierError, ImageTooLarge, StageInputError
from cancer_classifier.entity import ServingConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def image_files(paths: Iterable[Path]) -> list[Path]:
    """The files named, and the image files (by suffix) under each folder named, in a stable order."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise StageInputError(f"{path}: no such file or folder")
    if not found:
        raise StageInputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {[str(p) for p in paths]}")
    return found


def read_image(path: Path, serving: ServingConfig):
    """The file's pixels as the app decodes an upload of it, within the same budgets."""
    size = path.stat().st_size
    if size > serving.max_upload_bytes:
        raise ImageTooLarge(
            f"{size:,} bytes, over the {serving.max_upload_bytes:,}-byte upload limit (serving.max_upload_mb)"
        )
    budget = serving.decode_budget
    allowed = DecodeBudget(
        budget.max_image_pixels, budget.max_request_pixels, budget.max_image_bytes, budget.max_request_bytes
    )
    window = Window(serving.dicom_window_center, serving.dicom_window_width)
    return to_rgb(path.read_bytes(), window, allowed)[0]


def predictions(files: list[Path], predictor: Predictor, serving: ServingConfig) -> Iterator[dict]:
    """One row per file, in order: the prediction, or the reason the file could not be read."""
    info = predictor.info
    for start in tqdm(range(0, len(files), serving.max_batch), desc="predicting", unit="batch"):
        batch, images, rows = files[start : start + serving.max_batch], [], {}
        for path in batch:
            try:
                images.append((path, read_image(path, serving)))
            except CancerClassifierError as error:
                rows[path] = {"error": getattr(error, "message", str(error))}
        results = predictor.predict_many([image for _, image in images]) if images else []
        for (path, _), result in zip(images, results):
            rows[path] = {
                "label": result["label"],
                **{f"p_{name}": repr(p) for name, p in result["probabilities"].items()},
                "in_distribution": result["in_distribution"],
                "ood_score": result["ood_score"],
            }
        for path in batch:
            yield {"file": str(path), **rows[path], "model": info.name, "version": info.version}


def write_csv(output: Path, rows: Iterable[dict], classes: tuple[str, ...]) -> tuple[int, int]:
    """Rows to ``output``, whole or not at all (a temp file renamed at the end); (rows, errors)."""
    fields = ["file", "label", *(f"p_{c}" for c in classes), "in_distribution", "ood_score", "model", "version"]
    fields.append("error")
    output.parent.mkdir(parents=True, exist_ok=True)
    written = errors = 0
    handle, temporary = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent)
    try:
        with os.fdopen(handle, "w", newline="") as file:
            writer = csv.DictWriter(file, fields)
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
                written += 1
                errors += "error" in row
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return written, errors
