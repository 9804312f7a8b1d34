"""Untrusted upload bytes -> RGB uint8 pixels, judged by content, never by file name.

PNG and JPEG go through ``decode_image``; DICOM (``DICM`` at byte 128) is read with pydicom,
rescaled to Hounsfield units, clipped to the configured window and mapped to 8-bit gray RGB.
Everything happens in memory. Messages never quote header values, so no patient identifier
can reach a reply or a log line.

Every upload is first *probed* (``probe``): its kind, and the size it declares, read from the PNG
or JPEG header or the DICOM file meta and attributes, before any pixel is decoded. A
``DecodeBudget`` charges each probe against a per-image and a per-request budget of pixels and of
decoded bytes, so a request is refused (413) before it can make a worker allocate gigabytes: a
small PNG declaring 7000 x 7000 pixels, an RLE DICOM of that size, or a Deflated DICOM that
inflates to a gigabyte. Only then is each upload decoded (``decode``), exactly as before for every
input within the budget.
"""

import base64
import binascii
import io
import math
import re
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from cancer_classifier.core.errors import ImageDecodeError, ImageTooLarge
from cancer_classifier.core.images import decode_image, jpeg_draft
from cancer_classifier.core.limits import MAX_SIDE
from cancer_classifier.serving.errors import (
    SUPPORTED_TYPES,
    ApiError,
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_PREAMBLE = 128
DICOM_MAGIC = b"DICM"

# -- the decode budget: defaults of config.yaml's keys (in brackets) ---------------------------
# Pixels one image may hold after decoding: 4096 x 4096. A CT slice is 512 x 512; the predictor
# downscales anything above 2048 on a side anyway. Decoding costs at most about 20 bytes per pixel
# at the peak (16-bit data as float64 while windowing), so one image stays near 350 MB.
# [serving.decode_budget.max_image_pixels]
MAX_IMAGE_PIXELS = 4096 * 4096
# Pixels all the images of one request may hold together (several ``file`` fields in /predict):
# the decoded images are kept until the batch's forward pass. [serving.decode_budget.max_request_pixels]
MAX_REQUEST_PIXELS = 2 * MAX_IMAGE_PIXELS
# Bytes one DICOM may decode to: its inflated dataset (Deflated transfer syntax) and, separately,
# its raw pixel buffer (Rows x Columns x frames x samples x BitsAllocated / 8).
# [serving.decode_budget.max_image_decoded_mb]
MAX_IMAGE_DECODED_BYTES = 64 * 1024 * 1024
# The same, summed over the uploads of one request. [serving.decode_budget.max_request_decoded_mb]
MAX_REQUEST_DECODED_BYTES = 2 * MAX_IMAGE_DECODED_BYTES
# A JPEG more than twice this size on its longer side is decoded at a reduced scale (DCT scaling,
# Pillow's ``draft``) to no less than this size: the predictor's MAX_SIDE, to which it downscales
# any larger image anyway. Smaller JPEGs, every CT slice among them, decode exactly as before.
JPEG_DRAFT_SIDE = MAX_SIDE  # ingestion drafts at the same side, so both decode alike
# Seconds a request body may take to arrive in full, however steadily it trickles (each read also
# waits at most serving.read_timeout_seconds). 10 MB in 90 s is 0.9 Mbit/s.
# [serving.body_deadline_seconds]
BODY_DEADLINE_SECONDS = 90.0
# Seconds an image request waits for its worker's prediction slot (one at a time per worker) before
# a 503. [serving.predict_wait_seconds]
PREDICT_WAIT_SECONDS = 60.0
# Rescale slope and intercept beyond this magnitude are not Hounsfield conversions but garbage.
MAX_RESCALE_MAGNITUDE = 1e6

DEFLATED = "1.2.840.10008.1.2.1.99"
NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", DEFLATED)
UID_PATTERN = re.compile(r"^[0-9.]{1,64}$")


@dataclass(frozen=True)
class Window:
    """A display window in Hounsfield units (the lung window is center -600, width 1500)."""

    center: float
    width: float

    def apply(self, hu: np.ndarray) -> np.ndarray:
        low = self.center - self.width / 2
        return np.clip((hu - low) / self.width, 0.0, 1.0)

    def apply_in_place(self, hu: np.ndarray) -> np.ndarray:
        """``apply`` on a float array it may overwrite: the same values, without three temporaries."""
        low = self.center - self.width / 2
        hu -= low
        hu /= self.width
        return np.clip(hu, 0.0, 1.0, out=hu)


DEFAULT_WINDOW = Window(-600.0, 1500.0)  # the lung window, as serving.dicom_window in config/config.yaml


@dataclass(frozen=True)
class Probe:
    """What an upload declares before decoding: its kind, pixel count and decoded bytes."""

    data: bytes
    kind: str  # png | jpeg | dicom
    pixels: int
    decoded_bytes: int = 0  # DICOM only: inflated dataset plus raw pixel buffer


class DecodeBudget:
    """Pixels and decoded bytes allowed per image and per request; ``charge`` refuses with 413."""

    def __init__(
        self,
        image_pixels: int = MAX_IMAGE_PIXELS,
        request_pixels: int = MAX_REQUEST_PIXELS,
        image_bytes: int = MAX_IMAGE_DECODED_BYTES,
        request_bytes: int = MAX_REQUEST_DECODED_BYTES,
    ) -> None:
        self.image_pixels, self.request_pixels = image_pixels, request_pixels
        self.image_bytes, self.request_bytes = image_bytes, request_bytes
        self.pixels = 0
        self.bytes = 0

    def charge(self, probe: Probe) -> None:
        self.pixels += probe.pixels
        self.bytes += probe.decoded_bytes
        if self.pixels > self.request_pixels:
            raise PayloadTooLarge(
                f"the images of this request hold more than {_mega(self.request_pixels)} pixels together; "
                "send fewer or smaller images per request"
            )
        if self.bytes > self.request_bytes:
            raise PayloadTooLarge(
                f"the DICOM files of this request decode to more than {_mib(self.request_bytes)} together; "
                "send fewer per request"
            )


def _mega(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} million"


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:g} MB"


