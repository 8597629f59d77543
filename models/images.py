"""Image files to pixels: PNG, JPEG and TIFF decoded to float RGB in ``[0, 1]``.

No torch here: the API process checks uploads with it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from krypton.models.budget import DECODING
from krypton.models.dicom import decode_dicom, dicom_header, is_dicom
from krypton.models.errors import ImageDecodeError, ImageTooLargeError, InvalidArgumentError
from krypton.models.windows import AppliedWindow, WindowChoice

__all__ = ["DEFAULT_MAX_PIXELS", "INFERENCE_SIDE", "SUPPORTED_FORMATS", "Decoded", "decode",
           "decode_image", "image_size", "reduced_png"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 50_000_000
"""Largest ``width * height`` decoded by default: ~600 MB as float32 RGB, far above any
classifier input, far below what would take a worker down."""

SUPPORTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "TIFF")
"""Pillow format names :func:`decode_image` opens; other decoders are never tried, which
keeps the attack surface for uploaded bytes small."""

# Modes Pillow converts to RGB without losing anything we keep (alpha is dropped).
_EIGHT_BIT_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK",
                    "YCbCr", "LAB", "HSV"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_TIFF_BITS_PER_SAMPLE = 258
_TIFF_SAMPLE_FORMAT = 339
_TIFF_SIGNED = 2
_REDUCIBLE = {"1": "L", "P": "RGBA", "I;16": "I", "I;16L": "I", "I;16B": "I", "I;16N": "I"}
"""Modes Pillow's ``reduce`` refuses, and the lossless mode to take them to first."""

INFERENCE_SIDE = 2048
"""Side an image is reduced to, at most, before it is made a model input: models see a
few hundred pixels, and a 50-megapixel photograph as float RGB would take 600 MB."""


_ORIENTATION = 0x0112
_TURNED = {5, 6, 7, 8}
"""EXIF orientations that turn the picture a quarter: its upright width is its height."""
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>")


