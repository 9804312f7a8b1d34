"""Stage 1: fetch the source, decode and check every image, remove duplicates, split once.

Outputs (one folder, replaced atomically): ``images/<sha256>.png`` (decoded, RGB), ``manifest.csv``
(file, sha256, class, split, group, source path) and ``data_report.json`` (what was kept,
removed, rejected and why). An optional external test set is ingested beside them as the split
``external``, without any image that is an exact or near copy of an ingested one.
"""

import csv
import http.client
import tempfile
import urllib.request
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image
from tqdm import tqdm

from cancer_classifier.chest_ct.components.synthetic import write_phantoms
from cancer_classifier.core.errors import DataSourceError, ImageDecodeError
from cancer_classifier.core.images import decode_image, image_statistics
from cancer_classifier.core.io import atomic_directory, save_json, sha256_bytes, sha256_file
from cancer_classifier.core.limits import MAX_SIDE, limit_size
from cancer_classifier.core.logging import logger
from cancer_classifier.entity import DataIngestionConfig

SPLITS = ("train", "val", "test")
EXTERNAL = "external"
# Per-image file statistics (manifest columns): no anatomy, only cues to where an image came from.
METADATA_FIELDS = ("width", "height", "file_bytes", "colour", "mean", "std")
MANIFEST_FIELDS = ("file", "sha256", "label", "split", "group", "source_path", *METADATA_FIELDS)


# Bounds on what a source may make this stage read or write (a zip or download bomb stops here).
MAX_SOURCE_BYTES = 20 * 1024**3  # a download, and a zip's total uncompressed size
MAX_SOURCE_FILES = 200_000  # members of a zip
MAX_COMPRESSION_RATIO = 100  # per zip member: images barely compress; a bomb compresses a thousandfold


@dataclass
class ImageRecord:
    source_path: str  # relative to the source folder
    label: str
    pixels: np.ndarray
    sha256: str  # of the decoded pixels and shape, so re-encoded exact copies match too
    phash: np.ndarray
    metadata: dict[str, float]  # file and image statistics with no anatomy: the shortcut audit's input


def image_metadata(data: bytes, pixels: np.ndarray) -> dict[str, float]:
    """What a model could use to tell sources apart without looking at anatomy."""
    colour = bool((pixels[..., 0] != pixels[..., 1]).any() or (pixels[..., 1] != pixels[..., 2]).any())
    return {**image_statistics(pixels), "file_bytes": len(data), "colour": int(colour)}


# -- sources ------------------------------------------------------------------------------


def download(url: str, expected_sha256: str, target: Path) -> Path:
    """Download to a temporary file and rename it to ``target`` only when complete and verified."""
    partial = target.with_name(target.name + ".partial")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as file:
            total = int(response.headers.get("Content-Length") or 0) or None
            if total and total > MAX_SOURCE_BYTES:
                raise DataSourceError(f"{url}: {total:,} bytes announced, more than the {MAX_SOURCE_BYTES:,} allowed")
            with tqdm(total=total, unit="B", unit_scale=True, desc="download") as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    bar.update(len(chunk))
                    if bar.n > MAX_SOURCE_BYTES:  # checked while reading: the announced size may lie
                        raise DataSourceError(f"{url}: more than the {MAX_SOURCE_BYTES:,} bytes allowed; stopped")
                    file.write(chunk)
        actual = sha256_file(partial)
        if actual != expected_sha256.lower():
            raise DataSourceError(
                f"{url}: sha256 is {actual}, config data_ingestion.source_sha256 expects {expected_sha256}; "
                "the download was discarded"
            )
        partial.rename(target)
        return target
    except (OSError, http.client.HTTPException) as error:  # IncompleteRead: a chunked response cut short
        raise DataSourceError(f"{url}: download failed ({error!r}); check the URL and the network") from None
    finally:
        partial.unlink(missing_ok=True)


