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

from krypton.approximation import Approximation
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

__all__ = ["DrillDown", "drilldown_count", "interpolate_coarse", "top_drop"]


class DrillDown:
    """Occlusion at ``coarse_stride`` everywhere, then at the asked stride where it matters.

    Args:
        engine: the engine that occludes both grids.
        approximation: a drill-down: its ``drilldown_ratio`` is the fraction
            ``r`` of fine positions recomputed (with a tolerance, the most that
            may be), its ``coarse_stride`` the coarse stage's stride in input
            pixels, its ``drilldown_tolerance`` (if any) refines by bisection
            until measured points depart from the interpolation by at most
            that share of the coarse values' range; its ``tau`` applies to both
            stages.

    Raises:
        InvalidParamsError: ``approximation`` does not drill down.

    Example::

        >>> engine = IncrementalOcclusion(model)
        >>> DrillDown(engine, Approximation(1.0, 0.05, 16)).attribute(image, 16, 4)
        >>> DrillDown(engine, Approximation(1.0, 0.5, 16, 0.1)).attribute(image, 16, 4)
    """

    def __init__(self, engine: OcclusionEngine, approximation: Approximation) -> None:
        if approximation.drilldown_ratio is None or approximation.coarse_stride is None:
            raise InvalidParamsError(f"{approximation.describe()} runs no drill-down")
        self.engine, self.approximation = engine, approximation

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
    ) -> OcclusionResult:
        """The drilled-down heatmap; arguments as :meth:`OcclusionEngine.attribute`.

        ``partial`` gets, after every batch of the coarse stage, the coarse
        values so far, each on the fine cells nearest it (NaN where none is
        done yet): the coarse stage is most of the work, and a clinician sees
        the map form from the first batch. Then the interpolated coarse map,
        then that map with the refined cells filled in: after every fine batch
        for the ``ratio`` rule, after every round for bisection.
        """
        engine, approximation = self.engine, self.approximation.for_stride(stride)
        ratio, coarse_stride = approximation.drilldown_ratio, approximation.coarse_stride
        assert ratio is not None and coarse_stride is not None  # checked when made
        tau, tolerance = approximation.tau, approximation.drilldown_tolerance
        loop = BatchLoop(batch_size, engine.device, progress, should_stop)
        with torch.inference_mode():
            prepared = engine.prepare(image, patch_value=patch_value, target=target)
            fine = PatchGrid(prepared.height, prepared.width, patch_size, stride)
            coarse = PatchGrid(prepared.height, prepared.width, patch_size, coarse_stride)
            budget = drilldown_count(fine.size, ratio)
            loop.total = coarse.size + budget
            coarse_map = engine.occlude(
                prepared, coarse, loop, tau=tau,
                on_batch=None if partial is None else _coarse_so_far(partial, coarse, fine),
            ).view(coarse.shape)

            def measure(positions: Tensor, on_batch: Callable[[Tensor, int], None] | None = None
                        ) -> Tensor:
                return engine.occlude(prepared, fine, loop, positions=positions, tau=tau,
                                      on_batch=on_batch)

            if tolerance is None:
                heatmap, refined, rounds = _refine_lowest(coarse_map, coarse, fine, ratio,
                                                          measure, partial)
            else:
                heatmap, refined, rounds = _refine_by_bisection(
                    coarse_map, fine, coarse_stride // stride, tolerance, budget,
                    measure, partial)
                if progress is not None and loop.done < loop.total:
                    progress(loop.done, loop.done)  # spent less than the cap: done all the same
        return engine.result(prepared, fine, heatmap, loop, self.approximation,
                             refined=refined, rounds=rounds)


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
