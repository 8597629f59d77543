"""How an occlusion run went: the one record the engine returns, the service stores
and serves, and the command line writes into heatmap.json.

It imports nothing heavy (no torch, no numpy), so the API, which loads no model,
describes its ``run`` document with this very class: the schema is derived from
these fields, not declared a second time. A field added later needs a default,
or jobs stored before it would no longer load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pydantic import ConfigDict, computed_field

from krypton.approximation import Approximation

__all__ = ["EngineMode", "RunStats"]

EngineMode = Literal["naive", "exact", "approximate"]


@dataclass(frozen=True)
class RunStats:
    """How a run went. FLOPs count convolutions only, as the KRYPTON paper does."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(use_attribute_docstrings=True)

    mode: EngineMode
    """What the engine ran: naive (one full inference per position), exact
    (incremental), or approximate (a tau below 1, or a drill-down). A request for
    approximate mode whose tuned settings are exact runs exact."""
    device: str
    """Where it ran (``cpu``, ``cuda:0``)."""
    positions: int
    """Occluded positions computed, a drill-down's coarse stage included."""
    batches: int
    """Batches of positions the run took (0: not recorded, a job stored by Krypton 0.1)."""
    batch_size: int
    """Positions per batch (0: not recorded, a job stored by Krypton 0.1)."""
    seconds: float
    """Wall-clock time of the occlusion run, without decoding or queueing."""
    input_shape: tuple[int, int]
    """``(height, width)`` of the model input the patch and stride are measured on."""
    heatmap_shape: tuple[int, int]
    """``(rows, columns)`` of the heatmap."""
    flops_full: int | None = None
    """Convolution FLOPs of one full inference; none for naive runs."""
    flops_incremental: int | None = None
    """Convolution FLOPs the run spent per position (windows rounded up to one size per
    layer, layers past the switch to full inference counted whole, a drill-down's two
    stages added up); none for naive runs."""
    theoretical_ratio: float | None = None
    """The paper's R: full over incremental convolution FLOPs for one patch at the
    image centre, counting only the cells the patch changes (tau applied)."""
    approximation: Approximation = field(default_factory=Approximation)
    """How far the run departed from exact (exact: tau 1, no drill-down)."""
    refined_positions: int | None = None
    """Drill-down only: fine positions recomputed after the coarse stage."""
    refine_rounds: int | None = None
    """Drill-down only: rounds of refinement; bisection escalates one level per round."""

    @property
    def positions_per_second(self) -> float:
        """Throughput of the run; infinite for a run too short to time."""
        return self.positions / self.seconds if self.seconds > 0 else float("inf")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def flops_ratio(self) -> float | None:
        """Full over incremental convolution FLOPs per position: the saving this run
        made over naive inference."""
        if self.flops_full is None or not self.flops_incremental:
            return None
        return self.flops_full / self.flops_incremental
