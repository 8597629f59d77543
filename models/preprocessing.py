"""From image bytes to the normalised tensor a classifier expects, and back.

Pixel space is float ``[0, 1]`` RGB, ``(H, W, 3)``; model-input space is that
image resized to the model's square side and normalised per channel with the
dataset mean and std. Occlusion patch colours are chosen in pixel space (a
user thinks "gray") but the engine pastes them into model-input space, so
:func:`patch_value` converts between the two.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from krypton.models.errors import ImageDecodeError, InvalidArgumentError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SUPPORTED_FORMATS",
    "Preprocessing",
    "decode_image",
    "denormalize",
    "normalize",
    "patch_value",
    "to_model_input",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel mean of ImageNet in ``[0, 1]`` RGB, what torchvision models are trained with."""

IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of ImageNet in ``[0, 1]`` RGB."""

DEFAULT_MAX_PIXELS = 50_000_000
"""Largest ``width * height`` decoded by default: ~600 MB as float32 RGB, far above any
classifier input, far below what would take a worker down."""

SUPPORTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "TIFF")
"""Pillow format names :func:`decode_image` opens; other decoders are never tried, which
keeps the attack surface for uploaded bytes small."""

_NAMED_GRAYS = {"gray": 0.5, "grey": 0.5, "black": 0.0, "white": 1.0}
_RGB_STRING = re.compile(r"^\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*$")
# Modes Pillow converts to RGB without losing anything we keep (alpha is dropped).
_EIGHT_BIT_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK",
                    "YCbCr", "LAB", "HSV"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_TIFF_BITS_PER_SAMPLE = 258
_TIFF_SAMPLE_FORMAT = 339
_TIFF_SIGNED = 2


@dataclass(frozen=True)
class Preprocessing:
    """How one model wants its input: square side and normalisation statistics.

    Kept separate from the model so the same image can be prepared once per
    request and the colour of an occluding patch derived from the same numbers.

    Attributes:
        size: Side of the square input in pixels (224 for most torchvision models).
        mean: Per-channel mean subtracted in ``[0, 1]`` RGB.
        std: Per-channel standard deviation divided by.

    Raises:
        InvalidArgumentError: ``size`` is not a positive integer, or ``mean``/``std``
            are not three finite numbers (``std`` also positive).
    """

    size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not _is_int(self.size) or self.size < 1:
            raise InvalidArgumentError(f"size must be a positive integer, got {self.size!r}")
        mean = _three_floats(self.mean, "mean")
        std = _three_floats(self.std, "std")
        if min(std) <= 0:
            raise InvalidArgumentError(f"std must be positive, got {std}")
        # Normalise lists and numpy scalars so equal configurations compare and hash equal.
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)


def decode_image(
    data: bytes | str | os.PathLike[str],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> npt.NDArray[np.float32]:
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

    Returns:
        ``(H, W, 3)`` float32 array in ``[0, 1]``.

    Raises:
        ImageDecodeError: The data is not a readable PNG/JPEG/TIFF, is
            truncated, has an unsupported pixel format, or is too large.
        InvalidArgumentError: ``max_pixels`` is not a positive integer or None.
    """
    if max_pixels is not None and (not _is_int(max_pixels) or max_pixels < 1):
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
                raise ImageDecodeError(
                    f"{source} is {width}x{height} = {width * height} pixels, more than the "
                    f"limit of {max_pixels}"
                )
            image.load()
            # Read before exif_transpose, whose copy no longer carries the TIFF tags.
            tiff_tags = _tiff_sample_tags(image)
            upright = ImageOps.exif_transpose(image)
            array = _to_float_rgb(upright if upright is not None else image, tiff_tags, source)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"{source} is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"{source} is not a {', '.join(SUPPORTED_FORMATS)} image"
        ) from exc
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"{source} does not exist") from exc
    except Exception as exc:
        # Pillow's decoders raise a zoo of types on hostile or truncated input
        # (OSError, SyntaxError, struct.error, zlib.error, IndexError, ...).
        raise ImageDecodeError(f"cannot decode {source}: {exc}") from exc
    logger.debug("decoded %s: %dx%d", source, array.shape[1], array.shape[0])
    return array


def to_model_input(image: npt.NDArray[np.floating], preprocessing: Preprocessing) -> Tensor:
    """Resize and normalise a pixel-space image into what the model consumes.

    Resizing squashes to a square rather than cropping, so every pixel of the
    original can be occluded and mapped back onto the heatmap. Bilinear with
    antialiasing avoids the aliasing that would otherwise show up as heatmap
    noise when a large photo is shrunk.

    Args:
        image: ``(H, W, 3)`` RGB or ``(H, W)`` grayscale, floats in ``[0, 1]``
            (as :func:`decode_image` returns).
        preprocessing: Target size and normalisation.

    Returns:
        ``(3, size, size)`` float32 tensor.

    Raises:
        InvalidArgumentError: Wrong shape, integer dtype, or values outside ``[0, 1]``.
    """
    array = _pixel_array(image)
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).unsqueeze(0)
    size = preprocessing.size
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(
            tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return normalize(tensor[0], preprocessing).contiguous()


def normalize(pixels: Tensor, preprocessing: Preprocessing) -> Tensor:
    """Pixel-space ``[0, 1]`` RGB (``Tensor[..., 3, H, W]``, one image or a batch)
    to model-input space, with ``preprocessing``'s mean and std; no resizing."""
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=torch.float32).view(3, 1, 1)
    return (pixels - mean) / std