def from_base64(encoded: object, max_bytes: int) -> bytes:
    """The file in a base64 string (line breaks and a browser's ``data:`` prefix allowed), at most ``max_bytes``."""
    if not isinstance(encoded, str):
        raise BadRequest('"image" must be a base64 string')
    if encoded.startswith("data:") and "," in encoded:  # a data URL straight from a browser
        encoded = encoded.split(",", 1)[1]
    if len(encoded) > max_bytes * 4 // 3 + 1024:  # before decoding: base64 is 4/3 of the bytes, plus line breaks
        raise PayloadTooLarge(f"the image is larger than {_mib(max_bytes)}")
    try:
        return base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest('"image" is not valid base64') from None


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


def probe(data: bytes, budget: DecodeBudget | None = None) -> Probe:
    """Kind and declared size of an upload, from its header only; 4xx when it is over the per-image budget."""
    budget = budget or DecodeBudget()
    kind = sniff(data)
    if kind == "dicom":
        return Probe(data, kind, *_dicom_probe(data, budget)[:2])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked just below
            with Image.open(io.BytesIO(data)) as image:
                if kind == "jpeg":
                    jpeg_draft(image, JPEG_DRAFT_SIDE)
                width, height = image.size
    except Image.DecompressionBombError:
        raise PayloadTooLarge(f"the {kind.upper()} image has more than {_mega(budget.image_pixels)} pixels") from None
    except UnidentifiedImageError:
        raise BadRequest(f"cannot read the {kind.upper()} image: the header is not readable") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise BadRequest(f"cannot read the {kind.upper()} image: the header is corrupt ({_short(error)})") from None
    if width * height > budget.image_pixels:
        raise PayloadTooLarge(
            f"the {kind.upper()} image is {width} x {height} pixels, more than {_mega(budget.image_pixels)}; "
            "send it downscaled"
        )
    return Probe(data, kind, width * height)


def decode(upload: Probe, window: Window, budget: DecodeBudget | None = None) -> np.ndarray:
    """The (H, W, 3) uint8 pixels of a probed upload."""
    budget = budget or DecodeBudget()
    if upload.kind == "dicom":
        return dicom_to_rgb(upload.data, window, budget)
    try:
        return decode_image(upload.data, max_pixels=budget.image_pixels, draft_side=JPEG_DRAFT_SIDE)
    except ImageTooLarge as error:
        raise PayloadTooLarge(f"the {upload.kind.upper()} image is too large: {error}") from None
    except ImageDecodeError as error:
        raise BadRequest(f"cannot read the {upload.kind.upper()} image: {error}") from None


