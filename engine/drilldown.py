"""Adaptive drill-down: a coarse heatmap first, then the fine stride where it matters.

A wrapper around an engine, as Captum's ``NoiseTunnel`` wraps an attribution
method: it prepares the image once with the engine, occludes every position
of a coarse grid, estimates the fine heatmap from it by bilinear
interpolation, and recomputes at the fine stride only the ``ratio`` of
positions where the estimate shows the largest probability drop. The other
positions keep the interpolated value.
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
from krypton.engine.errors import InvalidParamsError
from krypton.engine.patches import PatchGrid, PatchValue
from krypton.engine.result import OcclusionResult

__all__ = ["DrillDown", "check_drilldown", "drilldown_count", "interpolate_coarse", "top_drop"]


class DrillDown:
    """Occlusion at ``coarse_stride`` everywhere, then at the asked stride where it drops most.

    Args:
        engine: the engine that occludes both grids.
        ratio: fraction ``r`` of fine positions recomputed, ``0 < r <= 1``.
        coarse_stride: stride of the coarse stage, in input pixels.

    Example::

        >>> engine = IncrementalOcclusion(model)
        >>> DrillDown(engine, ratio=0.05, coarse_stride=15).attribute(image, 16, 4)
    """

    def __init__(self, engine: OcclusionEngine, *, ratio: float, coarse_stride: int) -> None:
        check_drilldown(ratio, coarse_stride)
        self.engine, self.ratio, self.coarse_stride = engine, float(ratio), coarse_stride

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
        then that map with the refined cells filled in after every fine batch.
        """
        engine = self.engine
        loop = BatchLoop(batch_size, engine.device, progress, should_stop)
        with torch.inference_mode():
            prepared = engine.prepare(image, patch_value=patch_value, target=target)
            fine = PatchGrid(prepared.height, prepared.width, patch_size, stride)
            coarse = PatchGrid(prepared.height, prepared.width, patch_size, self.coarse_stride)
            refined = drilldown_count(fine.size, self.ratio)
            loop.total = coarse.size + refined
            coarse_map = engine.occlude(
                prepared, coarse, loop, tau=tau,
                on_batch=None if partial is None else _coarse_so_far(partial, coarse, fine),
            ).view(coarse.shape)
            heatmap = interpolate_coarse(coarse_map, coarse, fine)
            chosen = top_drop(heatmap, self.ratio)
            if partial is not None:
                partial(heatmap.cpu().numpy().astype(np.float32))

            def refined_so_far(out: Tensor, filled: int) -> None:
                if partial is not None:
                    so_far = heatmap.clone()
                    so_far.view(-1)[chosen[:filled]] = out[:filled]
                    partial(so_far.cpu().numpy().astype(np.float32))

            heatmap.view(-1)[chosen] = engine.occlude(prepared, fine, loop, positions=chosen,
                                                      tau=tau, on_batch=refined_so_far)
        return engine.result(prepared, fine, heatmap, loop, tau=tau,
                             drilldown_ratio=self.ratio, coarse_stride=self.coarse_stride,
                             refined=refined)


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


def check_drilldown(ratio: float, coarse_stride: int) -> None:
    """Raises InvalidParamsError unless ``0 < ratio <= 1`` and ``coarse_stride`` >= 1."""
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 < ratio <= 1.0:
        raise InvalidParamsError(f"drilldown_ratio must be in (0, 1], got {ratio!r}")
    if isinstance(coarse_stride, bool) or not isinstance(coarse_stride, int) or coarse_stride < 1:
        raise InvalidParamsError(
            f"coarse_stride must be a positive integer, got {coarse_stride!r}")


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
