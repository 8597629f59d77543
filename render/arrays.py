"""Heatmaps as data: the two views of the values, and their NPY and JSON encodings."""

from __future__ import annotations

import io
import json
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = ["View", "heatmap_json", "heatmap_npy", "read_npy", "shrink", "view_values"]

View = Literal["drop", "probability"]

FloatArray = npt.NDArray[np.floating[Any]]


def view_values(heatmap: FloatArray, target_probability: float, view: View) -> FloatArray:
    """``probability``: p(target) with the patch; ``drop``: how much the patch lowers it."""
    if view == "probability":
        return np.asarray(heatmap, dtype=np.float32)
    if view == "drop":
        return np.float32(target_probability) - np.asarray(heatmap, dtype=np.float32)
    raise ValueError(f"view must be 'drop' or 'probability', got {view!r}")


def heatmap_npy(values: FloatArray) -> bytes:
    """The array in NumPy's ``.npy`` format (float32)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(values, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def read_npy(data: bytes) -> npt.NDArray[np.float32]:
    """The array :func:`heatmap_npy` wrote."""
    array: npt.NDArray[np.float32] = np.load(io.BytesIO(data), allow_pickle=False)
    return array


def heatmap_json(heatmap: FloatArray, metadata: dict[str, Any]) -> str:
    """The 2-D array under ``heatmap`` with its shape, range and ``metadata``."""
    values = np.asarray(heatmap, dtype=np.float64)
    document = {
        "heatmap": values.round(7).tolist(),
        "shape": list(values.shape),
        "min": float(values.min()),
        "max": float(values.max()),
        **metadata,
    }
    return json.dumps(document)


def shrink(values: FloatArray, max_side: int) -> npt.NDArray[np.float32]:
    """``values`` averaged in whole blocks until both sides are at most ``max_side``.

    NaN cells (not computed yet) are left out of their block's mean; a block
    of NaN only stays NaN.
    """
    array = np.asarray(values, dtype=np.float32)
    factor = -(-max(array.shape) // max_side)
    if factor <= 1:
        return array
    rows, cols = (-(-side // factor) * factor for side in array.shape)
    padded = np.full((rows, cols), np.nan, dtype=np.float32)
    padded[: array.shape[0], : array.shape[1]] = array
    blocks = padded.reshape(rows // factor, factor, cols // factor, factor)
    counts = np.sum(~np.isnan(blocks), axis=(1, 3))
    sums = np.nansum(blocks, axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).astype(np.float32)