def to_rgb(data: bytes, window: Window, budget: DecodeBudget | None = None) -> tuple[np.ndarray, str]:
    """Decode upload bytes into an (H, W, 3) uint8 array; also return the detected kind."""
    budget = budget or DecodeBudget()
    upload = probe(data, budget)
    budget.charge(upload)
    return decode(upload, window, budget), upload.kind


def _short(error: Exception, limit: int = 120) -> str:
    text = str(error)
    return text if len(text) <= limit else text[:limit] + "..."


def _gray_to_rgb(unit: np.ndarray) -> np.ndarray:
    unit *= 255  # in place: the same values as np.round(unit * 255), one float array fewer
    gray = np.round(unit, out=unit).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def _stretch(pixels: np.ndarray) -> np.ndarray:
    """(pixels - low) / (high - low), in place on a float array."""
    low, high = float(pixels.min()), float(pixels.max())
    pixels -= low
    pixels /= high - low or 1.0
    return pixels


# -- DICOM -------------------------------------------------------------------------------------


def _dicom_meta(data: bytes):
    """The file meta group and the offset of the dataset after it, read without touching the dataset."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_preamble

    stream = DicomBytesIO(data)
    try:
        read_preamble(stream, False)
        meta = _read_file_meta_info(stream)
    except Exception:  # pydicom raises many exception types on malformed input
        raise BadRequest("the DICOM file meta information is corrupt or truncated") from None
    return meta, stream.tell()


def _syntax_name(uid: str) -> str:
    return uid if UID_PATTERN.match(uid) else "(not a valid UID)"


def _check_transfer_syntax(uid) -> None:
    """415 for a transfer syntax this server cannot decode, naming what is missing only when it is."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID, AllTransferSyntaxes

    text = str(uid).strip().rstrip("\0")
    if text in NATIVE_SYNTAXES:
        return
    if text not in AllTransferSyntaxes:
        raise UnsupportedMediaType(
            f"DICOM transfer syntax {_syntax_name(text)} is not a standard transfer syntax this server knows; "
            "send an uncompressed DICOM (Explicit VR Little Endian)"
        )
    name = UID(text).name
    try:
        decoder = get_decoder(text)
    except NotImplementedError:
        raise UnsupportedMediaType(
            f"DICOM transfer syntax {text} ({name}) holds no still image this server can decode; "
            "send an uncompressed DICOM"
        ) from None
    if not decoder.is_available:
        plugins = "; ".join(decoder.missing_dependencies) or "a pixel data plugin"
        raise UnsupportedMediaType(
            f"DICOM transfer syntax {text} ({name}) cannot be decoded on this server: it needs {plugins}; "
            "or send an uncompressed DICOM"
        )


