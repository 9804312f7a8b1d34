"""Decode untrusted image bytes into RGB pixels, with a reason whenever that is impossible."""

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

# Pillow's own decompression-bomb guard, made strict: a warning becomes a refusal.
MAX_IMAGE_PIXELS = 50_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class ImageDecodeError(ValueError):
    """The bytes are not an image this project can read; the message says why."""


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "F"):  # 16-bit or float grayscale: stretch to 8 bits
        pixels = np.asarray(image, dtype=np.float64)
        low, high = pixels.min(), pixels.max()
        scaled = (pixels - low) / (high - low or 1) * 255
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "P", "PA") or "transparency" in image.info:
        # Transparent pixels become black, as CT background is.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def decode_image(data: bytes) -> np.ndarray:
    """Return an (H, W, 3) uint8 array; raise ImageDecodeError for empty, truncated or non-image data."""
    if not data:
        raise ImageDecodeError("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return np.asarray(_to_rgb(image))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(f"the image has more than {MAX_IMAGE_PIXELS:,} pixels") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("the content is not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"the image is corrupt or truncated ({error})") from None


def image_statistics(pixels: np.ndarray) -> dict[str, float]:
    """Size and intensity of an (H, W, 3) image: cheap, no anatomy. Ingestion records them for the
    shortcut audit and the drift reference; serving records them per request for drift monitoring."""
    height, width = pixels.shape[:2]
    gray = pixels.mean(axis=2)
    return {"width": width, "height": height, "mean": round(float(gray.mean()), 3), "std": round(float(gray.std()), 3)}
