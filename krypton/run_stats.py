"""How an occlusion run went: the one record the engine returns, the service stores
and serves, and the command line writes into heatmap.json.

It imports nothing heavy (no torch, no numpy), so the API, which loads no model,
describes its ``run`` document with this very class: the schema is derived from
these fields, not declared a second time.
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
    """How a run went. FLOPs count convolutions only, as the KRYPTON paper does.

    ``mode`` is what the engine ran: ``naive``, ``exact`` (incremental), or
    ``approximate`` (a ``tau`` below 1 or a drill-down). ``flops_incremental``
    is what the run spent per heatmap position (windows rounded up to one size
    per layer, layers past the switch to full inference counted whole, a
    drill-down's two stages added up), so ``flops_ratio`` is the effective
    saving over naive inference. ``theoretical_ratio`` is the paper's ``R``:
    full over incremental conv FLOPs for one patch at the image centre, counting
    only the cells the patch really changes (with ``tau`` applied). The FLOP
    figures are ``None`` for naive runs. ``positions`` counts every occluded
    position, a drill-down's coarse stage included.
    """

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(use_attribute_docstrings=True)

    mode: EngineMode
    device: str
    positions: int
    batches: int
    batch_size: int
    seconds: float
    input_shape: tuple[int, int]
    """``(height, width)`` of the model input the patch and stride are measured on."""
    heatmap_shape: tuple[int, int]
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

    @computed_field  # type: ignore[prop-decorator]
    @property
    def flops_ratio(self) -> float | None:
        """Full over incremental conv FLOPs per position for this run."""
        if self.flops_full is None or not self.flops_incremental:
            return None
        return self.flops_full / self.flops_incremental
