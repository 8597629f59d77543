"""DICOM files to pixels: what a radiology or ophthalmology system sends, read with pydicom.

The pixels go through the standard's own display pipeline before a model
sees them: the Modality LUT (Rescale Slope and Intercept), then a window
(:mod:`krypton.models.windows`: the model's own, else the file's, else the
image's range), and MONOCHROME1 is inverted; RGB, YBR (turned to RGB by
pydicom) and palette colour give colour. A multi-frame file needs
the ``frame`` to explain (1-based, as DICOM numbers frames).

Compressed transfer syntaxes decode where an installed pydicom plugin does
(pylibjpeg with its JPEG, JPEG-LS and JPEG 2000 plugins; RLE built in); any
other is refused naming the transfer syntax, and data an installed decoder
cannot read is refused as corrupt. Nothing here logs a tag: a DICOM file
carries the patient's name and more.

Memory: a large frame is reduced as it is decoded. JPEG baseline and
unsigned JPEG 2000 decode at a lower resolution directly (Pillow's DCT
scaling and JPEG 2000 resolution levels); other frames decode in their
stored integer type and go through the display pipeline band by band, so no
full-size float copy exists. Every decode reserves its estimated peak from
the process's :data:`~krypton.models.budget.DECODING` budget first.
"""

from __future__ import annotations

import contextlib
import io
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.filereader import read_dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from krypton.models.budget import DECODING
from krypton.models.errors import ImageDecodeError, ImageTooLargeError
from krypton.models.windows import AppliedWindow, WindowChoice, grayscale_display

__all__ = [
    "DicomHeader",
    "UnsupportedTransferSyntaxError",
    "decode_cost",
    "decode_dicom",
    "dicom_header",
    "inflated_size",
    "is_dicom",
    "read_dicom",
]

_MAGIC_AT, _MAGIC = 128, b"DICM"
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
_REDUCED_BY_PILLOW = {JPEGBaseline8Bit: ("MONOCHROME2", "YBR_FULL", "YBR_FULL_422"),
                      JPEG2000Lossless: (*_MONOCHROME, "RGB", "YBR_ICT", "YBR_RCT"),
                      JPEG2000: (*_MONOCHROME, "RGB", "YBR_ICT", "YBR_RCT")}
"""Transfer syntaxes Pillow decodes at reduced resolution, for the photometric
interpretations it reads as pydicom does (it shifts signed JPEG 2000, and takes a
3-component JPEG for YCbCr whatever the file says)."""
_PEAK_PER_FRAME_BYTE = {RLELossless: 2.1}
"""Peak memory of a full-frame decode per byte of the decoded frame, measured: pydicom's
RLE decoder builds the frame twice; JPEG-LS, JPEG 2000 and lossless JPEG take up to 6.2
times, and pydicom's JPEG baseline up to 12."""
_PEAK_NATIVE, _PEAK_COMPRESSED, _PEAK_JPEG = 2.0, 7.0, 12.0
_INFLATE_CHUNK = 4 * 1024**2
"""A Deflated dataset is counted inflated this many bytes at a time."""
_BAND_BYTES = 8 * 1024**2
"""Rows are put through the display pipeline in bands of about this many float bytes."""


class UnsupportedTransferSyntaxError(ImageDecodeError):
    """A DICOM file compressed in a way no installed decoder reads."""


@dataclass(frozen=True)
class DicomHeader:
    """What a DICOM file's header says of its pixels, read without decoding them."""

    rows: int
    columns: int
    frames: int
    transfer_syntax: str
    samples: int = 1
    bits_allocated: int = 8
    signed: bool = False
    photometric: str = ""
    uid: str = ""

    @property
    def frame_bytes(self) -> int:
        """Bytes of one decoded frame in its stored type."""
        return self.rows * self.columns * self.samples * max(1, math.ceil(
            self.bits_allocated / 8))


def is_dicom(data: bytes) -> bool:
    """Whether ``data`` is a DICOM file (Part 10: a 128-byte preamble, then ``DICM``)."""
    return data[_MAGIC_AT : _MAGIC_AT + len(_MAGIC)] == _MAGIC


def read_dicom(data: bytes, *, pixels: bool = True) -> Dataset:
    """The dataset, or ImageDecodeError naming what is wrong (never a tag's value).

    A file in the Deflated transfer syntax is counted inflated first, without
    keeping it, and read within the decoding budget: a few megabytes of zeros
    deflated would otherwise be gigabytes to the reader, which inflates it whole.

    Raises:
        ImageTooLargeError: a Deflated file that inflates past the decoding budget.
        ImageDecodeError: anything else that makes it unreadable.
    """
    return _read(data, pixels, inflated_size(data))