def _bounded_inflate(compressed: bytes, limit: int) -> int:
    """Inflate a Deflated DICOM's dataset up to ``limit`` bytes; its size, or 413 beyond the limit."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    size, chunk = 0, 1024 * 1024
    try:
        size += len(inflater.decompress(compressed, chunk))
        while inflater.unconsumed_tail and size <= limit:
            size += len(inflater.decompress(inflater.unconsumed_tail, chunk))
        if size <= limit:
            size += len(inflater.flush())
    except zlib.error:
        raise BadRequest("the Deflated DICOM dataset is corrupt (not a valid deflate stream)") from None
    if size > limit:
        raise PayloadTooLarge(f"the Deflated DICOM dataset inflates to more than {_mib(limit)}; send it uncompressed")
    return size


def _int_attribute(ds, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword, default)
        number = int(value or default)
    except Exception:  # an unparsable IS/US value, a multi-valued one...
        raise BadRequest(f"the DICOM attribute {keyword} is not a whole number") from None
    if number < 0:
        raise BadRequest(f"the DICOM attribute {keyword} is negative")
    return number


def _rescale(ds, keyword: str, default: float) -> float:
    """RescaleSlope or RescaleIntercept as a finite, plausible float (400 otherwise)."""
    try:
        value = ds.get(keyword, default)
        number = float(value or default)
    except Exception:  # "ab", a multi-valued DS, an overflowing one...
        raise BadRequest(f"the DICOM attribute {keyword} is not a number") from None
    if not math.isfinite(number) or abs(number) > MAX_RESCALE_MAGNITUDE:
        raise BadRequest(f"the DICOM attribute {keyword} is not a finite number of at most {MAX_RESCALE_MAGNITUDE:g}")
    return number


def _read_dataset(data: bytes, stop_before_pixels: bool):
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)
    except Exception:  # pydicom raises many exception types on malformed input
        raise BadRequest("the DICOM file is corrupt or truncated") from None


def _dicom_probe(data: bytes, budget: DecodeBudget) -> tuple[int, int, object]:
    """(pixels, decoded bytes, header dataset), every size checked before any pixel is decoded."""
    meta, offset = _dicom_meta(data)
    syntax = meta.get("TransferSyntaxUID")
    inflated = 0
    if syntax is not None:
        _check_transfer_syntax(syntax)
        if str(syntax) == DEFLATED:  # pydicom would inflate it whole, whatever its size
            inflated = _bounded_inflate(data[offset:], budget.image_bytes)
    ds = _read_dataset(data, stop_before_pixels=True)
    rows, columns = _int_attribute(ds, "Rows", 0), _int_attribute(ds, "Columns", 0)
    frames = _int_attribute(ds, "NumberOfFrames", 1) or 1
    samples = _int_attribute(ds, "SamplesPerPixel", 1) or 1
    bits = _int_attribute(ds, "BitsAllocated", 16) or 16
    if rows * columns == 0:
        raise BadRequest("the DICOM file has no image size (Rows/Columns)")
    pixels = rows * columns * frames * samples
    if pixels > budget.image_pixels:
        raise PayloadTooLarge(
            f"the DICOM image holds {rows} x {columns} pixels x {frames} frame(s) x {samples} sample(s), "
            f"more than {_mega(budget.image_pixels)}; send a single slice"
        )
    raw = pixels * max(1, math.ceil(bits / 8))
    if raw > budget.image_bytes:
        raise PayloadTooLarge(f"the DICOM pixel data decodes to more than {_mib(budget.image_bytes)}")
    if str(ds.get("Modality", "")).upper() == "CT":
        _rescale(ds, "RescaleSlope", 1)
        _rescale(ds, "RescaleIntercept", 0)
    return pixels, inflated + raw, ds


def dicom_to_rgb(data: bytes, window: Window, budget: DecodeBudget | None = None) -> np.ndarray:
    # pydicom warns about odd header values and would quote them; none of that may reach a log.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _dicom_probe(data, budget or DecodeBudget())  # sizes and syntax, before the pixel data
        ds = _read_dataset(data, stop_before_pixels=False)
        if "PixelData" not in ds:
            raise BadRequest("the DICOM file holds no image (no PixelData element)")
        frames = _int_attribute(ds, "NumberOfFrames", 1) or 1
        samples = _int_attribute(ds, "SamplesPerPixel", 1) or 1
        try:
            pixels = ds.pixel_array
        except ApiError:
            raise
        except Exception:  # the decoder is there (checked above): the data itself is bad
            raise BadRequest("the DICOM pixel data is corrupt, truncated or inconsistent with its header") from None

    if frames > 1:  # a multi-frame object: classify its middle frame
        if pixels.ndim < 3 or pixels.shape[0] != frames:
            raise BadRequest("the DICOM pixel data does not hold the frames its header declares")
        pixels = pixels[frames // 2]
    pixels = np.array(pixels, dtype=np.float64)  # a copy of our own: the steps below work in place
    if samples == 3 or pixels.ndim == 3:  # colour DICOM (pydicom converts YBR to RGB)
        unit = _stretch(pixels)
        unit *= 255
        return np.round(unit, out=unit).astype(np.uint8)
    if pixels.ndim != 2:
        raise BadRequest("the DICOM image is not a 2-D slice")
    if str(ds.get("Modality", "")).upper() == "CT":
        slope = _rescale(ds, "RescaleSlope", 1)
        intercept = _rescale(ds, "RescaleIntercept", 0)
        pixels *= slope  # in place: the same values as pixels * slope + intercept
        pixels += intercept
        unit = window.apply_in_place(pixels)
    else:  # not Hounsfield units: a HU window would be meaningless, so stretch to the full range
        unit = _stretch(pixels)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        unit = np.subtract(1.0, unit, out=unit)  # MONOCHROME1: high values are dark
    return _gray_to_rgb(unit)
