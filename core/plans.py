"""Heatmap and tuning requests, resolved: what the engine runs, decided in one place.

The API's routes, the worker, ``krypton explain`` and the benchmarks all turn
(model, dataset, patch size, stride, colour, target, mode) into a
:class:`HeatmapPlan` with :func:`resolve_heatmap`, so the same request gives
the same heatmap wherever it is made: the same defaults, the same deployed
preprocessing, the same approximation knobs. A plan is immutable and plain
data (it travels in the job document), and resolving one loads no torch.

What the API cannot check without the weights, the worker checks when it runs
the plan: that a dataset's tuned config was made for the checkpoint it has
loaded (:meth:`HeatmapPlan.check_weights`).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from krypton.approximation import Approximation, ApproximationError, quality_target
from krypton.models import (
    DatasetConfig,
    DatasetConfigError,
    InvalidArgumentError,
    get_model_spec,
    patch_value,
)
from krypton.models.deployment import DeployedModel, Deployment

__all__ = [
    "DEFAULT_PATCH_SIZE",
    "DEFAULT_STRIDE",
    "HeatmapPlan",
    "MAX_TUNING_IMAGES",
    "MIN_TUNING_IMAGES",
    "Mode",
    "TuningPlan",
    "WorkTooLargeError",
    "positions",
    "resolve_heatmap",
    "resolve_tuning",
    "stale_reason",
    "work",
]

DEFAULT_PATCH_SIZE = 16
"""Patch side in model-input pixels when neither the request nor a tuned dataset says."""
DEFAULT_STRIDE = 8
"""Stride in model-input pixels when neither the request nor a tuned dataset says."""

MIN_TUNING_IMAGES = 2
"""One to tune on and one held out to check the chosen setting."""
MAX_TUNING_IMAGES = 16
"""Sample images one tuning request may carry; it bounds the request body too."""
MIN_TUNING_GRID = 3
"""Positions a side: tuning scores heatmaps by SSIM, whose window needs 3x3."""

Mode = Literal["exact", "approximate", "naive"]


class WorkTooLargeError(InvalidArgumentError):
    """A heatmap that would book more of a worker than the service allows one job."""


class HeatmapPlan(BaseModel):
    """What to explain and how; patch and stride are in model-input pixels."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["heatmap"] = "heatmap"
    model: str = Field(description="The deployed model's name.")
    dataset: str | None = None
    patch_size: int
    stride: int
    patch_color: str = "gray"
    target_class: int | None = Field(default=None, description="None: the predicted class.")
    mode: Mode = "exact"
    tau: float = Field(default=1.0, description="Projective-field threshold; 1 is exact.")
    drilldown_ratio: float | None = None
    coarse_stride: int | None = None
    drilldown_tolerance: float | None = Field(
        default=None, description="Refine by bisection to this share of the coarse map's "
                                  "range, drilldown_ratio the cap.")
    tuned_for: str | None = Field(
        default=None, description="Identity of the weights the dataset's config was tuned on.")
    frame: int | None = Field(
        default=None, description="Which frame of a multi-frame DICOM image (1-based).")

    @model_validator(mode="after")
    def _knobs_obey_the_rules(self) -> HeatmapPlan:
        self.approximation.for_stride(self.stride)
        return self

    @property
    def approximation(self) -> Approximation:
        """The knobs as the one value every part of Krypton checks and runs."""
        return Approximation(self.tau, self.drilldown_ratio, self.coarse_stride,
                             self.drilldown_tolerance)

    def check_weights(self, weights_id: str | None) -> None:
        """Refuse to run a dataset's tuned knobs on weights they were not tuned on
        (``None``: the weights are not known yet, nothing to refuse).

        Raises:
            DatasetConfigError: naming the dataset and both identities in full.
        """
        reason = stale_reason(self.dataset, self.tuned_for, weights_id, self.model)
        if reason is not None:
            raise DatasetConfigError(reason)


def stale_reason(dataset: str | None, tuned_for: str | None, weights_id: str | None,
                 model: str) -> str | None:
    """Why a config tuned for ``tuned_for`` cannot run on ``weights_id``; ``None`` if it can."""
    if tuned_for is None or weights_id is None or tuned_for == weights_id:
        return None
    return (f"dataset {dataset!r} was tuned for checkpoint {tuned_for}, not {weights_id}, "
            f"the weights model {model!r} is served with; tune it again for this checkpoint")


