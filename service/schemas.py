"""The API's documents (pydantic v2). The job document is also what Redis stores."""

from __future__ import annotations

import datetime as dt
import re
import secrets
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from krypton.core.plans import HeatmapPlan, TuningPlan
from krypton.core.records import JobKind, Prediction, PredictParams
from krypton.models.windows import AppliedWindow, Window
from krypton.run_stats import RunStats

__all__ = [
    "DatasetInfo",
    "Delivery",
    "InstanceRef",
    "PacsLink",
    "StoredInstance",
    "Job",
    "JobStatus",
    "ModelInfo",
    "PredictResponse",
    "JobView",
    "ReadyReport",
    "ClassProbability",
    "Timings",
    "WorkerInfo",
    "job_created_at",
    "new_job_id",
    "utcnow",
]

def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


_JOB_ID = re.compile(r"[0-9a-f]{32}")


def new_job_id() -> str:
    """32 hex digits: the creation time in milliseconds (12), then 80 random bits.

    The time lets the store tell a job it lost with its data from one that
    never existed (:meth:`~krypton.service.store.JobQueue.lost`).
    """
    return f"{int(utcnow().timestamp() * 1000):012x}{secrets.token_hex(10)}"


def job_created_at(job_id: str) -> dt.datetime | None:
    """When a job of this id was made, or ``None`` for an id :func:`new_job_id` did not make."""
    if not _JOB_ID.fullmatch(job_id):
        return None
    return dt.datetime.fromtimestamp(int(job_id[:12], 16) / 1000, dt.UTC)


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed)


class Timings(BaseModel):
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    @property
    def queue_wait_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.started_at - self.created_at).total_seconds()

    @property
    def compute_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
"""A DICOM UID: digits and dots, at most 64 characters."""
Uid = Annotated[str, Field(pattern=UID_PATTERN, max_length=64)]


class InstanceRef(BaseModel):
    """One DICOM instance in a PACS, by its UIDs."""

    study_instance_uid: Uid
    series_instance_uid: Uid
    sop_instance_uid: Uid


class PacsLink(BaseModel):
    """Where a heatmap job's image came from, and where its DICOM results go."""

    source: str | None = Field(description="The PACS the image was read from; null when a "
                               "PACS sent it to /dicomweb/studies.")
    instance: InstanceRef
    results_to: str | None = Field(description="The PACS the results are stored in (STOW-RS, "
                                   "into the image's study); null: none.")


Role = Literal["parametric_map", "overlay", "report"]
"""What a DICOM result is: the Parametric Map, the overlay (Secondary Capture), the report."""


class StoredInstance(BaseModel):
    """A result object stored in a PACS."""

    role: Role
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str


class Delivery(BaseModel):
    """What became of storing a job's DICOM results in a PACS."""

    pacs: str
    status: Literal["stored", "failed", "not_made"]
    attempts: int = Field(description="STOW-RS requests made.")
    study_instance_uid: str | None = None
    instances: list[StoredInstance] = Field(default_factory=list)
    error: dict[str, Any] | None = Field(
        default=None, description="Problem document: why nothing was stored (after "
        "retries for an unreachable PACS), or why no DICOM result exists for this image.")


def run_of_0_1(run: Any) -> Any:
    """A job's ``run`` as Krypton 0.1 stored it, in today's shape, so that jobs kept in
    Redis across an upgrade are still served and can be deleted.

    0.1 kept a flat copy of the run: one input side, the knobs side by side, no
    batches. Those it did not record read as 0 (``batches``, ``batch_size``), and
    its FLOP ratio is not carried over, since 0.1 kept the ratio without the
    counts it is made of. Anything else passes through unchanged.
    """
    if not isinstance(run, dict) or "input_size" not in run:
        return run
    side = run["input_size"]
    knobs = ("tau", "drilldown_ratio", "coarse_stride", "drilldown_tolerance")
    return {"mode": run.get("mode"), "device": run.get("device"),
            "positions": run.get("positions"), "batches": 0, "batch_size": 0,
            "seconds": run.get("seconds"), "input_shape": (side, side),
            "heatmap_shape": run.get("heatmap_shape"),
            "approximation": {name: run[name] for name in knobs if run.get(name) is not None},
            "refined_positions": run.get("refined_positions"),
            "refine_rounds": run.get("refine_rounds")}


