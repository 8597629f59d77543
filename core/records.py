"""What a job records of its work, apart from how the service stores and serves it.

The worker stores these in the job document, the API serves them, and the
command line writes the same into its heatmap.json.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter

from krypton.core.plans import HeatmapPlan
from krypton.run_stats import RunStats

__all__ = ["JobKind", "PredictParams", "Prediction", "heatmap_metadata"]


class JobKind(StrEnum):
    heatmap = "heatmap"
    predict = "predict"
    tuning = "tuning"


class PredictParams(BaseModel):
    kind: Literal["predict"] = "predict"
    model: str
    frame: int | None = None


class Prediction(BaseModel):
    """The classifier's answer on the unoccluded image, and the class explained."""

    predicted_class: int
    predicted_label: str
    predicted_probability: float
    target_class: int
    target_label: str
    target_probability: float


_RUN = TypeAdapter(RunStats)


def heatmap_metadata(job_id: str | None, view: str, params: HeatmapPlan,
                     prediction: Prediction, random_weights: bool,
                     run: RunStats | None) -> dict[str, Any]:
    """What heatmap.json says beside the array, from the service and the command line alike
    (``job_id`` is ``None`` for the command line's)."""
    return {"id": job_id, "view": view, "params": params.model_dump(),
            "prediction": prediction.model_dump(), "random_weights": random_weights,
            "run": _RUN.dump_python(run, mode="json") if run else None}