def check_members(archive: Path, members: list[zipfile.ZipInfo], target: Path) -> None:
    """Refuse, before extracting anything, members outside the target and archives that would
    unpack to too many files, too many bytes, or far more than they hold (a zip bomb)."""
    if len(members) > MAX_SOURCE_FILES:
        raise DataSourceError(f"{archive}: {len(members):,} members, more than the {MAX_SOURCE_FILES:,} allowed")
    total = sum(member.file_size for member in members)
    if total > MAX_SOURCE_BYTES:
        raise DataSourceError(f"{archive}: unpacks to {total:,} bytes, more than the {MAX_SOURCE_BYTES:,} allowed")
    for member in members:
        if not (target / member.filename).resolve().is_relative_to(target.resolve()):
            raise DataSourceError(f"{archive}: member {member.filename!r} points outside the archive")
        if member.file_size > MAX_COMPRESSION_RATIO * max(member.compress_size, 1024):
            raise DataSourceError(
                f"{archive}: member {member.filename!r} unpacks to {member.file_size:,} bytes from "
                f"{member.compress_size:,}, more than {MAX_COMPRESSION_RATIO}x: refused as a possible zip bomb"
            )


def extract_zip(archive: Path, expected_sha256: str | None, target: Path) -> Path:
    if expected_sha256 and sha256_file(archive) != expected_sha256.lower():
        raise DataSourceError(f"{archive}: sha256 does not match config data_ingestion.source_sha256")
    try:
        with zipfile.ZipFile(archive) as zipped:
            check_members(archive, zipped.infolist(), target)
            zipped.extractall(target)
    except zipfile.BadZipFile as error:
        raise DataSourceError(f"{archive}: not a readable zip file ({error})") from None
    return target


def materialize_source(config: DataIngestionConfig, workdir: Path) -> Path:
    """Return a local folder of class subfolders for whichever kind of source is configured."""
    if config.is_synthetic:
        folder = workdir / "synthetic"
        write_phantoms(
            folder, config.classes, config.synthetic.images_per_class, config.synthetic.image_size, config.seed
        )
        return folder
    return materialize(config.source, config.source_sha256, workdir)


def materialize(source: str, sha256: str | None, workdir: Path) -> Path:
    """A local folder of class subfolders from a folder, a zip or an https URL to a zip."""
    if source.startswith(("http://", "https://")):
        archive = download(source, sha256 or "", workdir / "source.zip")
        return extract_zip(archive, None, workdir / "extracted")
    path = Path(source)
    if path.is_file():
        return extract_zip(path, sha256, workdir / "extracted")
    if path.is_dir():
        return path
    raise DataSourceError(f"data source {source!r} does not exist")


# -- reading and checking -----------------------------------------------------------------


def class_of_folder(folder_name: str, classes: tuple[str, ...], separator: str) -> str | None:
    name = folder_name.split(separator)[0] if separator else folder_name
    return name if name in classes else None


def scan(folder: Path, classes: tuple[str, ...], separator: str) -> tuple[list[tuple[Path, str]], list[str]]:
    """Files in class folders (at any depth), and the names of folders that matched no class."""
    files, ignored = [], set()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        label = class_of_folder(path.parent.name, classes, separator)
        if label:
            files.append((path, label))
        elif path.parent != folder:
            ignored.add(path.parent.name)
    missing = sorted(set(classes) - {label for _, label in files})
    if missing:
        folders = sorted({p.parent.name for p, _ in files} | ignored)
        raise DataSourceError(
            f"params.yaml 'data.classes' names {missing}, but {folder} has no folder for them "
            f"(a folder matches a class by its name up to {separator!r}); folders found: {folders}"
        )
    return files, sorted(ignored)


def read_images(files: list[tuple[Path, str]], root: Path) -> tuple[list[ImageRecord], list[dict]]:
    records, rejected = [], []
    for path, label in tqdm(files, desc="decode images", unit="img"):
        relative = str(path.relative_to(root))
        data = path.read_bytes()
        try:
            pixels = limit_size(decode_image(data, draft_side=MAX_SIDE))  # as the app decodes it
        except ImageDecodeError as error:
            rejected.append({"file": relative, "label": label, "reason": str(error)})
            continue
        digest = sha256_bytes(str(pixels.shape).encode() + pixels.tobytes())
        phash = imagehash.phash(Image.fromarray(pixels).convert("L")).hash.flatten()
        records.append(ImageRecord(relative, label, pixels, digest, phash, image_metadata(data, pixels)))
    return records, rejected


