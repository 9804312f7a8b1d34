"""The largest image side the model is given: bigger images are downscaled (antialiased) first.

Applied at ingestion and in the app alike, so evaluation and serving see the same pixels; it also
bounds the memory one image costs. CT slices (512 x 512) are never touched.
"""

import numpy as np
from PIL import Image

MAX_SIDE = 2048


def limit_size(image: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    height, width = image.shape[:2]
    if max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