def image_size(data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(height, width)`` of the upright image, read from its header alone.

    Raises:
        ImageTooLargeError: more pixels than ``max_pixels`` (or Pillow's bomb limit).
        ImageDecodeError: not a readable PNG, JPEG, TIFF or DICOM header.
    """
    if is_dicom(data):
        dicom = dicom_header(data, max_pixels=max_pixels)
        return dicom.rows, dicom.columns
    try:
        with Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS) as header:
            width, height = header.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLargeError(
                    f"the image is {width}x{height} = {width * height} pixels, more than the "
                    f"limit of {max_pixels}")
            turned = _orientation(header) in _TURNED
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow would not even open it
        bound = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        limit = (f"more than the limit of {max_pixels}"
                 if max_pixels is not None and max_pixels < bound
                 else "too many to decode safely")
        raise ImageTooLargeError(f"the image has over {bound} pixels, {limit}") from exc
    except Exception as exc:
        raise ImageDecodeError(f"the image cannot be read: {_reason(exc)}") from exc
    return (width, height) if turned else (height, width)


def _orientation(header: Image.Image) -> int | None:
    """The EXIF orientation, where the header carries one (reading it must not decode)."""
    try:
        value = header.getexif().get(_ORIENTATION)
    except Exception:  # a PNG may keep its EXIF after the pixels: unknown, so upright
        return None
    return value if isinstance(value, int) else None


@dataclass(frozen=True)
class Decoded:
    """Pixels, and for a grayscale DICOM frame the window that made them."""

    pixels: npt.NDArray[np.float32]
    window: AppliedWindow | None = None


def decode_image(
    data: bytes | str | os.PathLike[str],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
    frame: int | None = None,
    window: WindowChoice = None,
) -> npt.NDArray[np.float32]:
    """The pixels of :func:`decode`."""
    return decode(data, max_pixels=max_pixels, max_side=max_side, frame=frame,
                  window=window).pixels


def decode(
    data: bytes | str | os.PathLike[str],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
    frame: int | None = None,
    window: WindowChoice = None,
) -> Decoded:
    """Decode an uploaded or on-disk image to float RGB in ``[0, 1]``.

    Every bit depth is scaled by its own full range, so a 16-bit medical image
    keeps its contrast instead of being clipped to 8 bits; grayscale is
    replicated so every model sees three channels; EXIF orientation is applied
    because cameras store portrait photos sideways.

    Args:
        data: Encoded bytes (an upload) or a path to a PNG, JPEG or TIFF file.
        max_pixels: Refuse images with more than this many pixels, checked from
            the header before any pixel data is decoded; ``None`` leaves only
            Pillow's own decompression-bomb limit.
        max_side: Reduce a larger image (by a whole factor, averaging blocks of
            pixels) until its longer side is at most this, before it becomes
            floats: JPEG decodes at the reduced scale directly, others reduce
            the 8- or 16-bit image. ``None`` keeps the full size.
        frame: Which frame of a multi-frame DICOM file (1-based); DICOM data
            is recognised by its content (:mod:`krypton.models.dicom`).
        window: How a grayscale DICOM frame's values map to ``[0, 1]``
            (:mod:`krypton.models.windows`); other images have no window.

    Returns:
        ``(H, W, 3)`` float32 array in ``[0, 1]``, and the window used.

    Raises:
        ImageDecodeError: The data is not a readable PNG/JPEG/TIFF, is
            truncated, has an unsupported pixel format, or is too large.
        InvalidArgumentError: ``max_pixels`` is not a positive integer or None.
    """
    if isinstance(data, str | os.PathLike) and is_dicom(_head(data)):
        data = _read_file(data)
    if isinstance(data, bytes | bytearray | memoryview) and is_dicom(bytes(data[:132])):
        pixels, applied = decode_dicom(bytes(data), frame=frame, max_pixels=max_pixels,
                                       max_side=max_side, window=window)
        return Decoded(pixels, applied)
    if frame not in (None, 1):
        raise ImageDecodeError(f"frame {frame} was asked for, but only DICOM files have frames")
    with _upright(data, max_pixels, max_side) as (image, tiff_tags, source):
        array = _to_float_rgb(image, tiff_tags, source)
    logger.debug("decoded %s: %dx%d", source, array.shape[1], array.shape[0])
    return Decoded(array)


def reduced_png(data: bytes, *, max_side: int, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                frame: int | None = None, window: WindowChoice = None) -> bytes:
    """The image reduced as :func:`decode_image` reduces it, as an 8-bit RGB PNG.

    8-bit PNG, JPEG and TIFF images go straight from Pillow's buffer to the
    PNG, with no float copy; deeper ones and DICOM are scaled to 8 bits on
    the way.

    Raises:
        ImageDecodeError: as :func:`decode_image`.
    """
    if is_dicom(data):
        rgb = Image.fromarray(decode_dicom(data, frame=frame, max_pixels=max_pixels,
                                           max_side=max_side, eight_bit=True,
                                           window=window)[0])
    else:
        with _upright(data, max_pixels, max_side) as (image, tiff_tags, source):
            if image.mode in _EIGHT_BIT_MODES:
                rgb = image.convert("RGB")
            else:
                pixels = _to_float_rgb(image, tiff_tags, source)
                rgb = Image.fromarray((pixels * 255.0).round().astype(np.uint8))
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return buffer.getvalue()


@contextlib.contextmanager
def _upright(data: bytes | str | os.PathLike[str], max_pixels: int | None,
             max_side: int | None) -> Iterator[tuple[Image.Image, tuple[int | None, bool], str]]:
    """The decoded image, reduced to ``max_side`` and turned upright, its TIFF sample
    tags, and a name for it in messages; every decoder failure as ImageDecodeError."""
    if max_pixels is not None and (
            isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise InvalidArgumentError(
            f"max_pixels must be a positive integer or None, got {max_pixels!r}"
        )
    if isinstance(data, bytes | bytearray | memoryview):
        source = "image bytes"
        stream: io.BytesIO | str | os.PathLike[str] = io.BytesIO(data)
    else:
        source = f"image file {os.fspath(data)!r}"
        stream = data
    try:
        with Image.open(stream, formats=SUPPORTED_FORMATS) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLargeError(
                    f"{source} is {width}x{height} = {width * height} pixels, more than the "
                    f"limit of {max_pixels}"
                )
            if max_side is not None:
                image.draft(image.mode, (max_side, max_side))  # JPEG: decode smaller
            with DECODING.reserve(_decode_cost(image, max_side),
                                  f"{source} ({width}x{height} {image.format})"):
                image.load()
                # Read before exif_transpose, whose copy no longer carries the TIFF tags.
                tiff_tags = _tiff_sample_tags(image)
                reduced = _reduce(image, max_side)
                upright = ImageOps.exif_transpose(reduced)
                yield (upright if upright is not None else reduced), tiff_tags, source
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{source} is too large to decode safely: {_reason(exc)}"
                                 ) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"{source} is not a {', '.join(SUPPORTED_FORMATS)} image"
        ) from exc
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"{source} does not exist") from exc
    except Exception as exc:
        # Pillow's decoders raise a zoo of types on hostile or truncated input
        # (OSError, SyntaxError, struct.error, zlib.error, IndexError, ...).
        raise ImageDecodeError(f"cannot decode {source}: {_reason(exc)}") from exc


def _decode_cost(image: Image.Image, max_side: int | None) -> int:
    """Estimated peak bytes of decoding ``image`` (opened, not loaded) and reducing it:
    Pillow's buffer (4 bytes a pixel for every mode but the 8- and 16-bit single-band
    ones), the copy a mode ``reduce`` refuses is converted to, and the reduced copies and
    float output (16 bytes a reduced pixel, measured)."""
    width, height = image.size
    per_pixel = 1 if image.mode in ("1", "L", "P") else 2 if image.mode.startswith("I;16") else 4
    decoded = width * height * per_pixel
    factor = 1 if max_side is None else max(1, math.ceil(max(width, height) / max_side))
    if factor > 1 and image.mode in _REDUCIBLE:
        decoded += width * height * 4
    return decoded + (width // factor + 1) * (height // factor + 1) * 16


def _head(path: str | os.PathLike[str]) -> bytes:
    """The first bytes of a file, enough to recognise DICOM; empty if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)
    except OSError:
        return b""


