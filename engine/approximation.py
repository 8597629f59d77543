"""Approximate inference settings: how far a run may depart from the exact heatmap.

Two independent approximations (docs/design.md, "Approximate inference"):

* Projective-field thresholding: ``tau`` caps each layer's recomputed region
  at that fraction of the layer's side, centred on the region. Cells beyond
  the cap keep their original activations. ``tau = 1`` is exact.
* Adaptive drill-down: a coarse heatmap at ``coarse_stride`` first; then the
  requested stride only at the ``drilldown_ratio`` of positions where the
  coarse map, interpolated, shows the largest probability drop; or, with a
  ``drilldown_tolerance``, wherever bisection finds the interpolation off by
  more than that share of the map's range, at most ``drilldown_ratio`` of the
  positions. The other positions keep the interpolated coarse value
  (:class:`~krypton.engine.drilldown.DrillDown`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from krypton.engine.base import OcclusionEngine, check_tau
from krypton.engine.drilldown import DrillDown, check_drilldown
from krypton.engine.errors import InvalidParamsError
from krypton.engine.result import OcclusionResult

__all__ = ["Approximation", "coarse_stride_for_speedup"]


@dataclass(frozen=True)
class Approximation:
    """How far an approximate run may depart from the exact heatmap.

    Args:
        tau: projective-field threshold, ``0 < tau <= 1``; 1 is exact.
        drilldown_ratio: fraction ``r`` of fine positions recomputed after the
            coarse stage, ``0 < r <= 1``; ``None`` runs no drill-down.
        coarse_stride: stride of the coarse stage in input pixels; required
            with ``drilldown_ratio``.
        drilldown_tolerance: refine by bisection to this share of the coarse
            map's range, ``drilldown_ratio`` being the cap; ``None`` refines
            the ratio with the largest drop.
    """

    tau: float = 1.0
    drilldown_ratio: float | None = None
    coarse_stride: int | None = None
    drilldown_tolerance: float | None = None

    def __post_init__(self) -> None:
        check_tau(self.tau)
        if (self.drilldown_ratio is None) != (self.coarse_stride is None):
            raise InvalidParamsError(
                "drill-down needs both drilldown_ratio and coarse_stride, or neither"
            )
        if self.drilldown_tolerance is not None and not self.drills_down:
            raise InvalidParamsError(
                "drilldown_tolerance needs drilldown_ratio (its cap) and coarse_stride")
        if self.drilldown_ratio is not None and self.coarse_stride is not None:
            check_drilldown(self.drilldown_ratio, self.coarse_stride, self.drilldown_tolerance)

    @classmethod
    def from_text(cls, text: str) -> Approximation:
        """``TAU/R/COARSE[/TOLERANCE]``, ``-`` for a knob not set: ``1/0.05/16``,
        ``0.5/-/-``, ``1/0.5/16/0.1`` (bisection), as benchmarks take settings.

        Raises:
            InvalidParamsError: not that form, or bad values.
        """
        fields = text.split("/")
        if len(fields) not in (3, 4):
            raise InvalidParamsError(
                f"a setting is TAU/R/COARSE[/TOLERANCE], e.g. 1/0.05/16 or 0.5/-/-, got {text!r}")
        try:
            tau, ratio, coarse, tolerance = (*fields, "-")[:4]
            return cls(float(tau), None if ratio == "-" else float(ratio),
                       None if coarse == "-" else int(coarse),
                       None if tolerance == "-" else float(tolerance))
        except ValueError as exc:
            raise InvalidParamsError(f"bad setting {text!r}: {exc}") from exc

    @property
    def drills_down(self) -> bool:
        return self.drilldown_ratio is not None

    @property
    def is_exact(self) -> bool:
        return self.tau == 1.0 and not self.drills_down

    def attribute(self, engine: OcclusionEngine, image: Tensor, patch_size: int, stride: int,
                  **options: Any) -> OcclusionResult:
        """``engine``'s heatmap of ``image`` under this approximation.

        ``options`` are :meth:`OcclusionEngine.attribute`'s (target, patch
        colour, batch size, progress, should_stop).
        """
        occluder: OcclusionEngine | DrillDown = engine
        if self.drills_down:
            assert self.drilldown_ratio is not None and self.coarse_stride is not None
            occluder = DrillDown(engine, ratio=self.drilldown_ratio,
                                 coarse_stride=self.coarse_stride,
                                 tolerance=self.drilldown_tolerance)
        return occluder.attribute(image, patch_size, stride, tau=self.tau, **options)


def coarse_stride_for_speedup(fine_stride: int, ratio: float, speedup: float) -> int:
    """Stage-1 stride giving an ideal drill-down speedup ``t`` (docs/design.md).

    ``S1 = S2 * sqrt(t / (1 - r*t))``, from ``t = S1^2 / (S2^2 + r*S1^2)``,
    rounded to a multiple of ``S2``: then every coarse position is also a fine
    one, so the interpolation is anchored on exact fine values. Measured on a
    trained ResNet18 (patch 16, stride 4, 12 unseen images), coarse stride 16
    kept a 10th-percentile SSIM of 0.80 where 11, at nearly twice the cost,
    kept 0.64 (BENCHMARKS.md).

    Raises:
        InvalidParamsError: ``r * t >= 1``: no coarse stride reaches that speedup.
    """
    if ratio * speedup >= 1.0:
        raise InvalidParamsError(
            f"a drill-down ratio of {ratio} cannot give a {speedup}x speedup (needs r*t < 1)"
        )
    multiple = round(math.sqrt(speedup / (1.0 - ratio * speedup)))
    return fine_stride * max(1, multiple)