class TuningPlan(BaseModel):
    """A tuning job: which dataset's approximation to tune, for which heatmap geometry."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["tuning"] = "tuning"
    model: str
    dataset: str
    patch_size: int
    stride: int
    target_ssim: float
    score: Literal["mean", "min"] = Field(
        default="mean", description="Hold the images' mean SSIM to the target, or each image's.")
    patch_color: str = "gray"
    holdout: int | None = Field(
        default=None, description="Images held out for the final check; None: half.")


def resolve_heatmap(
    deployment: Deployment,
    *,
    model: str | None = None,
    dataset: str | None = None,
    config: DatasetConfig | None = None,
    patch_size: int | None = None,
    stride: int | None = None,
    patch_color: str = "gray",
    target_class: int | None = None,
    mode: Mode = "exact",
    tau: float | None = None,
    drilldown_ratio: float | None = None,
    coarse_stride: int | None = None,
    drilldown_tolerance: float | None = None,
    max_gflop: float | None = None,
    frame: int | None = None,
) -> HeatmapPlan:
    """The validated plan for one heatmap request.

    Args:
        deployment: what is served.
        model: a deployed model; default the dataset's, else the first deployed.
        dataset: a deployed dataset, whose tuned ``config`` (if any) gives the
            defaults for patch size and stride and, in approximate mode, the knobs.
        config: the dataset's tuned config, as the caller's store holds it.
        patch_size, stride: in model-input pixels.
        patch_color: ``gray``, ``black``, ``white``, ``mean`` or ``R,G,B``.
        target_class: class to explain; default the predicted one.
        mode: ``exact``, ``approximate`` or ``naive``.
        tau, drilldown_ratio, coarse_stride, drilldown_tolerance: approximate
            mode without a dataset (the command line's hand-set knobs).
        max_gflop: refuse a plan whose :func:`work` is larger (the service's
            bound on one job); ``None`` sets no bound.
        frame: the frame of a multi-frame DICOM image to explain (1-based).

    Raises:
        DatasetConfigError: unknown dataset, untuned dataset in approximate
            mode, or a config tuned for another model, patch size or stride.
        InvalidArgumentError: any other bad value, named with what to change.
        UnknownModelError: a model that is not deployed.
    """
    if dataset is not None:
        served_by = deployment.dataset(dataset).model
        if model is not None and model != served_by:
            raise InvalidArgumentError(
                f"dataset {dataset!r} is served by model {served_by!r}, not {model!r}")
        model = served_by
    deployed = deployment.model(model) if model else deployment.default_model()
    patch_size = patch_size if patch_size is not None else (
        config.patch_size if config else DEFAULT_PATCH_SIZE)
    stride = stride if stride is not None else (config.stride if config else DEFAULT_STRIDE)
    _check_geometry(deployed, patch_size, stride)
    patch_value(patch_color, deployed.preprocessing)
    if target_class is not None and not 0 <= target_class < deployed.num_classes:
        raise InvalidArgumentError(
            f"target_class must be between 0 and {deployed.num_classes - 1} for model "
            f"{deployed.name!r}, got {target_class}")
    if frame is not None and frame < 1:
        raise InvalidArgumentError(f"frame counts from 1, as DICOM numbers frames; got {frame}")
    plan = HeatmapPlan(model=deployed.name, dataset=dataset, patch_size=patch_size,
                       stride=stride, patch_color=patch_color, target_class=target_class,
                       mode=mode, frame=frame)
    knobs = (tau, drilldown_ratio, coarse_stride, drilldown_tolerance)
    if mode != "approximate":
        if any(k is not None for k in knobs):
            raise InvalidArgumentError("tau, drilldown_ratio, coarse_stride and "
                                       "drilldown_tolerance need mode approximate")
    elif any(k is not None for k in knobs):
        if dataset is not None:
            raise InvalidArgumentError("give either a dataset or tau/drilldown_ratio/"
                                       "coarse_stride, not both")
        try:
            approximation = Approximation.of(*knobs).for_stride(stride)
        except ApproximationError as exc:
            raise InvalidArgumentError(str(exc)) from exc
        plan = plan.model_copy(update=approximation.knobs())
    else:
        plan = plan.model_copy(update=_tuned_knobs(deployed, dataset, config, patch_size,
                                                   stride))
    if max_gflop is not None:
        _check_work(deployed, plan, max_gflop)
    return plan


def resolve_tuning(
    deployment: Deployment,
    dataset: str,
    *,
    images: int,
    patch_size: int = DEFAULT_PATCH_SIZE,
    stride: int = DEFAULT_STRIDE,
    target_ssim: float = 0.9,
    score: Literal["mean", "min"] = "mean",
    patch_color: str = "gray",
    holdout: int | None = None,
    max_images: int | None = MAX_TUNING_IMAGES,
    max_gflop: float | None = None,
) -> TuningPlan:
    """The validated plan for tuning ``dataset`` on ``images`` sample images.

    The service and ``krypton tune`` both plan with this; the service also
    bounds the images one job may carry (``max_images``) and its work
    (``max_gflop``).

    Refuses up front what the tuner would refuse only after loading the model:
    a heatmap too small to score, or more work than one job may book. Tuning
    books its exact reference heatmaps, the least it computes; each setting it
    tries on top costs less than one of them and the job deadline bounds the rest.

    Raises:
        DatasetConfigError: unknown dataset.
        InvalidArgumentError: a bad image count, geometry or target, named with
            what to change (:class:`WorkTooLargeError` for too much work).
    """
    deployed = deployment.model(deployment.dataset(dataset).model)
    _check_geometry(deployed, patch_size, stride)
    if images < MIN_TUNING_IMAGES or (max_images is not None and images > max_images):
        most = f" to {max_images}" if max_images is not None else " or more"
        raise InvalidArgumentError(f"tuning needs {MIN_TUNING_IMAGES}{most} images, "
                                   f"got {images}")
    if score not in ("mean", "min"):
        raise InvalidArgumentError(f"score must be 'mean' or 'min', got {score!r}")
    patch_value(patch_color, deployed.preprocessing)
    if holdout is not None and not 1 <= holdout < images:
        raise InvalidArgumentError(f"holdout must leave at least one image on each side, got "
                                   f"{holdout} of {images}")
    try:
        quality_target(target_ssim)
    except ApproximationError as exc:
        raise InvalidArgumentError(str(exc)) from None
    side = deployed.preprocessing.size
    grid = (side - patch_size) // stride + 1
    if grid < MIN_TUNING_GRID:
        raise InvalidArgumentError(
            f"patch_size {patch_size} and stride {stride} give a {grid}x{grid} heatmap on "
            f"{deployed.name!r}'s {side}-pixel input; tuning scores heatmaps by SSIM, which "
            f"needs at least {MIN_TUNING_GRID}x{MIN_TUNING_GRID}: use a smaller patch or stride")
    plan = TuningPlan(model=deployed.name, dataset=dataset, patch_size=patch_size,
                      stride=stride, target_ssim=target_ssim, score=score,
                      patch_color=patch_color, holdout=holdout)
    if max_gflop is not None:
        exact = HeatmapPlan(model=deployed.name, patch_size=patch_size, stride=stride)
        booked = images * work(deployed, exact)
        if booked > max_gflop:
            raise WorkTooLargeError(
                f"tuning on {images} images books about {booked:,.0f} GFLOP for their exact "
                f"heatmaps alone, more than this service's limit of {max_gflop:,.0f} GFLOP "
                "per job; use fewer images or a larger stride")
    return plan


def positions(side: int, patch_size: int, stride: int) -> int:
    """Patch positions on a square input of ``side`` pixels."""
    return ((side - patch_size) // stride + 1) ** 2


def work(deployed: DeployedModel, plan: HeatmapPlan) -> float:
    """GFLOP the plan books: occluded positions times one full inference.

    What a naive run spends; the incremental engine spends less, by a ratio
    the API cannot know without the weights, so this is the safe bound.
    Drill-down counts its coarse grid and its refined share.
    """
    side = deployed.preprocessing.size
    count = positions(side, plan.patch_size, plan.stride)
    if plan.drilldown_ratio is not None and plan.coarse_stride is not None:
        count = (positions(side, plan.patch_size, plan.coarse_stride)
                 + math.ceil(plan.drilldown_ratio * count))
    return count * get_model_spec(deployed.architecture).inference_gflops(side)


def _check_work(deployed: DeployedModel, plan: HeatmapPlan, max_gflop: float) -> None:
    booked = work(deployed, plan)
    if booked <= max_gflop:
        return
    side = deployed.preprocessing.size
    fitting = next((s for s in range(plan.stride + 1, side + 1)
                    if work(deployed, plan.model_copy(update={"stride": s})) <= max_gflop),
                   None)
    advice = (f"use a stride of at least {fitting}" if fitting else
              "use a larger patch and stride")
    raise WorkTooLargeError(
        f"this heatmap books about {booked:,.0f} GFLOP ({deployed.name}: "
        f"{positions(side, plan.patch_size, plan.stride):,} positions), more than this "
        f"service's limit of {max_gflop:,.0f} GFLOP per job; {advice}, or mode=approximate "
        "with a tuned dataset")


def _check_geometry(deployed: DeployedModel, patch_size: int, stride: int) -> None:
    size = deployed.preprocessing.size
    if not 1 <= patch_size <= size:
        raise InvalidArgumentError(f"patch_size must be between 1 and the model's input size "
                                   f"{size}, got {patch_size}")
    if stride < 1:
        raise InvalidArgumentError(f"stride must be at least 1, got {stride}")


def _tuned_knobs(deployed: DeployedModel, dataset: str | None, config: DatasetConfig | None,
                 patch_size: int, stride: int) -> dict[str, object]:
    """A tuned dataset's approximation knobs, for this model and geometry only."""
    if dataset is None:
        raise DatasetConfigError("mode approximate needs a dataset with a tuned config "
                                 "(or, on the command line, --tau/--drilldown-ratio)")
    if config is None:
        raise DatasetConfigError(f"dataset {dataset!r} is not tuned yet; tune it first "
                                 f"(POST /v1/datasets/{dataset}/tuning or `krypton tune`)")
    config.check_compatible(deployed.architecture, patch_size=patch_size, stride=stride)
    return {**config.approximation.knobs(), "tuned_for": config.checkpoint}