def _read(data: bytes, pixels: bool, inflated: int) -> Dataset:
    """The dataset; a Deflated one (``inflated`` bytes) read within the decoding budget."""
    reserved = (DECODING.reserve(inflated + len(data), "a Deflated DICOM file") if inflated
                else contextlib.nullcontext())
    with reserved:
        try:
            return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels)
        except Exception as exc:
            raise ImageDecodeError(
                f"the DICOM file cannot be read: {type(exc).__name__}") from exc


def inflated_size(data: bytes) -> int:
    """Bytes of a Deflated file's dataset once inflated (0 for other transfer syntaxes),
    counted a chunk at a time and given up past the decoding budget.

    Raises:
        ImageTooLargeError: it inflates past :data:`~krypton.models.budget.DECODING`'s
            capacity.
        ImageDecodeError: the deflated stream is corrupt.
    """
    meta_end = _meta_end(data)
    if meta_end is None or _meta_transfer_syntax(data[_MAGIC_AT + 4 : meta_end]) != (
            DeflatedExplicitVRLittleEndian):
        return 0
    limit = DECODING.capacity
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending, size = data[meta_end:], 0
    try:
        while pending and not inflater.eof:  # bytes after the stream's end are padding
            inflated = len(inflater.decompress(pending, _INFLATE_CHUNK))
            size += inflated
            if not inflated and len(inflater.unconsumed_tail) >= len(pending):
                break  # no progress: nothing more comes of what is left
            pending = inflater.unconsumed_tail
            if size > limit:
                raise ImageTooLargeError(
                    f"the Deflated DICOM file inflates to more than {limit // 2**20} MiB, "
                    "more than this service decodes at once; send its pixel data "
                    "compressed (JPEG 2000, JPEG-LS, RLE) instead")
        size += len(inflater.flush())
    except zlib.error as exc:
        raise ImageDecodeError("the DICOM file's deflated data is corrupt") from exc
    return size


def _meta_end(data: bytes) -> int | None:
    """Where the file meta group ends (its group length opens it), if it says."""
    start = _MAGIC_AT + 4
    if len(data) < start + 12 or data[start : start + 4] != b"\x02\x00\x00\x00":
        return None
    return start + 12 + int.from_bytes(data[start + 8 : start + 12], "little")


def _meta_transfer_syntax(meta: bytes) -> str | None:
    try:
        group = read_dataset(io.BytesIO(meta), is_implicit_VR=False, is_little_endian=True)
        return str(group.get("TransferSyntaxUID", "")) or None
    except Exception:
        return None  # dcmread names what is wrong with it


def dicom_header(data: bytes, *, max_pixels: int | None) -> DicomHeader:
    """Rows, columns, frames and transfer syntax, with the pixel limit checked.

    Raises:
        ImageTooLargeError: a frame has more than ``max_pixels`` pixels.
        ImageDecodeError: not a readable DICOM image.
    """
    return _header_of(read_dicom(data, pixels=False), max_pixels=max_pixels)


