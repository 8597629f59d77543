"""Pixels to the normalised tensor a classifier expects, and back.

Resizing squashes to the model's square side rather than cropping, so every
pixel of the original can be occluded and mapped back onto the heatmap.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from krypton.models.errors import InvalidArgumentError
from krypton.models.preprocessing import Preprocessing

__all__ = ["normalize", "to_model_input"]


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
