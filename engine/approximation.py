"""Approximate inference settings, and the drill-down that trades positions for speed.

Two independent approximations (DESIGN.md, points 2 and 3):

* Projective-field thresholding: ``tau`` caps each layer's recomputed region
  at that fraction of the layer's side, centred on the region. Cells beyond
  the cap keep their original activations. ``tau = 1`` is exact.
* Adaptive drill-down: a coarse heatmap at ``coarse_stride`` first; then the
  requested stride only at the ``drilldown_ratio`` of positions where the
  coarse map, interpolated, shows the largest probability drop. The other
  positions keep the interpolated coarse value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from krypton.engine.errors import InvalidParamsError
from krypton.engine.patches import PatchGrid

__all__ = [
    "Approximation",
    "coarse_stride_for_speedup",
    "drilldown_count",
    "interpolate_coarse",
    "top_drop",
]


@dataclass(frozen=True)
class Approximation:
    """How far an approximate run may depart from the exact heatmap.

    Args:
        tau: projective-field threshold, ``0 < tau <= 1``; 1 is exact.
        drilldown_ratio: fraction ``r`` of fine positions recomputed after the
            coarse stage, ``0 < r <= 1``; ``None`` runs no drill-down.
        coarse_stride: stride of the coarse stage in input pixels; required
            with ``drilldown_ratio``.
    """

    tau: float = 1.0
    drilldown_ratio: float | None = None
    coarse_stride: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tau, (int, float)) or not 0.0 < float(self.tau) <= 1.0:
            raise InvalidParamsError(f"tau must be in (0, 1], got {self.tau!r}")
        if (self.drilldown_ratio is None) != (self.coarse_stride is None):
            raise InvalidParamsError(
                "drill-down needs both drilldown_ratio and coarse_stride, or neither"
            )
        if self.drilldown_ratio is not None and not 0.0 < self.drilldown_ratio <= 1.0:
            raise InvalidParamsError(
                f"drilldown_ratio must be in (0, 1], got {self.drilldown_ratio!r}"
            )
        if self.coarse_stride is not None and (
            not isinstance(self.coarse_stride, int) or self.coarse_stride < 1
        ):
            raise InvalidParamsError(
                f"coarse_stride must be a positive integer, got {self.coarse_stride!r}"
            )

    @property
    def drills_down(self) -> bool:
        return self.drilldown_ratio is not None

    @property
    def is_exact(self) -> bool:
        return self.tau == 1.0 and not self.drills_down


def coarse_stride_for_speedup(fine_stride: int, ratio: float, speedup: float) -> int:
    """Stage-1 stride giving an ideal drill-down speedup ``t`` (DESIGN.md, point 3).

    ``S1 = S2 * sqrt(t / (1 - r*t))``, from ``t = S1^2 / (S2^2 + r*S1^2)``.

    Raises:
        InvalidParamsError: ``r * t >= 1``: no coarse stride reaches that speedup.
    """
    if ratio * speedup >= 1.0:
        raise InvalidParamsError(
            f"a drill-down ratio of {ratio} cannot give a {speedup}x speedup (needs r*t < 1)"
        )
    return max(fine_stride, round(fine_stride * math.sqrt(speedup / (1.0 - ratio * speedup))))


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