def remove_exact_duplicates(records: list[ImageRecord]) -> tuple[list[ImageRecord], list[dict], list[dict]]:
    """Keep one record per pixel hash; drop every copy of an image whose copies disagree on the label."""
    by_hash: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        by_hash[record.sha256].append(record)
    kept, duplicates, conflicts = [], [], []
    for copies in by_hash.values():
        labels = sorted({r.label for r in copies})
        if len(labels) > 1:
            conflicts.append({"files": [r.source_path for r in copies], "labels": labels, "action": "excluded"})
            continue
        kept.append(copies[0])
        if len(copies) > 1:
            duplicates.append({"kept": copies[0].source_path, "removed": [r.source_path for r in copies[1:]]})
    return kept, duplicates, conflicts


def near_duplicate_groups(records: list[ImageRecord], max_distance: int) -> list[int]:
    """Union-find over perceptual-hash distance: the group id of each record."""
    hashes = np.array([r.phash for r in records])
    parent = list(range(len(records)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(records)):
        distances = (hashes[i + 1 :] != hashes[i]).sum(axis=1)
        for j in np.flatnonzero(distances <= max_distance) + i + 1:
            parent[root(int(j))] = root(i)
    return [root(i) for i in range(len(records))]


def copies_of_known(records: list[ImageRecord], known: list[ImageRecord], max_distance: int) -> list[bool]:
    """For each record: is it an exact copy (pixel hash) or a near copy (perceptual hash) of a known image?"""
    hashes = {r.sha256 for r in known}
    known_phash = np.array([r.phash for r in known])
    return [r.sha256 in hashes or bool(((known_phash != r.phash).sum(axis=1) <= max_distance).any()) for r in records]


def group_members(groups: list[int]) -> list[list[int]]:
    """The record indices of each group, from each record's group id."""
    members: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    return list(members.values())


def group_split(groups: list[int], labels: list[str], fractions: dict[str, float], seed: int) -> list[str]:
    """Stratified, seeded split of whole groups: no group ever spans two splits."""
    by_class: dict[str, list[list[int]]] = defaultdict(list)
    for indices in sorted(group_members(groups)):
        majority = Counter(labels[i] for i in indices).most_common(1)[0][0]
        by_class[majority].append(indices)
    rng = np.random.default_rng(seed)
    split = [""] * len(groups)
    for label in sorted(by_class):
        class_groups = by_class[label]
        if len(class_groups) < len(SPLITS):
            raise DataSourceError(
                f"class {label!r} has only {len(class_groups)} distinct image group(s); each split needs one"
            )
        order = rng.permutation(len(class_groups))
        total = sum(len(g) for g in class_groups)
        wanted = {name: max(1, round(total * fractions[name])) for name in ("test", "val")}
        filled = Counter()
        for position, g in enumerate(order):
            left = len(order) - position
            name = next((n for n in ("test", "val") if filled[n] < wanted[n] and left > (n == "test") + 1), "train")
            for i in class_groups[g]:
                split[i] = name
            filled[name] += len(class_groups[g])
    return split


# -- the stage ----------------------------------------------------------------------------


class DataIngestion:
    def __init__(self, config: DataIngestionConfig) -> None:
        self.config = config

    def run(self) -> dict:
        config = self.config
        with tempfile.TemporaryDirectory() as workdir, atomic_directory(config.root_dir) as out:
            folder = materialize_source(config, Path(workdir))
            files, ignored = scan(folder, config.classes, config.folder_separator)
            records, rejected = read_images(files, folder)
            unique, duplicates, conflicts = remove_exact_duplicates(records)
            groups = near_duplicate_groups(unique, config.near_duplicate_distance)
            splits = group_split(groups, [r.label for r in unique], config.split, config.seed)
            report = self._report(files, ignored, rejected, duplicates, conflicts, unique, groups, splits)
            if config.external_test:
                external, report["external"] = self._external(unique, Path(workdir) / "external")
                unique, groups = unique + external, groups + list(range(len(unique), len(unique) + len(external)))
                splits = splits + [EXTERNAL] * len(external)
            self._write_images(unique, groups, splits, out)
            save_json(out / "data_report.json", report)
        logger.info("ingested %d distinct images: %s", report["images_kept"], report["counts"])
        return report

    def _external(self, ingested: list[ImageRecord], workdir: Path) -> tuple[list[ImageRecord], dict]:
        """The external test set's distinct images that are no exact or near copy of an ingested one."""
        config = self.config
        workdir.mkdir()
        folder = materialize(config.external_test, config.external_test_sha256, workdir)
        files, ignored = scan(folder, config.classes, config.folder_separator)
        records, rejected = read_images(files, folder)
        unique, duplicates, conflicts = remove_exact_duplicates(records)
        copies = copies_of_known(unique, ingested, config.near_duplicate_distance)
        kept = [r for r, copy in zip(unique, copies) if not copy]
        counts = {c: sum(r.label == c for r in kept) for c in config.classes}
        missing = [c for c, n in counts.items() if n == 0]
        if missing:  # macro ROC-AUC needs every class; an empty set would silently vanish
            raise DataSourceError(
                f"config data_ingestion.external_test ({config.external_test}): no image of class(es) {missing} is "
                f"left after removing copies of ingested images ({sum(copies)} removed of {len(unique)} distinct): "
                "point it at an independent test set"
            )
        logger.info(
            "external test: %d files, %d distinct, %d copies of ingested images removed, %d kept: %s",
            len(files),
            len(unique),
            sum(copies),
            len(kept),
            counts,
        )
        return kept, {
            "source": config.external_test,
            "files_scanned": len(files),
            "rejected": rejected,
            "exact_duplicates_removed": sum(len(d["removed"]) for d in duplicates),
            "conflicting_labels": conflicts,
            "copies_of_ingested_removed": [r.source_path for r, copy in zip(unique, copies) if copy],
            "images_kept": len(kept),
            "counts": counts,
            "ignored_folders": ignored,
        }

    @staticmethod
    def _write_images(records: list[ImageRecord], groups: list[int], splits: list[str], out: Path) -> None:
        (out / "images").mkdir()
        with open(out / "manifest.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            for record, group, split in tqdm(zip(records, groups, splits), total=len(records), desc="write images"):
                name = f"images/{record.sha256}.png"
                Image.fromarray(record.pixels).save(out / name)
                writer.writerow(
                    {
                        "file": name,
                        "sha256": record.sha256,
                        "label": record.label,
                        "split": split,
                        "group": records[group].sha256[:12],
                        "source_path": record.source_path,
                        **record.metadata,
                    }
                )

    def _report(self, files, ignored, rejected, duplicates, conflicts, unique, groups, splits) -> dict:
        config = self.config
        counts = {s: {c: 0 for c in config.classes} for s in SPLITS}
        for record, split in zip(unique, splits):
            counts[split][record.label] += 1
        near = [
            {
                "files": [unique[i].source_path for i in g],
                "labels": sorted({unique[i].label for i in g}),
                "split": splits[g[0]],
            }
            for g in group_members(groups)
            if len(g) > 1
        ]
        return {
            "dataset": {
                "source": config.source,
                "demo": config.is_synthetic,
                "classes": list(config.classes),
            },
            "split_method": (
                f"stratified by class, seeded ({config.seed}), whole near-duplicate groups "
                f"(perceptual hash distance <= {config.near_duplicate_distance}) kept in one split"
            ),
            "files_scanned": len(files),
            "images_kept": len(unique),
            "counts": counts,
            "rejected": rejected,
            "exact_duplicates_removed": sum(len(d["removed"]) for d in duplicates),
            "exact_duplicates": duplicates,
            "conflicting_labels": conflicts,
            "near_duplicate_groups": near,
            "ignored_folders": ignored,
        }
