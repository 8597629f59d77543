"""What a worker does for each kind of job, registered by kind (as arq registers functions).

A job body takes a :class:`JobContext` (the loaded models, limits, and the
progress and stop callbacks), the job's parameters and its images, and
returns an :class:`Outcome`: what to add to the job document, the result
bytes to store, and for tuning the dataset config to keep. Bodies run in a
worker's compute thread and never touch the store themselves; the worker
(:mod:`krypton.service.worker`) owns claims, saves and acknowledgements.

:func:`explain` is the heatmap itself, shared with ``krypton explain``: one
:class:`~krypton.core.plans.HeatmapPlan` gives one heatmap, wherever it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from krypton.core.model_cache import ModelCache
from krypton.core.plans import HeatmapPlan, TuningPlan
from krypton.core.records import JobKind, Prediction, PredictParams
from krypton.engine import (
    IncrementalOcclusion,
    OcclusionResult,
    PartialCallback,
    ProgressCallback,
    StopCheck,
    TuningResult,
    approximate,
    tune,
)
from krypton.models import DatasetConfig, decode_image, patch_value
from krypton.models.deployment import DeployedModel
from krypton.models.images import INFERENCE_SIDE, decode
from krypton.render import heatmap_npy

__all__ = ["JobContext", "Outcome", "explain", "job_body", "prediction_of", "run_body"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobContext:
    """What a job body may use besides its parameters and images."""

    cache: ModelCache
    max_pixels: int
    progress: ProgressCallback
    should_stop: StopCheck
    partial: PartialCallback | None = None


@dataclass(frozen=True)
class Outcome:
    """What a finished computation adds to its job, and what else the worker stores."""

    updates: dict[str, Any]
    result: bytes | None = None
    dataset_config: DatasetConfig | None = None


JobBody = Callable[[JobContext, Any, list[bytes]], Outcome]
_BODIES: dict[JobKind, JobBody] = {}


def job_body(kind: JobKind) -> Callable[[JobBody], JobBody]:
    """Register the function that runs jobs of ``kind``."""
    def register(body: JobBody) -> JobBody:
        _BODIES[kind] = body
        return body
    return register


def run_body(context: JobContext, kind: JobKind, params: Any, images: list[bytes]) -> Outcome:
    """Run the body registered for ``kind``."""
    return _BODIES[kind](context, params, images)


def explain(cache: ModelCache, plan: HeatmapPlan, pixels: npt.NDArray[np.floating], *,
            progress: ProgressCallback | None = None, should_stop: StopCheck | None = None,
            partial: PartialCallback | None = None) -> OcclusionResult:
    """The heatmap ``plan`` asks for, of an image decoded to pixels.

    Raises:
        DatasetConfigError: the plan's tuned knobs were made for other weights.
        EngineError: the engine refused (or ``should_stop`` stopped) the run.
    """
    loaded = cache.get(plan.model)
    plan.check_weights(loaded.weights_id)
    preprocessing = loaded.deployed.preprocessing
    return approximate(
        plan.approximation, cache.engine(plan.model, plan.mode), loaded.model_input(pixels),
        plan.patch_size, plan.stride, patch_value=patch_value(plan.patch_color, preprocessing),
        target=plan.target_class, progress=progress, should_stop=should_stop, partial=partial)


@job_body(JobKind.heatmap)
def heatmap(context: JobContext, plan: HeatmapPlan, images: list[bytes]) -> Outcome:
    loaded = context.cache.get(plan.model)
    decoded = decode(images[0], max_pixels=context.max_pixels, max_side=INFERENCE_SIDE,
                     frame=plan.frame, window=loaded.deployed.preprocessing.window)
    result = explain(context.cache, plan, decoded.pixels, progress=context.progress,
                     should_stop=context.should_stop, partial=context.partial)
    return Outcome(updates={"window": decoded.window,
                            "prediction": prediction_of(result, loaded.deployed),
                            "run": result.stats},
                   result=heatmap_npy(result.heatmap))


def prediction_of(result: OcclusionResult, deployed: DeployedModel) -> Prediction:
    """The prediction a heatmap explains, with the model's labels: what its job records
    beside the engine's :class:`~krypton.engine.RunStats`, and the command line writes
    into its heatmap.json."""
    labels = deployed.labels
    return Prediction(
        predicted_class=result.predicted_class, predicted_label=labels[result.predicted_class],
        predicted_probability=result.predicted_probability, target_class=result.target,
        target_label=labels[result.target], target_probability=result.target_probability)


@job_body(JobKind.predict)
def predict(context: JobContext, params: PredictParams, images: list[bytes]) -> Outcome:
    loaded = context.cache.get(params.model)
    decoded = decode(images[0], max_pixels=context.max_pixels, max_side=INFERENCE_SIDE,
                     frame=params.frame, window=loaded.deployed.preprocessing.window)
    tensor = loaded.model_input(decoded.pixels)
    with torch.inference_mode():
        logits = loaded.network(tensor.unsqueeze(0).to(context.cache.device))
    probabilities = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
    top = int(np.argmax(probabilities))
    label, probability = loaded.deployed.labels[top], float(probabilities[top])
    context.progress(1, 1)
    return Outcome(updates={
        "window": decoded.window,
        "probabilities": [float(p) for p in probabilities],
        "prediction": Prediction(predicted_class=top, predicted_label=label,
                                 predicted_probability=probability, target_class=top,
                                 target_label=label, target_probability=probability),
    })


def tune_dataset(cache: ModelCache, plan: TuningPlan,
                 pictures: Sequence[npt.NDArray[np.floating]], *,
                 report: Callable[[str], None] | None = None,
                 should_stop: StopCheck | None = None) -> tuple[TuningResult, DatasetConfig]:
    """Tune ``plan``'s dataset on decoded sample pictures: the search and the config it
    found, pinned to the weights it ran on. The tuning job and ``krypton tune`` both
    call this.

    Raises:
        EngineError: the engine refused (or ``should_stop`` stopped) the search.
    """
    loaded = cache.get(plan.model)
    engine = cache.engine(plan.model, "exact")
    assert isinstance(engine, IncrementalOcclusion)
    result = tune(engine, [loaded.model_input(picture) for picture in pictures],
                  plan.patch_size, plan.stride, target_ssim=plan.target_ssim,
                  score=plan.score, holdout=plan.holdout,
                  patch_value=patch_value(plan.patch_color, loaded.deployed.preprocessing),
                  report=report, should_stop=should_stop)
    config = DatasetConfig.from_tuning(
        result, dataset=plan.dataset, model=loaded.deployed.architecture,
        checkpoint=loaded.weights_id, patch_size=plan.patch_size, stride=plan.stride)
    return result, config


@job_body(JobKind.tuning)
def tuning(context: JobContext, params: TuningPlan, images: list[bytes]) -> Outcome:
    window = context.cache.get(params.model).deployed.preprocessing.window
    pictures = [decode_image(i, max_pixels=context.max_pixels, max_side=INFERENCE_SIDE,
                             window=window) for i in images]
    steps = [0]

    def report(line: str) -> None:
        logger.info("tuning %s: %s", params.dataset, line)
        steps[0] += 1
        context.progress(min(steps[0], 19), 20)  # tuning's length is unknown up front

    _, config = tune_dataset(context.cache, params, pictures, report=report,
                             should_stop=context.should_stop)
    return Outcome(updates={"tuned": config.as_dict() | {"met_target": config.met_target}},
                   dataset_config=config)
