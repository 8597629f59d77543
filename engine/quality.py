"""How close an approximate heatmap is to the exact one: SSIM, as scikit-image computes it."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from skimage.metrics import structural_similarity

from krypton.engine.errors import InvalidParamsError

__all__ = ["heatmap_ssim"]

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
