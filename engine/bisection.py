"""Refinement by bisection: recompute the fine heatmap where interpolation fails.

The drill-down's coarse map, interpolated, is a good estimate wherever the
heatmap is smooth; it misses a lesion's sharp edge, and a small lesion between
coarse positions. Choosing the refined positions by the estimate's value (the
paper's rule) cannot notice either. Bisection checks instead: a cell of the
coarse lattice whose corners differ by more than half the tolerance gets its
centre and edge midpoints computed; where a midpoint departs from the
interpolation of the corners by more than the tolerance, the four sub-cells
are checked the same way, down to the fine grid. The check is made with exact
values, so each image refines as much as its own heatmap needs, within a cap.

Works on fine-grid indices only: the caller measures positions, so this
module knows nothing of models or patches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Bisection", "bisect", "lattice_axis"]

Measure = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float64]]
"""Exact heatmap values at flat fine-grid indices."""

Cell = tuple[int, int, int, int]
"""``(top, bottom, left, right)`` fine-grid indices of a cell's corners, inclusive."""


@dataclass(frozen=True)
class Bisection:
    """The refined heatmap and what it cost."""

    heatmap: npt.NDArray[np.float64]
    refined: int
    """Positions measured after the coarse lattice."""
    rounds: int
    """Rounds of measurement: 1 per level of bisection that found work to do."""


def lattice_axis(length: int, step: int) -> list[int]:
    """The lattice's fine indices along an axis of ``length``: every ``step``-th, and the last.

    The last index closes the lattice so that every fine position lies in a
    cell with measured corners.
    """
    axis = list(range(0, length, step))
    if axis[-1] != length - 1:
        axis.append(length - 1)
    return axis


def bisect(values: npt.NDArray[np.float64], known: npt.NDArray[np.bool_], rows: list[int],
           cols: list[int], measure: Measure, *, tolerance: float, budget: int,
           report: Callable[[npt.NDArray[np.float64]], None] | None = None) -> Bisection:
    """Refine ``values`` (the fine grid, exact where ``known``) from the lattice ``rows x cols``.

    Args:
        values: fine-grid map, exact where ``known``; the lattice's points not
            yet known are measured first.
        known: where ``values`` holds measured values.
        rows, cols: the lattice's fine indices (see :func:`lattice_axis`).
        measure: exact values at flat indices.
        tolerance: share of the lattice values' range that a midpoint may
            depart from the interpolation before its cell is split further.
        budget: the most positions measured in all, lattice points included.
        report: called after every round with the current estimate.
    """
    values, known = values.astype(np.float64), known.copy()
    width = values.shape[1]
    spent = 0

    def take(points: list[tuple[int, int]]) -> None:
        nonlocal spent
        if points:
            flat = np.array([y * width + x for y, x in points], dtype=np.int64)
            values.flat[flat] = measure(flat)
            known.flat[flat] = True
            spent += len(points)

    take([(y, x) for y in rows for x in cols if not known[y, x]][:budget])
    lattice = values[np.ix_(rows, cols)]
    allowed = tolerance * float(lattice.max() - lattice.min())
    leaves = {(y0, y1, x0, x1) for y0, y1 in zip(rows, rows[1:], strict=False)
              for x0, x1 in zip(cols, cols[1:], strict=False)}
    # Round one checks cells whose corners disagree; later rounds, the children of failed checks.
    # A flat lattice (allowed 0) tells nothing, so then every cell is checked.
    candidates = sorted(((_corner_range(values, cell), cell) for cell in leaves
                         if _midpoints(cell) and _corner_range(values, cell) >= allowed / 2),
                        reverse=True)
    rounds = 0
    while candidates and spent < budget:
        chosen: list[Cell] = []
        new: set[tuple[int, int]] = set()
        for _, cell in candidates:
            points = {p for p in _midpoints(cell) if not known[p]} - new
            if spent + len(new) + len(points) > budget:
                break
            chosen.append(cell)
            new |= points
        if not chosen:
            break
        take(sorted(new))
        rounds += 1
        candidates = []
        for cell in chosen:
            leaves.discard(cell)
            children = _children(cell)
            leaves.update(children)
            error = max(abs(values[p] - _bilinear(values, cell, p)) for p in _midpoints(cell))
            if error > allowed:
                candidates += [(error, child) for child in children if _midpoints(child)]
        candidates.sort(reverse=True)
        if report is not None:
            report(_filled(values, known, leaves))
    return Bisection(_filled(values, known, leaves), refined=spent, rounds=rounds)


def _corner_range(values: npt.NDArray[np.float64], cell: Cell) -> float:
    y0, y1, x0, x1 = cell
    corners = (values[y0, x0], values[y0, x1], values[y1, x0], values[y1, x1])
    return float(max(corners) - min(corners))


def _splits(low: int, high: int) -> list[int]:
    return [low, (low + high) // 2, high] if high - low >= 2 else [low, high]


def _midpoints(cell: Cell) -> list[tuple[int, int]]:
    """The points a split adds to ``cell``: edge midpoints and centre (none for a 1x1 cell)."""
    y0, y1, x0, x1 = cell
    corners = {(y0, x0), (y0, x1), (y1, x0), (y1, x1)}
    return [(y, x) for y in _splits(y0, y1) for x in _splits(x0, x1) if (y, x) not in corners]


def _children(cell: Cell) -> list[Cell]:
    y0, y1, x0, x1 = cell
    ys, xs = _splits(y0, y1), _splits(x0, x1)
    return [(a, b, c, d) for a, b in zip(ys, ys[1:], strict=False)
            for c, d in zip(xs, xs[1:], strict=False)]


def _bilinear(values: npt.NDArray[np.float64], cell: Cell, point: tuple[int, int]) -> float:
    """The interpolation of ``cell``'s corners at ``point``."""
    y0, y1, x0, x1 = cell
    ty, tx = (point[0] - y0) / (y1 - y0 or 1), (point[1] - x0) / (x1 - x0 or 1)
    top = values[y0, x0] * (1 - tx) + values[y0, x1] * tx
    bottom = values[y1, x0] * (1 - tx) + values[y1, x1] * tx
    return float(top * (1 - ty) + bottom * ty)


def _filled(values: npt.NDArray[np.float64], known: npt.NDArray[np.bool_],
            leaves: set[Cell]) -> npt.NDArray[np.float64]:
    """``values`` with every leaf's unmeasured inside interpolated bilinearly from its corners.

    Measured points inside a leaf (a smaller neighbour's midpoints on a shared
    edge) keep their exact values.
    """
    out = values.copy()
    for y0, y1, x0, x1 in leaves:
        ty = np.linspace(0.0, 1.0, y1 - y0 + 1)[:, None]
        tx = np.linspace(0.0, 1.0, x1 - x0 + 1)[None, :]
        top = values[y0, x0] * (1 - tx) + values[y0, x1] * tx
        bottom = values[y1, x0] * (1 - tx) + values[y1, x1] * tx
        block = out[y0:y1 + 1, x0:x1 + 1]
        unmeasured = ~known[y0:y1 + 1, x0:x1 + 1]
        block[unmeasured] = (top * (1 - ty) + bottom * ty)[unmeasured]
    return out
