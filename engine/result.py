"""What an occlusion run returns: the heatmap, the prediction, and how it ran."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from krypton.approximation import Approximation

__all__ = ["OcclusionResult", "RunStats"]


@dataclass(frozen=True)
class RunStats:
    """How a run went. FLOPs count convolutions only, as the KRYPTON paper does.

    ``flops_incremental`` is what this run spent per heatmap position (windows
    rounded up to one size per layer, layers past the switch to full inference
    counted whole, a drill-down's two stages added up), so ``flops_ratio`` is
    the effective saving over naive inference. ``theoretical_ratio`` is the
    paper's ``R``: full over incremental conv FLOPs for one patch at the image
    centre, counting only the cells the patch really changes (with ``tau``
    applied). Both are ``None`` for naive runs. ``positions`` counts every
    occluded position of the run, a drill-down's coarse stage included.
    """

    mode: str
    device: str
    positions: int
    batches: int
    batch_size: int
    seconds: float
    flops_full: int | None = None
    flops_incremental: int | None = None
    theoretical_ratio: float | None = None
    approximation: Approximation = field(default_factory=Approximation)
    """How far the run departed from exact (exact: ``tau`` 1, no drill-down)."""
    refined_positions: int | None = None
    """Drill-down only: fine positions recomputed after the coarse stage."""
    refine_rounds: int | None = None
    """Drill-down only: rounds of refinement; bisection escalates one level per round."""

    @property
    def positions_per_second(self) -> float:
        return self.positions / self.seconds if self.seconds > 0 else float("inf")

    @property
    def flops_ratio(self) -> float | None:
        """Full over incremental conv FLOPs per position for this run."""
        if self.flops_full is None or not self.flops_incremental:
            return None
        return self.flops_full / self.flops_incremental


@dataclass(frozen=True)
class OcclusionResult:
    """An occlusion sensitivity heatmap and the prediction it explains.

    ``heatmap[i, j]`` is the softmax probability of ``target`` with the patch's
    top-left corner at input pixel ``(i * stride, j * stride)``.
    """

    heatmap: npt.NDArray[np.float32]
    target: int
    target_probability: float
    """Probability of ``target`` on the unoccluded image."""
    predicted_class: int
    predicted_probability: float
    patch_size: int
    stride: int
    stats: RunStats

    @property
    def drop(self) -> npt.NDArray[np.float32]:
        """``p(target | image) - heatmap``: high where the patch hides evidence."""
        return np.float32(self.target_probability) - self.heatmap
