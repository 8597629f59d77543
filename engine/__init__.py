"""Occlusion sensitivity heatmaps by incremental inference.

Knows nothing of HTTP, Redis or files: tensors in, heatmaps out.
"""

from krypton.approximation import Approximation, ApproximationError
from krypton.engine.approximation import approximate, coarse_stride_for_speedup
from krypton.engine.base import (
    OcclusionEngine,
    Output,
    PartialCallback,
    ProgressCallback,
    StopCheck,
)
from krypton.engine.drilldown import DrillDown
from krypton.engine.errors import (
    EngineError,
    InvalidParamsError,
    RunStopped,
    UnsupportedModelError,
)
from krypton.engine.incremental import IncrementalOcclusion
from krypton.engine.occlusion import MODES, kept_engine, make_engine, occlusion
from krypton.engine.patches import PatchGrid, PatchValue
from krypton.engine.quality import heatmap_ssim, points_at
from krypton.engine.reference import ReferenceOcclusion
from krypton.engine.result import OcclusionResult
from krypton.engine.tuning import FrontierPoint, TuningResult, tune
from krypton.run_stats import RunStats

__all__ = [
    "MODES",
    "Approximation",
    "ApproximationError",
    "DrillDown",
    "EngineError",
    "FrontierPoint",
    "IncrementalOcclusion",
    "InvalidParamsError",
    "OcclusionEngine",
    "OcclusionResult",
    "Output",
    "PartialCallback",
    "PatchGrid",
    "PatchValue",
    "ProgressCallback",
    "ReferenceOcclusion",
    "RunStats",
    "RunStopped",
    "StopCheck",
    "TuningResult",
    "UnsupportedModelError",
    "approximate",
    "coarse_stride_for_speedup",
    "heatmap_ssim",
    "kept_engine",
    "make_engine",
    "occlusion",
    "points_at",
    "tune",
]
