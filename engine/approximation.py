"""Running an :class:`~krypton.approximation.Approximation` on an engine.

The value itself (its knobs and every rule they obey) is
:mod:`krypton.approximation`, which imports no torch so that the API can
validate requests with it; here it meets the engine.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from krypton.approximation import Approximation
from krypton.engine.base import OcclusionEngine
from krypton.engine.drilldown import DrillDown
from krypton.engine.errors import InvalidParamsError
from krypton.engine.result import OcclusionResult

__all__ = ["Approximation", "approximate", "coarse_stride_for_speedup"]


def approximate(approximation: Approximation, engine: OcclusionEngine, image: Tensor,
                patch_size: int, stride: int, **options: Any) -> OcclusionResult:
    """``engine``'s heatmap of ``image`` under ``approximation``.

    ``options`` are :meth:`OcclusionEngine.attribute`'s (target, patch
    colour, batch size, progress, should_stop, partial).

    Raises:
        ApproximationError: bisection with a coarse stride off the fine grid.
    """
    if approximation.drills_down:
        return DrillDown(engine, approximation).attribute(image, patch_size, stride, **options)
    return engine.attribute(image, patch_size, stride, tau=approximation.tau, **options)


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