def _read_file(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"image file {os.fspath(path)!r} does not exist") from exc
    except OSError as exc:
        raise ImageDecodeError(f"cannot read image file {os.fspath(path)!r}: {exc}") from exc


def _reason(exc: BaseException) -> str:
    """What a decoder said, without the internal objects Pillow names in its messages."""
    if isinstance(exc, UnidentifiedImageError):
        return f"not a {', '.join(SUPPORTED_FORMATS)} image Pillow can identify"
    text = _OBJECT_REPR.sub("the data", str(exc)).strip() or type(exc).__name__
    return text.splitlines()[0]


def _reduce(image: Image.Image, max_side: int | None) -> Image.Image:
    """``image``, or a copy reduced by a whole factor so its longer side fits ``max_side``."""
    longest = max(image.size)
    if max_side is None or longest <= max_side:
        return image
    if image.mode in _REDUCIBLE:
        image = image.convert(_REDUCIBLE[image.mode])
    return image.reduce(math.ceil(longest / max_side))


def _to_float_rgb(
    image: Image.Image, tiff_tags: tuple[int | None, bool], source: str
) -> npt.NDArray[np.float32]:
    """Scale whatever Pillow decoded by its true range and make it three channels."""
    mode = image.mode
    if mode in _EIGHT_BIT_MODES:
        gray = mode in {"1", "L", "LA", "La"}
        array = np.asarray(image.convert("L" if gray else "RGB"), dtype=np.float32) / 255.0
    elif mode in _SIXTEEN_BIT_MODES:
        array = np.asarray(image).astype(np.float32) / 65535.0
    elif mode == "I":
        array = _scale_int32(np.asarray(image), tiff_tags, source)
    elif mode == "F":
        array = np.asarray(image, dtype=np.float32)
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise ImageDecodeError(
                f"{source} holds floating-point pixels outside [0, 1]; their range is unknown"
            )
    else:
        raise ImageDecodeError(f"{source} has unsupported pixel mode {mode!r}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array, dtype=np.float32)


def _tiff_sample_tags(image: Image.Image) -> tuple[int | None, bool]:
    """Declared bits per sample and signedness; ``(None, False)`` for non-TIFF images."""
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return None, False
    bits = _first(tags.get(_TIFF_BITS_PER_SAMPLE))
    signed = _first(tags.get(_TIFF_SAMPLE_FORMAT)) == _TIFF_SIGNED
    return (bits if isinstance(bits, int) and bits > 0 else None), signed


def _scale_int32(
    array: npt.NDArray[np.integer], tiff_tags: tuple[int | None, bool], source: str
) -> npt.NDArray[np.float32]:
    """Scale Pillow's 32-bit integer mode by the bit depth the file declares.

    Mode ``"I"`` holds 16-bit or 32-bit samples, signed or not; TIFF says which
    in its tags. Without tags, values that fit in 16 bits are taken as 16-bit.
    """
    if array.size and array.min() < 0:
        raise ImageDecodeError(
            f"{source} holds negative pixel values; signed images are not supported"
        )
    bits, signed = tiff_tags
    if bits is None:
        bits = 16 if (not array.size or array.max() <= 0xFFFF) else 32
    full_scale = float(2 ** (bits - 1) - 1 if signed else 2**bits - 1)
    return np.clip(array.astype(np.float64) / full_scale, 0.0, 1.0).astype(np.float32)


def _first(value: object) -> object:
    """TIFF tags come back as a scalar or a per-sample tuple; the first sample decides."""
    if isinstance(value, tuple):
        return value[0] if value else None
    return value
