"""The grid of patch positions and the occluding patch itself.

Coordinates are input pixels of the (already preprocessed) model input. A
patch of side ``P`` at grid index ``(i, j)`` covers rows ``[i*S, i*S + P)`` and
columns ``[j*S, j*S + P)``; positions run while the patch fits, so the heatmap
is ``((H - P) // S + 1) x ((W - P) // S + 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from krypton.engine.errors import InvalidParamsError
from krypton.engine.regions import grid_positions

__all__ = ["PatchGrid", "PatchValue", "patch_tensor"]

PatchValue = float | Sequence[float] | Tensor
"""One value for every channel, or one value per channel, in model-input space."""


@dataclass(frozen=True)
class PatchGrid:
    """Every position of a ``patch x patch`` window moved by ``stride`` over an image."""

    height: int
    width: int
    patch: int
    stride: int

    def __post_init__(self) -> None:
        if not isinstance(self.patch, int) or isinstance(self.patch, bool) or self.patch < 1:
            raise InvalidParamsError(f"patch_size must be a positive integer, got {self.patch!r}")
        if self.patch > min(self.height, self.width):
            raise InvalidParamsError(
                f"patch_size {self.patch} is larger than the {self.height}x{self.width} image"
            )
        if not isinstance(self.stride, int) or isinstance(self.stride, bool) or self.stride < 1:
            raise InvalidParamsError(f"stride must be a positive integer, got {self.stride!r}")

    @property
    def rows(self) -> npt.NDArray[np.int64]:
        """Top row of the patch for each heatmap row."""
        return grid_positions(self.height, self.patch, self.stride)

    @property
    def cols(self) -> npt.NDArray[np.int64]:
        """Left column of the patch for each heatmap column."""
        return grid_positions(self.width, self.patch, self.stride)

    @property
    def shape(self) -> tuple[int, int]:
        """Heatmap shape ``(H_M, W_M)``."""
        return (self.height - self.patch) // self.stride + 1, (
            self.width - self.patch
        ) // self.stride + 1

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def patch_tensor(value: PatchValue, channels: int, *, dtype: torch.dtype,
                 device: torch.device) -> Tensor:
    """The patch colour as a ``(1, C, 1, 1)`` tensor, ready to broadcast.

    Raises:
        InvalidParamsError: wrong number of channel values, or not finite.
    """
    tensor = torch.as_tensor(value, dtype=dtype).flatten().to(device)
    if tensor.numel() == 1:
        tensor = tensor.expand(channels)
    if tensor.numel() != channels:
        raise InvalidParamsError(
            f"patch_value needs 1 or {channels} values (one per channel), got {tensor.numel()}"
        )
    if not torch.isfinite(tensor).all():
        raise InvalidParamsError("patch_value must be finite")
    return tensor.reshape(1, channels, 1, 1).clone()
