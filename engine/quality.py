"""How good a heatmap is: SSIM to the exact one, and whether it points at the finding.

SSIM says how closely an approximate map follows the exact one; the pointing
game says whether a map sends the eye to the right place: its strongest
position (the largest probability drop) must fall on the lesion's box.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from skimage.metrics import structural_similarity

from krypton.engine.errors import InvalidParamsError

__all__ = ["heatmap_ssim", "points_at"]

_WINDOW = 7
"""scikit-image's default SSIM window; smaller heatmaps use the largest odd side that fits."""


def heatmap_ssim(approximate: npt.NDArray[Any], exact: npt.NDArray[Any]) -> float:
    """Structural similarity of ``approximate`` to ``exact``, ``data_range`` from the exact map.

    Raises:
        InvalidParamsError: the shapes differ or the maps are smaller than 3x3.
    """
    if approximate.shape != exact.shape:
        raise InvalidParamsError(
            f"heatmaps differ in shape: {approximate.shape} vs {exact.shape}"
        )
    side = min(exact.shape)
    if side < 3:
        raise InvalidParamsError(f"SSIM needs heatmaps of at least 3x3, got {exact.shape}")
    window = min(_WINDOW, side if side % 2 else side - 1)
    reference = np.asarray(exact, dtype=np.float64)
    data_range = float(reference.max() - reference.min())
    if data_range == 0.0:
        # A flat exact map: SSIM is 1 for an identical map and undefined otherwise.
        return 1.0 if np.array_equal(approximate, exact) else 0.0
    return float(structural_similarity(
        np.asarray(approximate, dtype=np.float64), reference, data_range=data_range,
        win_size=window,
    ))


def points_at(heatmap: npt.NDArray[Any], box: tuple[int, int, int, int], patch_size: int,
              stride: int, *, tolerance: float = 0.0) -> bool:
    """Whether the position that hides the most evidence lies on ``box``.

    ``heatmap`` holds the target's probability with the patch at each
    position, so the lowest value is the largest drop. Its patch's centre, in
    input pixels, must fall inside ``box`` (``top, left, bottom, right``,
    bottom and right exclusive) grown by ``tolerance`` pixels on every side,
    as the pointing game of Zhang et al. (2016) allows for a map's resolution.

    Raises:
        InvalidParamsError: an empty box.
    """
    top, left, bottom, right = box
    if bottom <= top or right <= left:
        raise InvalidParamsError(f"box {box} is empty")
    row, column = np.unravel_index(int(np.argmin(heatmap)), heatmap.shape)
    centre_y = row * stride + (patch_size - 1) / 2
    centre_x = column * stride + (patch_size - 1) / 2
    return bool(top - tolerance <= centre_y < bottom + tolerance
                and left - tolerance <= centre_x < right + tolerance)
