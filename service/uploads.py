"""Checks on uploaded images before they are stored: type by content, bytes, pixels.

PNG, JPEG, TIFF and DICOM (recognised by the ``DICM`` marker of a Part 10
file) are accepted; the type comes from the bytes, never from a file name.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import UploadFile

from krypton.models import ImageDecodeError, ImageTooLargeError, decode_image
from krypton.models.dicom import UnsupportedTransferSyntaxError, is_dicom, read_dicom
from krypton.models.images import image_size, reduced_png
from krypton.models.windows import WindowChoice
from krypton.render import dicom as dicom_render
from krypton.service import constants
from krypton.service.problems import InvalidInput, PayloadTooLarge, UnsupportedMediaType

__all__ = ["Upload", "check_image", "read_image"]

_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


CHECK_SIDE = 256
"""Side at which an upload is decoded to check it: every byte is read, few are kept."""


@dataclass(frozen=True)
class Upload:
    """An accepted image: its bytes, upright size, and for a large one a reduced copy."""

    data: bytes
    size: tuple[int, int]
    """``(height, width)`` of the upright image."""
    dicom: bool = False
    reduced: bytes | None = None
    dicom_unmade: str | None = None
    """For DICOM input whose results cannot be made as DICOM: why."""
    """PNG at most ``MAX_OVERLAY_SIDE`` on its longer side, when the image is larger."""

    @property
    def stored(self) -> list[bytes]:
        """What the job keeps: the image, then its reduced copy if it has one."""
        return [self.data] if self.reduced is None else [self.data, self.reduced]


async def read_image(upload: UploadFile, *, max_bytes: int, max_pixels: int,
                     frame: int | None = None, window: WindowChoice = None) -> Upload:
    """The accepted upload, or a 413/415/422 problem.

    The type comes from the first bytes, never from the file name or the
    client's Content-Type; the pixel count is read from the header before any
    pixel is decoded, so a decompression bomb costs nothing. The image is
    then decoded once to prove it whole, reduced on the way (JPEG at a lower
    scale, others in blocks), so the API never holds a float copy at full
    size. A large image keeps that reduced copy, so overlays never decode
    the original again: a grayscale DICOM one through the model's ``window``,
    as the model sees it.
    """
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the image is larger than the limit of {max_bytes} bytes")
    return await check_image(data, max_pixels=max_pixels, frame=frame, window=window)


async def check_image(data: bytes, *, max_pixels: int, frame: int | None = None,
                      window: WindowChoice = None) -> Upload:
    """The accepted image, however it came (an upload, a PACS), or a 415/413/422 problem;
    see :func:`read_image`."""
    if not data:
        raise InvalidInput("the image part is empty")
    dicom = is_dicom(data)
    if not dicom and not any(data.startswith(signature) for signature in _SIGNATURES):
        raise UnsupportedMediaType("the image must be a PNG, JPEG, TIFF or DICOM file (judged "
                                   "by its content, not its name)")
    try:
        # Off the event loop: a large photo takes a second to decode, and reading even
        # the header of a Deflated DICOM file means inflating it.
        size = await asyncio.to_thread(image_size, data, max_pixels=max_pixels)
        unmade = await asyncio.to_thread(_dicom_unmade, data) if dicom else None
        if max(size) <= constants.MAX_OVERLAY_SIDE:
            await asyncio.to_thread(decode_image, data, max_pixels=max_pixels,
                                    max_side=CHECK_SIDE, frame=frame)
            return Upload(data, size, dicom=dicom, dicom_unmade=unmade)
        reduced = await asyncio.to_thread(reduced_png, data, max_pixels=max_pixels,
                                          max_side=constants.MAX_OVERLAY_SIDE, frame=frame,
                                          window=window)
    except UnsupportedTransferSyntaxError as exc:
        raise UnsupportedMediaType(str(exc)) from exc
    except ImageTooLargeError as exc:
        raise PayloadTooLarge(str(exc)) from exc
    except ImageDecodeError as exc:
        raise InvalidInput(str(exc)) from exc
    return Upload(data, size, dicom=dicom, reduced=reduced, dicom_unmade=unmade)


def _dicom_unmade(data: bytes) -> str | None:
    return dicom_render.unmade_because(read_dicom(data, pixels=False))
