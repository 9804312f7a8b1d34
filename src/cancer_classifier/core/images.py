"""Decode untrusted image bytes into RGB pixels, with a reason whenever that is impossible."""

import io
import math
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from cancer_classifier.core.errors import ImageDecodeError, ImageTooLarge

# Pillow's own decompression-bomb guard, made strict: a warning becomes a refusal.
MAX_IMAGE_PIXELS = 50_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def jpeg_draft(image: Image.Image, side: int) -> None:
    """Ask Pillow to decode a JPEG at a reduced scale (1/2, 1/4 or 1/8, by DCT scaling) when that
    still leaves its longer side at ``side`` or more; a JPEG under twice ``side`` is left alone.
    Only the header has been read: this costs nothing and makes the later ``load`` cheaper."""
    if image.format != "JPEG":
        return
    width, height = image.size
    longer = max(width, height)
    if longer < 2 * side:
        return
    scale = side / longer
    image.draft(image.mode, (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "F"):  # 16-bit or float grayscale: stretch to 8 bits
        pixels = np.array(image, dtype=np.float64)
        low, high = pixels.min(), pixels.max()
        # In place: the same values as ((pixels - low) / (high - low or 1) * 255).round(), one array.
        pixels -= low
        pixels /= high - low or 1
        pixels *= 255
        image = Image.fromarray(pixels.round(out=pixels).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "P", "PA") or "transparency" in image.info:
        # Transparent pixels become black, as CT background is.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, draft_side: int | None = None) -> np.ndarray:
    """Return an (H, W, 3) uint8 array; raise ImageDecodeError for empty, truncated or non-image data.

    The size the header declares is checked against ``max_pixels`` before any pixel is decoded
    (ImageTooLarge). ``draft_side``: a JPEG at least twice that long is decoded at a reduced scale
    (``jpeg_draft``); None decodes every image at full size.
    """
    if not data:
        raise ImageDecodeError("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if draft_side:
                    jpeg_draft(image, draft_side)
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageTooLarge(f"the image has {width} x {height} pixels, more than {max_pixels:,}")
                image.load()
                return np.asarray(_to_rgb(image))
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"the image has more than {MAX_IMAGE_PIXELS:,} pixels") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("the content is not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"the image is corrupt or truncated ({error})") from None


def image_statistics(pixels: np.ndarray) -> dict[str, float]:
    """Size and intensity of an (H, W, 3) uint8 image: cheap, no anatomy. Ingestion records them for the
    shortcut audit and the drift reference; serving records them per request for drift monitoring."""
    height, width = pixels.shape[:2]
    # From the histogram of the channel sums (0..765): exact, and a sixth of the time of float arrays
    # on a 512 px slice, which serving pays per request (summing channel by channel, not along axis 2).
    sums = pixels[..., 0].astype(np.uint16)
    sums += pixels[..., 1]
    sums += pixels[..., 2]
    counts = np.bincount(sums.ravel(), minlength=766)
    levels = np.arange(len(counts)) / 3.0
    mean = float(counts @ levels) / max(counts.sum(), 1)
    std = math.sqrt(max(float(counts @ (levels - mean) ** 2) / max(counts.sum(), 1), 0.0))
    return {"width": width, "height": height, "mean": round(mean, 3), "std": round(std, 3)}
