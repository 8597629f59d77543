"""How a model wants its input, and the occluding patch's colour in that space.

Pixel space is float ``[0, 1]`` RGB, ``(H, W, 3)``; model-input space is that
image resized to the model's square side and normalised per channel with the
dataset mean and std. Occlusion patch colours are chosen in pixel space (a
user thinks "gray") but the engine pastes them into model-input space, so
:func:`patch_value` converts between the two. Plain numbers only: the API
process validates requests with these and never loads torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real

import numpy as np

from krypton.models.errors import InvalidArgumentError
from krypton.models.windows import Window, WindowChoice

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocessing", "patch_value"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel mean of ImageNet in ``[0, 1]`` RGB, what torchvision models are trained with."""

IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of ImageNet in ``[0, 1]`` RGB."""

_NAMED_GRAYS = {"gray": 0.5, "grey": 0.5, "black": 0.0, "white": 1.0}
_RGB_STRING = re.compile(r"^\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*$")


@dataclass(frozen=True)
class Preprocessing:
    """How one model wants its input: square side, normalisation statistics, and the
    window that maps a grayscale DICOM frame's values to ``[0, 1]``.

    Kept separate from the model so the same image can be prepared once per
    request and the colour of an occluding patch derived from the same numbers.

    Attributes:
        size: Side of the square input in pixels (224 for most torchvision models).
        mean: Per-channel mean subtracted in ``[0, 1]`` RGB.
        std: Per-channel standard deviation divided by.
        window: A :class:`~krypton.models.windows.Window`, ``"image"``, or ``None``
            for the file's own window, else the image's range
            (:mod:`krypton.models.windows`).

    Raises:
        InvalidArgumentError: ``size`` is not a positive integer, ``mean``/``std``
            are not three finite numbers (``std`` also positive), or ``window``
            is none of those.
    """

    size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    window: WindowChoice = None

    def __post_init__(self) -> None:
        if not _is_int(self.size) or self.size < 1:
            raise InvalidArgumentError(f"size must be a positive integer, got {self.size!r}")
        mean = _three_floats(self.mean, "mean")
        std = _three_floats(self.std, "std")
        if min(std) <= 0:
            raise InvalidArgumentError(f"std must be positive, got {std}")
        if not (self.window is None or self.window == "image" or isinstance(self.window, Window)):
            raise InvalidArgumentError(f"window must be a center and width, 'image' or none, "
                                       f"got {self.window!r}")
        # Normalise lists and numpy scalars so equal configurations compare and hash equal.
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)


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
