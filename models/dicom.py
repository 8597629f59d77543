"""DICOM files to pixels: what a radiology or ophthalmology system sends, read with pydicom.

The pixels go through the standard's own display pipeline before a model
sees them: the Modality LUT (Rescale Slope and Intercept), then the first
VOI LUT or window (Window Center and Width) when the file has one, else the
full range of values the stored bits can hold, so that an 8-bit image reads
as a PNG of the same pixels would. MONOCHROME1 is inverted; RGB, YBR (turned
to RGB by pydicom) and palette colour give colour. A multi-frame file needs
the ``frame`` to explain (1-based, as DICOM numbers frames).

Compressed transfer syntaxes decode where an installed pydicom plugin does
(pylibjpeg with its JPEG, JPEG-LS and JPEG 2000 plugins; RLE built in); any
other is refused naming the transfer syntax. Nothing here logs a tag: a
DICOM file carries the patient's name and more.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array

from krypton.models.errors import ImageDecodeError, ImageTooLargeError

__all__ = [
    "DicomHeader",
    "UnsupportedTransferSyntaxError",
    "decode_dicom",
    "dicom_header",
    "is_dicom",
    "read_dicom",
]

_MAGIC_AT, _MAGIC = 128, b"DICM"
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")


class UnsupportedTransferSyntaxError(ImageDecodeError):
    """A DICOM file compressed in a way no installed decoder reads."""


@dataclass(frozen=True)
class DicomHeader:
    """What a DICOM file's header says of its pixels, read without decoding them."""

    rows: int
    columns: int
    frames: int
    transfer_syntax: str


def is_dicom(data: bytes) -> bool:
    """Whether ``data`` is a DICOM file (Part 10: a 128-byte preamble, then ``DICM``)."""
    return data[_MAGIC_AT : _MAGIC_AT + len(_MAGIC)] == _MAGIC


def read_dicom(data: bytes, *, pixels: bool = True) -> Dataset:
    """The dataset, or ImageDecodeError naming what is wrong (never a tag's value)."""
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels)
    except Exception as exc:
        raise ImageDecodeError(f"the DICOM file cannot be read: {type(exc).__name__}") from exc


def dicom_header(data: bytes, *, max_pixels: int | None) -> DicomHeader:
    """Rows, columns, frames and transfer syntax, with the pixel limit checked.

    Raises:
        ImageTooLargeError: a frame has more than ``max_pixels`` pixels.
        ImageDecodeError: not a readable DICOM image.
    """
    dataset = read_dicom(data, pixels=False)
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames") or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageDecodeError("the DICOM file holds no image (no Rows and Columns)") from exc
    if max_pixels is not None and rows * columns > max_pixels:
        raise ImageTooLargeError(f"the DICOM image is {columns}x{rows} = {rows * columns} "
                                 f"pixels, more than the limit of {max_pixels}")
    return DicomHeader(rows, columns, frames, _transfer_syntax(dataset))


def decode_dicom(data: bytes, *, frame: int | None = None,
                 max_pixels: int | None = None) -> npt.NDArray[np.float32]:
    """The image (``frame`` of a multi-frame one) as float RGB in ``[0, 1]``, ``(H, W, 3)``.

    Raises:
        UnsupportedTransferSyntaxError: no installed decoder reads its compression.
        ImageTooLargeError: more than ``max_pixels`` pixels.
        ImageDecodeError: no frame given for a multi-frame file, a frame it does
            not have, or pixels that cannot be read.
    """
    header = dicom_header(data, max_pixels=max_pixels)
    index = _frame_index(frame, header.frames)
    dataset = read_dicom(data)
    try:
        stored = pixel_array(dataset, index=index)
    except (NotImplementedError, RuntimeError, ValueError) as exc:
        if dataset.file_meta.TransferSyntaxUID.is_compressed:
            raise UnsupportedTransferSyntaxError(
                f"DICOM transfer syntax {header.transfer_syntax} cannot be decoded by this "
                "service's decoders; send the image uncompressed, or as JPEG baseline, "
                "JPEG-LS, JPEG 2000 or RLE") from exc
        raise ImageDecodeError(f"the DICOM pixel data cannot be read: {exc}") from exc
    photometric = str(dataset.get("PhotometricInterpretation", ""))
    if photometric in _MONOCHROME:
        gray = _display_values(np.asarray(stored), dataset)
        if photometric == "MONOCHROME1":
            gray = 1.0 - gray
        return np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    if photometric == "PALETTE COLOR":
        colour = np.asarray(apply_color_lut(stored, dataset))
        scaled: npt.NDArray[np.float32] = (colour / float(np.iinfo(colour.dtype).max)
                                           ).astype(np.float32)
        return scaled
    if photometric in _COLOUR:
        full = float(2 ** int(dataset.BitsStored) - 1)
        rgb: npt.NDArray[np.float32] = np.clip(
            np.asarray(stored, dtype=np.float32) / full, 0.0, 1.0)
        return rgb
    raise ImageDecodeError(f"DICOM photometric interpretation {photometric!r} is not supported")


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


def _display_values(stored: npt.NDArray[np.generic], dataset: Dataset
                    ) -> npt.NDArray[np.float32]:
    """Grayscale through the Modality and VOI LUTs, scaled to ``[0, 1]`` by their range."""
    values = apply_modality_lut(stored, dataset)
    lowest, highest = _stored_range(dataset)
    span = apply_modality_lut(np.linspace(lowest, highest, 4096), dataset)
    if "WindowCenter" in dataset or "VOILUTSequence" in dataset:
        values = apply_voi_lut(values, dataset, index=0)
        span = apply_voi_lut(span, dataset, index=0)
    low, high = float(np.min(span)), float(np.max(span))
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    scaled: npt.NDArray[np.float32] = np.clip(
        (np.asarray(values, dtype=np.float64) - low) / (high - low), 0.0, 1.0
    ).astype(np.float32)
    return scaled


def _stored_range(dataset: Dataset) -> tuple[int, int]:
    """The smallest and largest value the stored bits can hold."""
    bits = int(dataset.BitsStored)
    if int(dataset.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _transfer_syntax(dataset: Dataset) -> str:
    meta = getattr(dataset, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return f"{uid.name} ({uid})" if uid is not None else "unknown"