def patch_value(
    color: str | Sequence[float], preprocessing: Preprocessing
) -> tuple[float, float, float]:
    """The occluding patch colour in model-input (normalised) space.

    Users pick colours in pixel space, but the engine writes them into the
    normalised tensor; doing the conversion here keeps the engine ignorant of
    normalisation. ``"mean"`` is the dataset mean, i.e. zero after
    normalisation, the least informative colour for the model.

    Args:
        color: ``"gray"``/``"grey"`` (0.5), ``"black"``, ``"white"``, ``"mean"``,
            an ``"R,G,B"`` string of integers 0-255, or three floats in ``[0, 1]``.
        preprocessing: Whose mean and std to normalise with.

    Returns:
        One value per RGB channel.

    Raises:
        InvalidArgumentError: Unknown name, malformed or out-of-range values.
    """
    rgb = _parse_color(color, preprocessing)
    mean, std = preprocessing.mean, preprocessing.std
    return (
        (rgb[0] - mean[0]) / std[0],
        (rgb[1] - mean[1]) / std[1],
        (rgb[2] - mean[2]) / std[2],
    )


def denormalize(
    tensor: Tensor, preprocessing: Preprocessing | None = None
) -> npt.NDArray[np.float32]:
    """Undo :func:`to_model_input`'s normalisation, to draw a heatmap over what the model saw.

    Args:
        tensor: ``(3, H, W)`` or ``(1, 3, H, W)`` normalised image, any device.
        preprocessing: The statistics it was normalised with; ``None`` means ImageNet's.

    Returns:
        ``(H, W, 3)`` float32 array clipped to ``[0, 1]``.

    Raises:
        InvalidArgumentError: The tensor is not one 3-channel image.
    """
    stats = preprocessing if preprocessing is not None else Preprocessing(size=1)
    image = tensor.detach()
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] != 3:
        raise InvalidArgumentError(
            f"expected a (3, H, W) or (1, 3, H, W) tensor, got shape {tuple(tensor.shape)}"
        )
    image = image.to(device="cpu", dtype=torch.float32)
    mean = torch.tensor(stats.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(stats.std, dtype=torch.float32).view(3, 1, 1)
    pixels = (image * std + mean).clamp_(0.0, 1.0)
    return np.ascontiguousarray(pixels.permute(1, 2, 0).numpy())


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


def _pixel_array(image: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Validate a pixel-space image and return it as ``(H, W, 3)`` float32."""
    array = np.asarray(image)
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidArgumentError(
            f"image must hold floats in [0, 1], got dtype {array.dtype}; "
            "decode with decode_image() or divide by the integer range"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise InvalidArgumentError(
            f"image must be (H, W, 3) RGB or (H, W) grayscale, got shape {np.shape(image)}"
        )
    if not np.isfinite(array).all():
        raise InvalidArgumentError("image holds NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise InvalidArgumentError(
            f"image values must lie in [0, 1], got [{low:g}, {high:g}]"
        )
    return array.astype(np.float32, copy=False)


def _parse_color(
    color: str | Sequence[float], preprocessing: Preprocessing
) -> tuple[float, float, float]:
    """Pixel-space ``[0, 1]`` RGB for any accepted colour spelling."""
    if isinstance(color, str):
        name = color.strip().lower()
        if name == "mean":
            return preprocessing.mean
        if name in _NAMED_GRAYS:
            level = _NAMED_GRAYS[name]
            return (level, level, level)
        match = _RGB_STRING.match(color)
        if match is None:
            raise InvalidArgumentError(
                f"unknown patch colour {color!r}: use gray, black, white, mean, "
                "or 'R,G,B' with three integers 0-255"
            )
        channels = tuple(int(part) for part in match.groups())
        if max(channels) > 255:
            raise InvalidArgumentError(
                f"patch colour {color!r} has a channel above 255"
            )
        return (channels[0] / 255.0, channels[1] / 255.0, channels[2] / 255.0)
    values = _three_floats(color, "patch colour")
    if min(values) < 0.0 or max(values) > 1.0:
        raise InvalidArgumentError(
            f"patch colour {tuple(color)} must have three values in [0, 1]"
        )
    return values


def _three_floats(values: object, what: str) -> tuple[float, float, float]:
    """Three finite real numbers as plain floats, or a clear error."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if isinstance(values, str | bytes) or not isinstance(values, Sequence) or len(values) != 3:
        raise InvalidArgumentError(f"{what} must be three numbers, got {values!r}")
    if not all(isinstance(v, Real) and not isinstance(v, bool) for v in values):
        raise InvalidArgumentError(f"{what} must be three numbers, got {values!r}")
    floats = (float(values[0]), float(values[1]), float(values[2]))
    if not all(math.isfinite(v) for v in floats):
        raise InvalidArgumentError(f"{what} must be finite, got {values!r}")
    return floats


def _is_int(value: object) -> bool:
    """An integer that is not a bool (``True`` is an int to Python, never a size to us)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)
