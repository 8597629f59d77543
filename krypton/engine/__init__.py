"""Occlusion sensitivity heatmaps by incremental inference.

Knows nothing of HTTP, Redis or files: tensors in, heatmaps out.
"""

from krypton.engine.base import Occluder, OcclusionEngine, ProgressCallback
from krypton.engine.errors import EngineError, InvalidParamsError, UnsupportedModelError
from krypton.engine.incremental import IncrementalOcclusion
from krypton.engine.occlusion import MODES, make_engine, occlusion
from krypton.engine.patches import PatchGrid, PatchValue
from krypton.engine.reference import ReferenceOcclusion
from krypton.engine.result import OcclusionResult, RunStats

__all__ = [
    "MODES",
    "EngineError",
    "IncrementalOcclusion",
    "InvalidParamsError",
    "OcclusionEngine",
    "OcclusionResult",
    "Occluder",
    "PatchGrid",
    "PatchValue",
    "ProgressCallback",
    "ReferenceOcclusion",
    "RunStats",
    "UnsupportedModelError",
    "make_engine",
    "occlusion",
]
