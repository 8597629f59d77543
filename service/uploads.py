"""Checks on uploaded images before they are stored: type by content, bytes, pixels."""

from __future__ import annotations

import asyncio
import io

from fastapi import UploadFile
from PIL import Image

from krypton.models import ImageDecodeError, decode_image
from krypton.service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

__all__ = ["read_image"]

_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


CHECK_SIDE = 256
"""Side at which an upload is decoded to check it: every byte is read, few are kept."""


async def read_image(upload: UploadFile, *, max_bytes: int, max_pixels: int
                     ) -> tuple[bytes, tuple[int, int]]:
    """The upload's bytes and its ``(height, width)``, or a 413/415/422 problem.

    The type comes from the first bytes, never from the file name or the
    client's Content-Type; the pixel count is read from the header before any
    pixel is decoded, so a decompression bomb costs nothing. The image is
    then decoded once to prove it whole, reduced on the way (JPEG at a lower
    scale, others in blocks), so the API holds at most the 8-bit image, never
    its float copy: the worker decodes it again for the model.
    """
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the image is larger than the limit of {max_bytes} bytes")
    if not data:
        raise InvalidInput("the image part is empty")
    if not any(data.startswith(signature) for signature in _SIGNATURES):
        raise UnsupportedMediaType("the image must be a PNG, JPEG or TIFF file (judged by its "
                                   "content, not its name)")
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"the image has too many pixels to decode safely: {exc}") from exc
    except Exception as exc:
        raise InvalidInput(f"the image cannot be read: {exc}") from exc
    if width * height > max_pixels:
        raise PayloadTooLarge(f"the image is {width}x{height} = {width * height} pixels, more "
                              f"than the limit of {max_pixels}")
    try:
        # Off the event loop: a large photo takes a second to decode.
        await asyncio.to_thread(decode_image, data, max_pixels=max_pixels,
                                max_side=CHECK_SIDE)
    except ImageDecodeError as exc:
        raise InvalidInput(str(exc)) from exc
    return data, (height, width)
