"""Region arithmetic: which cells of a layer's output an occluding patch changes.

Everything here works on one spatial axis at a time (rows and columns are
independent) and on integer intervals ``[lo, hi)`` in the coordinate frame of
the feature map the interval belongs to. Intervals come as NumPy arrays, one
entry per patch position along that axis, so a whole heatmap grid is planned
with a handful of vectorised operations.

An empty interval (``lo >= hi``) means "nothing changed here", which happens
for instance when a 1x1 stride-2 convolution skips the only changed row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "Axis",
    "Intervals",
    "cap",
    "changed_output",
    "grid_positions",
    "output_size",
    "patch_intervals",
    "read_context",
    "tau_limit",
    "union",
    "widths",
    "window_starts",
]

Intervals = npt.NDArray[np.int64]
"""A ``(2, N)`` array: row 0 holds ``lo``, row 1 holds ``hi`` for N positions."""

_EMPTY_LO = np.iinfo(np.int64).max // 4
_EMPTY_HI = -_EMPTY_LO


@dataclass(frozen=True)
class Axis:
    """A sliding-window operator's geometry along one axis (conv or pool).

    ``padding`` is the number of padded cells before the first input cell;
    ``size_in``/``size_out`` are the map sizes before and after the operator.
    """

    kernel: int
    stride: int
    padding: int
    dilation: int
    size_in: int
    size_out: int

    @property
    def reach(self) -> int:
        """Input cells one output cell depends on (the dilated kernel extent)."""
        return self.dilation * (self.kernel - 1) + 1


def output_size(
    size: int, kernel: int, stride: int, padding: int, dilation: int = 1, ceil_mode: bool = False
) -> int:
    """Output length of a conv/pool along one axis, exactly as PyTorch computes it."""
    reach = dilation * (kernel - 1) + 1
    span = size + 2 * padding - reach
    if ceil_mode:
        out = -(-span // stride) + 1
        # PyTorch drops a last window that would start inside the right padding.
        if (out - 1) * stride >= size + padding:
            out -= 1
        return out
    return span // stride + 1


def changed_output(intervals: Intervals, axis: Axis) -> Intervals:
    """Output cells changed when input cells ``[lo, hi)`` change.

    Output cell ``o`` reads input cells ``[o*s - p, o*s - p + reach)``, so it
    is changed iff that range meets ``[lo, hi)``:
    ``ceil((lo + p - reach + 1) / s) <= o <= floor((hi - 1 + p) / s)``,
    clamped to the output map.
    """
    lo, hi = intervals
    empty = lo >= hi
    s, p = axis.stride, axis.padding
    out_lo = np.maximum(-((-(lo + p - axis.reach + 1)) // s), 0)
    out_hi = np.minimum((hi - 1 + p) // s + 1, axis.size_out)
    out_empty = empty | (out_lo >= out_hi)
    return np.stack(
        [np.where(out_empty, _EMPTY_LO, out_lo), np.where(out_empty, _EMPTY_HI, out_hi)]
    ).astype(np.int64)


def union(*intervals: Intervals) -> Intervals:
    """Smallest interval covering all given ones (empty ones are ignored)."""
    stacked = np.stack(intervals)
    return np.stack([stacked[:, 0].min(axis=0), stacked[:, 1].max(axis=0)]).astype(np.int64)


def cap(intervals: Intervals, limit: int) -> Intervals:
    """Shrink intervals longer than ``limit`` to ``limit`` cells around their centre.

    This is projective-field thresholding: the cells cut off still change a
    little, but keep their original values. Empty intervals stay empty.
    """
    lo, hi = intervals
    excess = np.maximum(hi - lo - limit, 0)
    new_lo = lo + excess // 2
    return np.stack([new_lo, np.where(excess > 0, new_lo + limit, hi)]).astype(np.int64)


def tau_limit(tau: float, size: int) -> int:
    """Most cells a region may span on an axis of ``size`` cells under threshold ``tau``."""
    return max(1, min(size, math.ceil(tau * size - 1e-9)))


def widths(intervals: Intervals) -> npt.NDArray[np.int64]:
    """Length of each interval, 0 for empty ones."""
    lengths: npt.NDArray[np.int64] = np.maximum(intervals[1] - intervals[0], 0)
    return lengths


def window_starts(intervals: Intervals, width: int, size: int) -> npt.NDArray[np.int64]:
    """Start of a fixed-``width`` window covering each interval inside ``[0, size)``.

    Batching needs every position to use the same window size; near the far
    border the window is shifted inward instead of shrunk. Recomputing cells
    that did not change is still exact. Empty intervals get a window at 0.
    """
    if width > size:
        raise ValueError(f"window width {width} exceeds map size {size}")
    lo = intervals[0]
    start = np.minimum(lo, size - width)
    return np.where(intervals[0] >= intervals[1], 0, np.maximum(start, 0)).astype(np.int64)


def read_context(out_starts: npt.NDArray[np.int64], width: int, axis: Axis) -> tuple[
    npt.NDArray[np.int64], int
]:
    """Input cells an operator must read to produce ``width`` output cells.

    Returns the start of each read context in input cells (negative or past
    the end where it reaches into padding) and the context length, which is
    the same for every position: ``reach + (width - 1) * stride``.
    """
    return out_starts * axis.stride - axis.padding, axis.reach + (width - 1) * axis.stride


def patch_intervals(positions: npt.NDArray[np.int64], patch: int) -> Intervals:
    """Input cells covered by a patch of side ``patch`` at each start position."""
    return np.stack([positions, positions + patch]).astype(np.int64)


def grid_positions(size: int, patch: int, stride: int) -> npt.NDArray[np.int64]:
    """Top-left coordinates along one axis: ``0, S, 2S, ...`` while the patch fits."""
    return np.arange(0, size - patch + 1, stride, dtype=np.int64)

