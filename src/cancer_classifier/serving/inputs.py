"""Untrusted upload bytes -> RGB uint8 pixels, judged by content, never by file name.

PNG and JPEG go through ``decode_image``; DICOM (``DICM`` at byte 128) is read with pydicom,
rescaled to Hounsfield units, clipped to the configured window and mapped to 8-bit gray RGB.
Everything happens in memory. Messages never quote header values, so no patient identifier
can reach a reply or a log line.
"""

import io
import warnings
from dataclasses import dataclass

import numpy as np

from cancer_classifier.serving.errors import SUPPORTED_TYPES, BadRequest, UnsupportedMediaType
from cancer_classifier.utils.images import MAX_IMAGE_PIXELS, ImageDecodeError, decode_image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_PREAMBLE = 128
DICOM_MAGIC = b"DICM"

# What to install for pydicom to decode each family of compressed transfer syntaxes.
_DICOM_PLUGINS = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pyjpegls",
    "1.2.840.10008.1.2.4.81": "pyjpegls",
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",
}


@dataclass(frozen=True)
class Window:
    """A display window in Hounsfield units (the lung window is center -600, width 1500)."""

    center: float
    width: float

    def apply(self, hu: np.ndarray) -> np.ndarray:
        low = self.center - self.width / 2
        return np.clip((hu - low) / self.width, 0.0, 1.0)


def sniff(data: bytes) -> str:
    """'png', 'jpeg' or 'dicom' from the first bytes; anything else is a 415."""
    if not data:
        raise BadRequest("the file is empty")
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[DICOM_PREAMBLE : DICOM_PREAMBLE + 4] == DICOM_MAGIC:
        return "dicom"
    raise UnsupportedMediaType(f"unsupported file type: the content is not {SUPPORTED_TYPES}")


def to_rgb(data: bytes, window: Window) -> tuple[np.ndarray, str]:
    """Decode upload bytes into an (H, W, 3) uint8 array; also return the detected kind."""
    kind = sniff(data)
    if kind == "dicom":
        return dicom_to_rgb(data, window), kind
    try:
        return decode_image(data), kind
    except ImageDecodeError as error:
        raise BadRequest(f"cannot read the {kind.upper()} image: {error}") from None


def _gray_to_rgb(unit: np.ndarray) -> np.ndarray:
    gray = np.round(unit * 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def _stretch(pixels: np.ndarray) -> np.ndarray:
    low, high = float(pixels.min()), float(pixels.max())
    return (pixels - low) / (high - low or 1.0)


def dicom_to_rgb(data: bytes, window: Window) -> np.ndarray:
    import pydicom

    # pydicom warns about odd header values and would quote them; none of that may reach a log.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except Exception:  # pydicom raises many exception types on malformed input
            raise BadRequest("the DICOM file is corrupt or truncated") from None
        if "PixelData" not in ds:
            raise BadRequest("the DICOM file holds no image (no PixelData element)")
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        if rows * columns == 0:
            raise BadRequest("the DICOM file has no image size (Rows/Columns)")
        if rows * columns * frames * samples > MAX_IMAGE_PIXELS:
            raise BadRequest(f"the DICOM image has more than {MAX_IMAGE_PIXELS:,} pixels")
        file_meta = getattr(ds, "file_meta", None)
        transfer_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
        try:
            pixels = ds.pixel_array
        except Exception:
            if transfer_syntax is not None and transfer_syntax.is_compressed:
                install = _DICOM_PLUGINS.get(str(transfer_syntax), "python-gdcm")
                raise UnsupportedMediaType(
                    f"DICOM transfer syntax {transfer_syntax} ({transfer_syntax.name}) cannot be decoded on this "
                    f"server: the server needs `pip install {install}`; or send an uncompressed DICOM"
                ) from None
            raise BadRequest("the DICOM pixel data is corrupt or truncated") from None

    if frames > 1:  # a multi-frame object: classify its middle frame
        pixels = pixels[frames // 2]
    pixels = np.asarray(pixels, dtype=np.float64)
    if samples == 3 or pixels.ndim == 3:  # colour DICOM (pydicom converts YBR to RGB)
        return np.round(_stretch(pixels) * 255).astype(np.uint8)
    if pixels.ndim != 2:
        raise BadRequest("the DICOM image is not a 2-D slice")
    if str(ds.get("Modality", "")).upper() == "CT":
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        unit = window.apply(pixels * slope + intercept)
    else:  # not Hounsfield units: a HU window would be meaningless, so stretch to the full range
        unit = _stretch(pixels)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        unit = 1.0 - unit  # MONOCHROME1: high values are dark
    return _gray_to_rgb(unit)
