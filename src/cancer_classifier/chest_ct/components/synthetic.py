"""Deterministic CT-like phantom slices, so the pipeline runs anywhere with nothing to download.

Each slice is a body ellipse with two dark lungs, a spine and bright vessel dots. A class named
"normal" has nothing more; every other class carries nodules whose size and position follow a
profile of its own (peripheral, central, large), so more than two classes stay separable.
These images are a demo of the pipeline, not of medicine.
"""

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

HEALTHY_CLASS = "normal"
# (radius range as a fraction of the image size, distance from the lung centre, 0 centre .. 1 edge)
NODULE_PROFILES = [
    ((0.05, 0.075), (0.5, 0.85)),  # medium, peripheral
    ((0.07, 0.10), (0.0, 0.5)),  # large, central
    ((0.045, 0.07), (0.0, 0.3)),  # medium, near the hilum
    ((0.03, 0.05), (0.3, 0.8)),
]


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def _blur(image: np.ndarray) -> np.ndarray:
    """A 3x3 box blur, so edges look scanned rather than drawn."""
    padded = np.pad(image, 1, mode="edge")
    h, w = image.shape
    return sum(padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9


def phantom(size: int, profile: int | None, rng: np.random.Generator) -> np.ndarray:
    """One grayscale slice (uint8). ``profile`` is None for a healthy slice, else a nodule profile index."""
    height = int(size * rng.uniform(0.8, 1.0))
    yy, xx = np.mgrid[0:height, 0:size].astype(np.float32)
    cy, cx = height * rng.uniform(0.47, 0.53), size * rng.uniform(0.47, 0.53)
    image = np.full((height, size), 0.02, np.float32)
    body_ry, body_rx = height * rng.uniform(0.34, 0.42), size * rng.uniform(0.40, 0.46)
    image[_ellipse(yy, xx, cy, cx, body_ry, body_rx)] = rng.uniform(0.50, 0.60)
    lungs = []
    for side in (-1, 1):
        ly, lx = cy - body_ry * 0.05, cx + side * body_rx * rng.uniform(0.42, 0.50)
        ry, rx = body_ry * rng.uniform(0.62, 0.75), body_rx * rng.uniform(0.30, 0.38)
        image[_ellipse(yy, xx, ly, lx, ry, rx)] = rng.uniform(0.06, 0.12)
        lungs.append((ly, lx, ry, rx))
    image[_ellipse(yy, xx, cy + body_ry * 0.75, cx, body_ry * 0.12, body_rx * 0.08)] = 0.95  # spine
    for _ in range(rng.integers(6, 14)):  # vessels: small bright dots in both lungs, in every class
        ly, lx, ry, rx = lungs[rng.integers(2)]
        angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.8)
        r = size * rng.uniform(0.006, 0.014)
        image[_ellipse(yy, xx, ly + radius * ry * np.sin(angle), lx + radius * rx * np.cos(angle), r, r)] = 0.7
    if profile is not None:
        (r_low, r_high), (d_low, d_high) = NODULE_PROFILES[profile % len(NODULE_PROFILES)]
        for _ in range(rng.integers(1, 3)):
            ly, lx, ry, rx = lungs[rng.integers(2)]
            angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(d_low, d_high)
            r = size * rng.uniform(r_low, r_high)
            ny, nx = ly + distance * (ry - r) * np.sin(angle), lx + distance * (rx - r) * np.cos(angle)
            image[_ellipse(yy, xx, ny, nx, r * rng.uniform(0.8, 1.2), r)] = rng.uniform(0.6, 0.8)
    # Scanner-like gain and offset per slice, so global intensity statistics do not give nodules away.
    image = _blur(image) * rng.uniform(0.75, 1.25) + rng.uniform(-0.1, 0.1) + rng.normal(0, 0.03, image.shape)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def write_phantoms(folder: Path, classes: tuple[str, ...], per_class: int, size: int, seed: int) -> None:
    """Write ``per_class`` PNG slices per class into ``folder/<class>/``, the same for the same seed."""
    rng = np.random.default_rng(seed)
    cancer_classes = [c for c in classes if c != HEALTHY_CLASS]
    for name in classes:
        profile = None if name == HEALTHY_CLASS else cancer_classes.index(name)
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in tqdm(range(per_class), desc=f"synthetic {name}", unit="img", leave=False):
            Image.fromarray(phantom(size, profile, rng), mode="L").save(folder / name / f"{name}_{i:04d}.png")
