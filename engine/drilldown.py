"""Adaptive drill-down: a coarse heatmap first, then the fine stride where it matters.

A wrapper around an engine, as Captum's ``NoiseTunnel`` wraps an attribution
method: it prepares the image once with the engine, occludes every position
of a coarse grid, estimates the fine heatmap from it by bilinear
interpolation, and recomputes at the fine stride where that estimate is
least to be trusted. Two rules choose where:

* the ``ratio`` of positions where the estimate shows the largest
  probability drop (the KRYPTON paper's rule): a fixed cost, blind to a
  lesion's edge or a second lesion the interpolation smooths away;
* with a ``tolerance``, bisection (:mod:`krypton.engine.bisection`): cells
  whose exact midpoints depart from the interpolation are split until they
  agree, at most ``ratio`` of the positions, so each image pays for what its
  own heatmap needs.

The other positions keep the interpolated value.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from krypton.engine.base import (
    BatchLoop,
    OcclusionEngine,
    PartialCallback,
    ProgressCallback,
    StopCheck,
)
from krypton.engine.bisection import bisect_from_lattice
from krypton.engine.errors import InvalidParamsError
from krypton.engine.patches import PatchGrid, PatchValue
from krypton.engine.result import OcclusionResult

__all__ = ["DrillDown", "check_bisection_strides", "check_drilldown", "drilldown_count",
           "interpolate_coarse", "top_drop"]


class DrillDown:
    """Occlusion at ``coarse_stride`` everywhere, then at the asked stride where it matters.

    Args:
        engine: the engine that occludes both grids.
        ratio: fraction ``r`` of fine positions recomputed, ``0 < r <= 1``;
            with a ``tolerance``, the most that may be.
        coarse_stride: stride of the coarse stage, in input pixels; with a
            ``tolerance``, a multiple of the fine stride.
        tolerance: refine by bisection until measured points depart from the
            interpolation by at most this share of the coarse values' range;
            ``None`` refines the ``ratio`` with the largest drop.

    Example::

        >>> engine = IncrementalOcclusion(model)
        >>> DrillDown(engine, ratio=0.05, coarse_stride=16).attribute(image, 16, 4)
        >>> DrillDown(engine, ratio=0.5, coarse_stride=16, tolerance=0.1).attribute(image, 16, 4)
    """

    def __init__(self, engine: OcclusionEngine, *, ratio: float, coarse_stride: int,
                 tolerance: float | None = None) -> None:
        check_drilldown(ratio, coarse_stride, tolerance)
        self.engine, self.ratio, self.coarse_stride = engine, float(ratio), coarse_stride
        self.tolerance = None if tolerance is None else float(tolerance)

    def attribute(
        self,
        image: Tensor,
        patch_size: int,
        stride: int,
        *,
        patch_value: PatchValue = 0.0,
        target: int | None = None,
        batch_size: int | None = None,
        progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
        partial: PartialCallback | None = None,
        tau: float = 1.0,
    ) -> OcclusionResult:
        """The drilled-down heatmap; arguments as :meth:`OcclusionEngine.attribute`.

        ``partial`` gets, after every batch of the coarse stage, the coarse
        values so far, each on the fine cells nearest it (NaN where none is
        done yet): the coarse stage is most of the work, and a clinician sees
        the map form from the first batch. Then the interpolated coarse map,
        then that map with the refined cells filled in: after every fine batch
        for the ``ratio`` rule, after every round for bisection.
        """
        engine = self.engine
        check_bisection_strides(self.tolerance, self.coarse_stride, stride)
        loop = BatchLoop(batch_size, engine.device, progress, should_stop)
        with torch.inference_mode():
            prepared = engine.prepare(image, patch_value=patch_value, target=target)
            fine = PatchGrid(prepared.height, prepared.width, patch_size, stride)
            coarse = PatchGrid(prepared.height, prepared.width, patch_size, self.coarse_stride)
            budget = drilldown_count(fine.size, self.ratio)
            loop.total = coarse.size + budget
            coarse_map = engine.occlude(
                prepared, coarse, loop, tau=tau,
                on_batch=None if partial is None else _coarse_so_far(partial, coarse, fine),
            ).view(coarse.shape)

            def measure(positions: Tensor, on_batch: Callable[[Tensor, int], None] | None = None
                        ) -> Tensor:
                return engine.occlude(prepared, fine, loop, positions=positions, tau=tau,
                                      on_batch=on_batch)

            if self.tolerance is None:
                heatmap, refined, rounds = _refine_lowest(coarse_map, coarse, fine, self.ratio,
                                                          measure, partial)
            else:
                heatmap, refined, rounds = _refine_by_bisection(
                    coarse_map, fine, self.coarse_stride // stride, self.tolerance, budget,
                    measure, partial)
                if progress is not None and loop.done < loop.total:
                    progress(loop.done, loop.done)  # spent less than the cap: done all the same
        return engine.result(prepared, fine, heatmap, loop, tau=tau,
                             drilldown_ratio=self.ratio, coarse_stride=self.coarse_stride,
                             drilldown_tolerance=self.tolerance, refined=refined, rounds=rounds)


Measure = Callable[..., Tensor]
"""Probabilities at flat fine-grid indices, with an optional ``on_batch``."""


def _refine_lowest(coarse_map: Tensor, coarse: PatchGrid, fine: PatchGrid, ratio: float,
                   measure: Measure, partial: PartialCallback | None
                   ) -> tuple[Tensor, int, int]:
    """The interpolated map with the ``ratio`` of positions of lowest estimate recomputed."""
    heatmap = interpolate_coarse(coarse_map, coarse, fine)
    chosen = top_drop(heatmap, ratio)
    if partial is not None:
        partial(heatmap.cpu().numpy().astype(np.float32))

    def refined_so_far(out: Tensor, filled: int) -> None:
        if partial is not None:
            so_far = heatmap.clone()
            so_far.view(-1)[chosen[:filled]] = out[:filled]
            partial(so_far.cpu().numpy().astype(np.float32))

    heatmap.view(-1)[chosen] = measure(chosen, refined_so_far)
    return heatmap, chosen.numel(), 1


def _refine_by_bisection(coarse_map: Tensor, fine: PatchGrid, step: int, tolerance: float,
                         budget: int, measure: Measure, partial: PartialCallback | None
                         ) -> tuple[Tensor, int, int]:
    """The coarse map on the fine grid (every ``step``-th index), refined by bisection."""
    def exact(flat: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        positions = torch.as_tensor(flat, device=coarse_map.device)
        return measure(positions).cpu().numpy().astype(np.float64)

    def report(estimate: npt.NDArray[np.float64]) -> None:
        if partial is not None:
            partial(estimate.astype(np.float32))

    done = bisect_from_lattice(coarse_map.cpu().numpy(), fine.shape, step, exact,
                               tolerance=tolerance, budget=budget,
                               report=None if partial is None else report)
    heatmap = torch.as_tensor(done.heatmap, dtype=torch.float32, device=coarse_map.device)
    return heatmap, done.refined, done.rounds


def _coarse_so_far(partial: PartialCallback, coarse: PatchGrid, fine: PatchGrid
                   ) -> Callable[[Tensor, int], None]:
    """An ``on_batch`` for the coarse stage: its values so far on the fine grid, nearest cell."""
    rows = _nearest(fine.rows, coarse.rows)
    cols = _nearest(fine.cols, coarse.cols)

    def report(out: Tensor, filled: int) -> None:
        so_far = np.full(coarse.size, np.nan, dtype=np.float32)
        so_far[:filled] = out[:filled].cpu().numpy()
        partial(so_far.reshape(coarse.shape)[np.ix_(rows, cols)])

    return report


def _nearest(fine: npt.NDArray[np.int64], coarse: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
    """For each fine position, the index of the coarse position nearest it."""
    nearest: npt.NDArray[np.intp] = np.abs(fine[:, None] - coarse[None, :]).argmin(axis=1)
    return nearest


def check_drilldown(ratio: float, coarse_stride: int, tolerance: float | None = None) -> None:
    """Raises InvalidParamsError unless ``0 < ratio <= 1``, ``coarse_stride >= 1`` and
    ``tolerance``, if given, is in ``[0, 1]``."""
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 < ratio <= 1.0:
        raise InvalidParamsError(f"drilldown_ratio must be in (0, 1], got {ratio!r}")
    if isinstance(coarse_stride, bool) or not isinstance(coarse_stride, int) or coarse_stride < 1:
        raise InvalidParamsError(
            f"coarse_stride must be a positive integer, got {coarse_stride!r}")
    if tolerance is not None and (isinstance(tolerance, bool)
                                  or not isinstance(tolerance, int | float)
                                  or not 0.0 <= tolerance <= 1.0):
        raise InvalidParamsError(f"drilldown_tolerance must be in [0, 1], got {tolerance!r}")


def check_bisection_strides(tolerance: float | None, coarse_stride: int, stride: int) -> None:
    """Raises InvalidParamsError if bisection (a ``tolerance``) would start off the fine grid."""
    if tolerance is not None and coarse_stride % stride:
        raise InvalidParamsError(
            f"drilldown_tolerance needs a coarse_stride that is a multiple of the stride "
            f"({stride}), got {coarse_stride}")


def interpolate_coarse(coarse: torch.Tensor, coarse_grid: PatchGrid,
                       fine_grid: PatchGrid) -> torch.Tensor:
    """Bilinear estimate of the fine heatmap from the coarse one (``Tensor[H_M, W_M]``).

    Both grids place cell ``(i, j)`` at input pixel ``(i*S, j*S)``; beyond the
    last coarse position the edge value holds.
    """
    def normalised(fine: npt.NDArray[np.int64], coarse_last: int) -> torch.Tensor:
        position = torch.as_tensor(fine, dtype=torch.float32, device=coarse.device)
        if coarse_last == 0:
            return torch.zeros_like(position)
        return (position / coarse_last * 2.0 - 1.0).clamp(-1.0, 1.0)

    ys = normalised(fine_grid.rows, int(coarse_grid.rows[-1]))
    xs = normalised(fine_grid.cols, int(coarse_grid.cols[-1]))
    sample = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
    estimate = F.grid_sample(
        coarse[None, None].float(), sample[None], mode="bilinear", padding_mode="border",
        align_corners=True,
    )
    return estimate[0, 0]


def top_drop(estimate: torch.Tensor, ratio: float) -> torch.Tensor:
    """Flat indices of the ``ceil(ratio * n)`` positions with the lowest probability."""
    flat = estimate.flatten()
    count = drilldown_count(flat.numel(), ratio)
    return torch.topk(flat, count, largest=False, sorted=False).indices.sort().values


def drilldown_count(positions: int, ratio: float) -> int:
    """How many of ``positions`` fine positions a drill-down with ``ratio`` recomputes."""
    return min(positions, max(1, math.ceil(ratio * positions)))
