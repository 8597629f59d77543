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

__all__ = ["MIN_RANGE", "Bisection", "bisect", "bisect_from_lattice", "lattice_axis"]

MIN_RANGE = 0.01
"""Below this range of lattice values (probabilities), the tolerance is a share of it:
a map that is flat up to noise (a saturated prediction) is not refined on noise."""

Measure = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float64]]
"""Exact heatmap values at flat fine-grid indices."""

Cell = tuple[int, int, int, int]
"""``(top, bottom, left, right)`` fine-grid indices of a cell's corners, inclusive."""


@dataclass(frozen=True)
class Bisection:
    """The refined heatmap and what it cost."""

    heatmap: npt.NDArray[np.float64]
    refined: int
    """Positions measured here: the lattice's closing points and the checks."""
    rounds: int
    """Rounds of checks (the closing points not counted); each is one call to ``measure``."""


def lattice_axis(length: int, step: int) -> list[int]:
    """The lattice's fine indices along an axis of ``length``: every ``step``-th, and the last.

    The last index closes the lattice so that every fine position lies in a
    cell with measured corners.
    """
    axis = list(range(0, length, step))
    if axis[-1] != length - 1:
        axis.append(length - 1)
    return axis


def bisect_from_lattice(lattice: npt.NDArray[np.float64], shape: tuple[int, int], step: int,
                        measure: Measure, *, tolerance: float, budget: int,
                        report: Callable[[npt.NDArray[np.float64]], None] | None = None
                        ) -> Bisection:
    """Refine a fine grid of ``shape`` known only at every ``step``-th index.

    ``lattice`` holds those values (the drill-down's coarse map); the rest is
    as :func:`bisect`, whose closing row and column are measured first.
    """
    values = np.zeros(shape, dtype=np.float64)
    known = np.zeros(shape, dtype=bool)
    values[::step, ::step] = lattice
    known[::step, ::step] = True
    return bisect(values, known, lattice_axis(shape[0], step), lattice_axis(shape[1], step),
                  measure, tolerance=tolerance, budget=budget, report=report)


def bisect(values: npt.NDArray[np.float64], known: npt.NDArray[np.bool_], rows: list[int],
           cols: list[int], measure: Measure, *, tolerance: float, budget: int,
           report: Callable[[npt.NDArray[np.float64]], None] | None = None) -> Bisection:
    """Refine ``values`` (the fine grid, exact where ``known``) from the lattice ``rows x cols``.

    Args:
        values: fine-grid map, exact where ``known``; the lattice's points not
            yet known (the closing row and column) are measured first, always.
        known: where ``values`` holds measured values.
        rows, cols: the lattice's fine indices (see :func:`lattice_axis`).
        measure: exact values at flat indices.
        tolerance: share of the lattice values' range (at least
            :data:`MIN_RANGE`) that a measured point may depart from the
            interpolation before its cell is split further.
        budget: the most positions the checks measure; the closing points
            are measured even beyond it.
        report: called with the estimate before the first check and after
            every round.
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

    take([(y, x) for y in rows for x in cols if not known[y, x]])
    lattice = values[np.ix_(rows, cols)]
    allowed = tolerance * max(float(lattice.max() - lattice.min()), MIN_RANGE)
    leaves = {(y0, y1, x0, x1) for y0, y1 in _spans(rows) for x0, x1 in _spans(cols)}
    if report is not None:
        report(_filled(values, known, leaves))
    # Round one checks cells whose corners disagree; later rounds, the children of failed
    # checks and the cells a neighbour's measured edge points contradict.
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
        failed: dict[Cell, float] = {}
        for cell in chosen:
            leaves.discard(cell)
            children = _children(cell)
            leaves.update(children)
            error = max(abs(values[p] - _bilinear(values, cell, p)) for p in _midpoints(cell))
            if error > allowed:
                failed.update((child, error) for child in children if _midpoints(child))
        for cell in leaves:
            if cell not in failed and _midpoints(cell):
                error = _edge_error(values, known, cell)
                if error > allowed:
                    failed[cell] = error
        candidates = sorted(((error, cell) for cell, error in failed.items()), reverse=True)
        if report is not None:
            report(_filled(values, known, leaves))
    return Bisection(_filled(values, known, leaves), refined=spent, rounds=rounds)


def _spans(axis: list[int]) -> list[tuple[int, int]]:
    """Consecutive indices (lattice points, or a cell's splits); one index spans itself."""
    return list(zip(axis, axis[1:], strict=False)) or [(axis[0], axis[0])]


def _corner_range(values: npt.NDArray[np.float64], cell: Cell) -> float:
    y0, y1, x0, x1 = cell
    corners = (values[y0, x0], values[y0, x1], values[y1, x0], values[y1, x1])
    return float(max(corners) - min(corners))


def _edge_error(values: npt.NDArray[np.float64], known: npt.NDArray[np.bool_],
                cell: Cell) -> float:
    """How far measured points on ``cell``'s edges (a neighbour's checks) depart from its
    interpolation, which along an edge is linear between that edge's corners."""
    y0, y1, x0, x1 = cell
    error = 0.0
    for line, mask, first, last in (
        (values[y0, x0:x1 + 1], known[y0, x0:x1 + 1], values[y0, x0], values[y0, x1]),
        (values[y1, x0:x1 + 1], known[y1, x0:x1 + 1], values[y1, x0], values[y1, x1]),
        (values[y0:y1 + 1, x0], known[y0:y1 + 1, x0], values[y0, x0], values[y1, x0]),
        (values[y0:y1 + 1, x1], known[y0:y1 + 1, x1], values[y0, x1], values[y1, x1]),
    ):
        if len(line) > 2 and mask[1:-1].any():
            t = np.linspace(0.0, 1.0, len(line))[1:-1]
            departure = np.abs(line[1:-1] - (first * (1 - t) + last * t))[mask[1:-1]]
            error = max(error, float(departure.max()))
    return error


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
    return [(a, b, c, d) for a, b in _spans(ys) for c, d in _spans(xs)]


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

    Measured points keep their exact values. Larger leaves are filled first,
    so that on an edge shared with smaller ones the finer interpolation holds.
    """
    out = values.copy()
    for y0, y1, x0, x1 in sorted(leaves, key=lambda c: (c[1] - c[0]) * (c[3] - c[2]),
                                 reverse=True):
        if y1 - y0 <= 1 and x1 - x0 <= 1:
            continue  # no inside: every point is a corner, measured
        ty = np.linspace(0.0, 1.0, y1 - y0 + 1)[:, None]
        tx = np.linspace(0.0, 1.0, x1 - x0 + 1)[None, :]
        top = values[y0, x0] * (1 - tx) + values[y0, x1] * tx
        bottom = values[y1, x0] * (1 - tx) + values[y1, x1] * tx
        block = out[y0:y1 + 1, x0:x1 + 1]
        unmeasured = ~known[y0:y1 + 1, x0:x1 + 1]
        block[unmeasured] = (top * (1 - ty) + bottom * ty)[unmeasured]
    return out