def _header_of(dataset: Dataset, *, max_pixels: int | None) -> DicomHeader:
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames") or 1)
        samples = int(dataset.get("SamplesPerPixel") or 1)
        bits = int(dataset.get("BitsAllocated") or 8)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageDecodeError("the DICOM file holds no image (no Rows and Columns)") from exc
    if max_pixels is not None and rows * columns > max_pixels:
        raise ImageTooLargeError(f"the DICOM image is {columns}x{rows} = {rows * columns} "
                                 f"pixels, more than the limit of {max_pixels}")
    meta = getattr(dataset, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return DicomHeader(rows, columns, frames, _transfer_syntax(dataset), samples=samples,
                       bits_allocated=bits,
                       signed=int(dataset.get("PixelRepresentation") or 0) == 1,
                       photometric=str(dataset.get("PhotometricInterpretation", "")),
                       uid=str(uid or ""))


def decode_cost(header: DicomHeader, max_side: int | None) -> int:
    """Estimated peak bytes of decoding one frame reduced to ``max_side``."""
    factor = _factor(header, max_side)
    out_rows, out_columns = -(-header.rows // factor), -(-header.columns // factor)
    output = out_rows * out_columns * 4 * 4  # float RGB, and a gray plane before it
    if _pillow_reduces(header, factor):
        return 2 * header.frame_bytes // factor + output
    uid = UID(header.uid)
    peak = (_PEAK_NATIVE if not uid.is_compressed else _PEAK_JPEG if uid == JPEGBaseline8Bit
            else _PEAK_PER_FRAME_BYTE.get(uid, _PEAK_COMPRESSED))
    return int(peak * header.frame_bytes) + output


def decode_dicom(data: bytes, *, frame: int | None = None, max_pixels: int | None = None,
                 max_side: int | None = None, eight_bit: bool = False,
                 window: WindowChoice = None) -> tuple[npt.NDArray[Any], AppliedWindow | None]:
    """The image (``frame`` of a multi-frame one) as float RGB in ``[0, 1]``, ``(H, W, 3)``,
    and for a grayscale one the window that mapped it (``window`` chooses it).

    A frame whose longer side passes ``max_side`` is reduced by a whole
    factor (averaging blocks of pixels) on the way, never held as full-size
    floats. ``eight_bit`` gives it as ``uint8`` instead, converted within the
    decode's memory reservation.

    Raises:
        UnsupportedTransferSyntaxError: no installed decoder reads its compression.
        ImageTooLargeError: more than ``max_pixels`` pixels, or more memory to
            decode than the process's decoding budget.
        ImageDecodeError: no frame given for a multi-frame file, a frame it does
            not have, or pixels that cannot be read.
    """
    inflated = inflated_size(data)
    dataset = _read(data, True, inflated)
    header = _header_of(dataset, max_pixels=max_pixels)
    index = _frame_index(frame, header.frames)
    # A Deflated file's dataset is held inflated while its frame decodes.
    with DECODING.reserve(decode_cost(header, max_side) + inflated, _what(header)):
        pixels, applied = _display(dataset, header, index, max_side, window)
        if not eight_bit:
            return pixels, applied
        np.multiply(pixels, 255.0, out=pixels)
        return np.round(pixels, out=pixels).astype(np.uint8), applied


def _display(dataset: Dataset, header: DicomHeader, index: int | None, max_side: int | None,
             window: WindowChoice) -> tuple[npt.NDArray[np.float32], AppliedWindow | None]:
    """The frame through the display pipeline, reduced to ``max_side``, as float RGB."""
    stored, photometric = _stored_frame(dataset, header, index, max_side)
    longest = max(stored.shape[:2])
    factor = 1 if max_side is None or longest <= max_side else math.ceil(longest / max_side)
    if photometric in _MONOCHROME:
        try:
            display, applied = grayscale_display(dataset, stored, photometric, window)
            gray = _reduced(stored, factor, display)
        except (TypeError, ValueError) as exc:  # text where the pipeline needs numbers
            raise ImageDecodeError(
                "the DICOM file's display attributes (Rescale Slope and Intercept, Window "
                "Center and Width, Modality or VOI LUT) are not numbers it can apply") from exc
        return np.repeat(gray[..., None], 3, axis=2), applied
    if photometric == "PALETTE COLOR":
        return _reduced(stored, factor, lambda band: _palette(band, dataset)), None
    if photometric in _COLOUR:
        full = float(2 ** int(dataset.BitsStored) - 1)
        return _reduced(stored, factor, lambda band: np.clip(
            np.asarray(band, dtype=np.float32) / full, 0.0, 1.0)), None
    raise ImageDecodeError(f"DICOM photometric interpretation {photometric!r} is not supported")


def _what(header: DicomHeader) -> str:
    return (f"a {header.columns}x{header.rows} DICOM frame in {header.transfer_syntax} "
            "(send it uncompressed, or as JPEG or JPEG 2000, which decode at reduced size)")


def _factor(header: DicomHeader, max_side: int | None) -> int:
    longest = max(header.rows, header.columns)
    return 1 if max_side is None or longest <= max_side else math.ceil(longest / max_side)


def _pillow_reduces(header: DicomHeader, factor: int) -> bool:
    """Whether Pillow decodes this frame at reduced resolution (only worth it reduced)."""
    accepted = _REDUCED_BY_PILLOW.get(UID(header.uid), ())
    return factor >= 2 and header.photometric in accepted and not header.signed


def _stored_frame(dataset: Dataset, header: DicomHeader, index: int | None,
                  max_side: int | None) -> tuple[npt.NDArray[np.generic], str]:
    """The frame's stored values (already smaller where Pillow reduced it), and the
    photometric interpretation they are in now (pydicom and Pillow turn YBR into RGB)."""
    factor = _factor(header, max_side)
    try:
        if _pillow_reduces(header, factor):
            return _pillow_frame(dataset, header, index, factor)
        stored = pixel_array(dataset, index=index)
    except (NotImplementedError, RuntimeError, ValueError, OSError, SyntaxError,
            AttributeError) as exc:  # AttributeError: pydicom's "missing required element"
        raise _undecodable(header) from exc
    photometric = header.photometric
    if photometric.startswith("YBR"):
        photometric = "RGB"  # pydicom converts YBR to RGB by default
    return np.asarray(stored), photometric


def _pillow_frame(dataset: Dataset, header: DicomHeader, index: int | None,
                  factor: int) -> tuple[npt.NDArray[np.generic], str]:
    frame = get_frame(dataset.PixelData, index or 0, number_of_frames=header.frames)
    with Image.open(io.BytesIO(frame)) as image:
        if image.format == "JPEG":
            image.draft(image.mode, (-(-header.columns // factor), -(-header.rows // factor)))
        else:  # JPEG 2000: drop whole resolution levels, each halving the sides
            image.reduce = min(int(math.log2(factor)), 5)  # type: ignore[method-assign, assignment]
        image.load()
        stored = np.asarray(image)
    return stored, "RGB" if stored.ndim == 3 else header.photometric


def _undecodable(header: DicomHeader) -> ImageDecodeError:
    uid = UID(header.uid)
    if uid.is_compressed and not _decodable(uid):
        return UnsupportedTransferSyntaxError(
            f"DICOM transfer syntax {header.transfer_syntax} cannot be decoded by this "
            "service's decoders; send the image uncompressed, or as JPEG baseline, "
            "JPEG-LS, JPEG 2000 or RLE")
    if uid.is_compressed:
        return ImageDecodeError(f"the DICOM pixel data ({header.transfer_syntax}) is corrupt: "
                                "its decoder cannot read it")
    return ImageDecodeError("the DICOM pixel data cannot be read: it does not match the "
                            "size its header gives")


def _decodable(uid: UID) -> bool:
    """Whether an installed plugin decodes this transfer syntax."""
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:  # pydicom knows no decoder for it at all
        return False


def _reduced(stored: npt.NDArray[np.generic], factor: int,
             transform: Callable[[npt.NDArray[np.generic]], npt.NDArray[np.floating]]
             ) -> npt.NDArray[np.float32]:
    """``transform`` of the stored values, averaged in ``factor``-square blocks, band by
    band: only a band of rows is ever held as floats.

    Edges are padded with their last row and column, as Pillow's ``reduce`` does.
    """
    rows, columns = stored.shape[:2]
    out_rows, out_columns = -(-rows // factor), -(-columns // factor)
    samples = stored.shape[2] if stored.ndim == 3 else 3  # a palette turns one into three
    band_rows = max(1, _BAND_BYTES // max(1, columns * 8 * samples * factor)) * factor
    out: npt.NDArray[np.float32] | None = None
    for top in range(0, rows, band_rows):
        band = np.asarray(transform(stored[top : top + band_rows]))
        channels = band.shape[2:]
        if out is None:
            out = np.empty((out_rows, out_columns, *channels), dtype=np.float32)
        height = band.shape[0]
        padded_rows, padded_columns = -(-height // factor) * factor, out_columns * factor
        if (padded_rows, padded_columns) != band.shape[:2]:
            pad = [(0, padded_rows - height), (0, padded_columns - columns)]
            band = np.pad(band, pad + [(0, 0)] * len(channels), mode="edge")
        blocks = band.reshape(padded_rows // factor, factor, out_columns, factor, *channels)
        out[top // factor : top // factor + padded_rows // factor] = blocks.mean(
            axis=(1, 3), dtype=np.float32) if factor > 1 else band
    assert out is not None
    return out


def _frame_index(frame: int | None, frames: int) -> int | None:
    """pydicom's 0-based frame index for a 1-based ``frame``, checked against ``frames``."""
    if frames == 1:
        if frame not in (None, 1):
            raise ImageDecodeError(f"the DICOM image has one frame; frame {frame} does not exist")
        return None
    if frame is None:
        raise ImageDecodeError(f"the DICOM file holds {frames} frames; say which to explain "
                               f"with frame=1..{frames}")
    if not 1 <= frame <= frames:
        raise ImageDecodeError(f"the DICOM file holds {frames} frames; frame {frame} is not "
                               "one of them")
    return frame - 1


def _palette(band: npt.NDArray[np.generic], dataset: Dataset) -> npt.NDArray[np.float32]:
    colour = np.asarray(apply_color_lut(band, dataset))
    scaled: npt.NDArray[np.float32] = (colour / float(np.iinfo(colour.dtype).max)
                                       ).astype(np.float32)
    return scaled


def _transfer_syntax(dataset: Dataset) -> str:
    meta = getattr(dataset, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return f"{uid.name} ({uid})" if uid is not None else "unknown"