class Job(BaseModel):
    """A unit of work and everything known about it so far."""

    model_config = ConfigDict(use_enum_values=False)

    id: str
    kind: JobKind = JobKind.heatmap
    status: JobStatus = JobStatus.queued
    progress: float = Field(default=0.0, ge=0.0, le=1.0)
    params: Annotated[HeatmapPlan | PredictParams | TuningPlan,
                      Field(discriminator="kind")]
    images: int = Field(default=1, description="How many images the job was given.")
    image_size: tuple[int, int] | None = Field(
        default=None, description="Uploaded image height and width, in pixels.")
    dicom: bool = Field(default=False, description="The upload was a DICOM file: the "
                        "heatmap is also offered as DICOM in its study, unless "
                        "dicom_unmade says why not.")
    dicom_unmade: str | None = Field(
        default=None, description="For DICOM input: why its results are not made as DICOM "
        "(a frame of a multi-frame image, a source header without the identity a result "
        "references).")
    timings: Timings = Field(default_factory=lambda: Timings(created_at=utcnow()))
    prediction: Prediction | None = None
    probabilities: list[float] | None = None
    run: RunStats | None = None
    window: AppliedWindow | None = Field(
        default=None, description="For a grayscale DICOM image: the window that mapped its "
        "values to what the model saw (the model's, the file's, or the image's own range).")
    tuned: dict[str, Any] | None = Field(
        default=None, description="The dataset config a tuning job wrote.")
    error: dict[str, Any] | None = Field(
        default=None, description="RFC 9457 problem document of a failed job.")
    attempts: int = 0
    worker: str | None = None
    expires_at: dt.datetime | None = None
    owner: str | None = Field(
        default=None, description="Id of the API key that made the job; None running open.")
    account: str | None = Field(
        default=None, description="Whose quotas the job counts against: the key's id, or "
        "running open the client's address.")
    random_weights: bool = Field(
        default=False, description="The model has untrained (seeded random) weights: its "
        "answer shows the pipeline working and is not a diagnosis.")
    pacs: PacsLink | None = Field(
        default=None, description="The image's PACS instance, and where results go.")
    delivery: Delivery | None = Field(
        default=None, description="Storing the results in the PACS: what was stored where, "
        "or why not. Set when the job finishes.")

    @field_validator("run", mode="before")
    @classmethod
    def _run_of_an_earlier_release(cls, run: Any) -> Any:
        return run_of_0_1(run)


class JobView(BaseModel):
    """The job document clients see: the job plus derived timings and links."""

    id: str
    kind: JobKind
    status: JobStatus
    progress: float
    params: HeatmapPlan | PredictParams | TuningPlan
    prediction: Prediction | None
    run: RunStats | None
    window: AppliedWindow | None
    tuned: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    queue_wait_seconds: float | None
    compute_seconds: float | None
    expires_at: dt.datetime | None
    dicom: bool
    dicom_unmade: str | None
    random_weights: bool
    images: int
    attempts: int
    worker: str | None
    pacs: PacsLink | None
    delivery: Delivery | None
    links: dict[str, str]

    @classmethod
    def of(cls, job: Job, links: dict[str, str]) -> JobView:
        t = job.timings
        return cls(id=job.id, kind=job.kind, status=job.status, progress=job.progress,
                   params=job.params, prediction=job.prediction, run=job.run,
                   window=job.window, tuned=job.tuned,
                   error=job.error, created_at=t.created_at, started_at=t.started_at,
                   finished_at=t.finished_at, queue_wait_seconds=t.queue_wait_seconds,
                   compute_seconds=t.compute_seconds, expires_at=job.expires_at,
                   dicom=job.dicom, dicom_unmade=job.dicom_unmade,
                   random_weights=job.random_weights, images=job.images,
                   attempts=job.attempts, worker=job.worker, pacs=job.pacs,
                   delivery=job.delivery, links=links)


class ClassProbability(BaseModel):
    class_index: int
    label: str
    probability: float


class PredictResponse(BaseModel):
    model: str
    prediction: ClassProbability
    probabilities: list[ClassProbability]
    random_weights: bool


class ModelInfo(BaseModel):
    name: str
    architecture: str
    labels: list[str]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    window: Window | Literal["image"] | None = Field(
        default=None, description="The model's window for grayscale DICOM; null: the file's "
        "window, else the image's own range.")
    random_weights: bool
    description: str
    datasets: list[str]


class DatasetInfo(BaseModel):
    name: str
    model: str
    description: str
    tuned: dict[str, Any] | None = Field(
        default=None, description="The tuned approximation config; null until tuned, and "
        "while the config is stale.")
    stale: str | None = Field(
        default=None, description="Why the dataset's config is not used: it was tuned for "
        "other weights than the model is served with.")


class WorkerInfo(BaseModel):
    name: str
    device: str
    pid: int
    host: str
    started_at: dt.datetime
    jobs_done: int
    current_job: str | None
    weights: dict[str, str] = Field(
        default_factory=dict, description="The weights id of each model the worker has "
        "loaded (a checkpoint's SHA-256): what tuned dataset configs are checked against.")


class ReadyReport(BaseModel):
    status: Literal["ready", "not ready"]
    queue: str
    queue_ok: bool = Field(description="The queue (Redis) answers.")
    claimable: bool = Field(description="Workers can claim from it: it holds the consumer "
                            "group, which a Redis that lost its data lacks until a worker "
                            "makes it again.")
    live_workers: int
    workers: list[WorkerInfo] | None = Field(
        default=None, description="Each worker's details (host, pid, current job): for an "
        "admin key only.")
