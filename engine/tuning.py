"""Per-dataset tuning: the fastest approximation that keeps a target SSIM.

Images of one use case (retina OCT, chest X-ray) look alike, so settings tuned
on a few samples carry over to the rest. The search is guided, not a grid,
and spends its time where settings are cheap:

1. Exact heatmaps of every sample are the reference (and the time to beat).
2. Drill-down first, at ``tau = 1``: each ratio ``r`` is tried at increasing
   target speedups ``t`` (coarse stride from ``S1 = S2 * sqrt(t / (1 - r*t))``)
   until the SSIM misses. SSIM only falls as ``t`` grows, so the steps after
   the first miss need not be run. Each run costs about ``1/t`` of an exact one.
   Refinement by bisection is tried the same way: at coarse strides of 4 and 8
   fine strides with growing tolerances until the first miss.
   No coarse stride exceeds the patch side. A wider lattice leaves gaps that
   no coarse patch covers, so a patch-sized lesion there moves no coarse value
   and nothing says to refine around it: coarse stride 36 at patch 16 kept the
   SSIM target on a ResNet18 demo model yet pointed away from the lesion on 2
   of 12 unseen images (BENCHMARKS.md).
3. ``tau`` is then lowered step by step on top of the fastest passing
   drill-down settings (or alone, when none passes), again until the first
   miss: the two approximations compound, so their product is what is scored.
4. Passing settings are tried fastest first on the held-out images; the
   first that keeps the target there wins. Exact inference always does.
   "Fastest" is timed side by side, never by the search's first timings. The
   search runs each setting once, minutes apart, and a machine with other
   work on it changes speed between settings: on a busy 2-core machine first
   timings moved six-fold, and the search chose a setting at 1.9x over exact
   where an idle run chose one at over 20x. So every passing setting is timed
   again together with exact, in turn on each tuning image, and each keeps
   the quickest of its runs on an image (load only ever slows a run down).
   Speedups divide exact's time by a setting's as taken in the same rounds.
   Where a choice must come before that round (which drill-down settings get
   a ``tau`` sweep), settings are ranked by the convolution work they spent,
   which no load changes.

Every setting tried is reported with its measured time and SSIM, so the
speed/quality frontier is visible, not just the winner.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import numpy as np
from torch import Tensor

from krypton.approximation import Approximation, ApproximationError, quality_target
from krypton.engine.approximation import approximate, coarse_stride_for_speedup
from krypton.engine.base import StopCheck
from krypton.engine.errors import InvalidParamsError
from krypton.engine.incremental import IncrementalOcclusion
from krypton.engine.patches import PatchValue
from krypton.engine.quality import heatmap_ssim
from krypton.engine.result import OcclusionResult

__all__ = ["TAUS", "FrontierPoint", "HoldoutCheck", "Score", "TuningResult",
           "tune"]

logger = logging.getLogger(__name__)

TAUS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4)
RATIOS = (0.05, 0.1, 0.2, 0.4)
SPEEDUPS = (2.0, 3.0, 5.0, 8.0, 12.0, 16.0)
BISECTION_MULTIPLES = (4, 8)
"""Coarse strides for bisection, in fine strides, as far as they stay within the patch side
(as every coarse stride does): then every fine position's patch overlaps a coarse one's, and
a lesion that moves the output moves some lattice point, which is what refinement starts
from."""
TOLERANCES = (0.05, 0.1, 0.15, 0.2, 0.3)
BISECTION_CAP = 0.5
"""The most of the fine positions bisection may refine: its worst case is half an exact run."""
TAU_BASES = 2
"""How many of the fastest passing drill-down settings get a ``tau`` sweep."""

Score = Literal["mean", "min"]
"""How a setting's SSIMs over several images become one score: their mean, or
their worst, so that a setting passes only if every image keeps the target."""


@dataclass(frozen=True)
class FrontierPoint:
    """One setting tried: its mean time per image and its SSIM score on the tuning images."""

    approximation: Approximation
    seconds: float
    speedup: float
    """Exact's seconds over this setting's: both the quickest of their runs side by side
    for a passing setting, the first run of a failing one over exact's quickest."""
    ssim: float
    flops_ratio: float | None = None
    """Full over spent convolution FLOPs per position: the saving no machine load changes."""
    side_by_side: bool = False
    """Whether ``seconds`` is the quickest of this setting's runs, timed again in turn with
    exact and every other passing setting (true of every passing setting once the search
    is done); ``speedup`` then divides exact's time from the same rounds."""


@dataclass(frozen=True)
class HoldoutCheck:
    """A passing setting tried on the held-out images, in the order they were tried."""

    approximation: Approximation
    ssim: float


@dataclass(frozen=True)
class TuningResult:
    approximation: Approximation
    target_ssim: float
    tuning_ssim: float
    holdout_ssim: float
    speedup: float
    """Over exact incremental inference, measured on the tuning images."""
    exact_seconds: float
    """Mean seconds of one exact heatmap, for scale."""
    frontier: tuple[FrontierPoint, ...]
    holdout_checks: tuple[HoldoutCheck, ...]
    """Every held-out check, fastest setting first; the chosen one is the first that passed."""
    tuning_images: int
    holdout_images: int


ProgressReport = Callable[[str], None]


def tune(
    engine: IncrementalOcclusion,
    images: Sequence[Tensor],
    patch_size: int,
    stride: int,
    *,
    target_ssim: float = 0.90,
    patch_value: PatchValue = 0.0,
    score: Score = "mean",
    holdout: int | None = None,
    batch_size: int | None = None,
    report: ProgressReport | None = None,
    should_stop: StopCheck | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> TuningResult:
    """Find the fastest approximation whose SSIM score meets ``target_ssim``.

    Args:
        engine: the incremental engine of the model being tuned.
        images (Sequence[Tensor[C, H, W]]): preprocessed samples of one use case.
        patch_size, stride: the heatmap being tuned for, in input pixels.
        target_ssim: SSIM against exact heatmaps to keep, in (0, 1].
        patch_value: patch colour in model-input space.
        score: ``"mean"`` holds the mean SSIM of the images to the target;
            ``"min"`` holds every image to it (the worst image decides).
        holdout: how many images to hold out for the final check; default half.
        batch_size: positions per batch; default the engine's.
        report: called with a line of text as the search goes.
        should_stop: polled before every batch; ``True`` ends the search with
            :class:`~krypton.engine.errors.RunStopped`.
        clock: the stopwatch, in seconds; a test or a simulation of a busy
            machine replaces it.

    Raises:
        InvalidParamsError: fewer than two images, a target outside (0, 1], or a
            heatmap smaller than 3x3.
    """
    try:
        quality_target(target_ssim)
    except ApproximationError as exc:
        raise InvalidParamsError(str(exc)) from None
    if len(images) < 2:
        raise InvalidParamsError("tuning needs at least two sample images (one held out)")
    held = len(images) // 2 if holdout is None else holdout
    if not 1 <= held < len(images):
        raise InvalidParamsError(
            f"holdout must leave at least one image on each side, got {holdout} of {len(images)}"
        )
    side = min(images[0].shape[-2:])
    grid = (side - patch_size) // stride + 1 if 1 <= patch_size <= side and stride >= 1 else 0
    if grid < 3:
        # Checked before any heatmap is computed, not when the first SSIM fails.
        raise InvalidParamsError(
            f"patch_size {patch_size} and stride {stride} on a {side}-pixel input give "
            f"{max(grid, 0)}x{max(grid, 0)} positions; tuning scores heatmaps by SSIM, which "
            "needs at least 3x3")
    say = report or (lambda line: None)
    if score not in ("mean", "min"):
        raise InvalidParamsError(f"score must be 'mean' or 'min', got {score!r}")
    search = _Search(engine, images, patch_size, stride, patch_value, batch_size, should_stop,
                     np.mean if score == "mean" else np.min, clock)
    tuning, held_out = list(range(len(images) - held)), list(range(len(images) - held,
                                                                   len(images)))

    exact_seconds = search.exact_seconds(tuning)
    say(f"exact: {exact_seconds:.2f} s per image")
    frontier: list[FrontierPoint] = []

    def evaluate(approximation: Approximation) -> FrontierPoint:
        seconds, ssim, flops_ratio = search.evaluate(approximation, tuning)
        point = FrontierPoint(approximation, seconds, exact_seconds / seconds, ssim, flops_ratio)
        frontier.append(point)
        say(f"{approximation.describe()}: SSIM {ssim:.3f}, {point.speedup:.2f}x over exact")
        return point

    for ratio in RATIOS:
        strides_tried: set[int] = set()
        for speedup in SPEEDUPS:
            if ratio * speedup >= 1.0:
                break
            coarse = coarse_stride_for_speedup(stride, ratio, speedup)
            if coarse > patch_size:
                break  # larger speedups only widen the lattice further
            if coarse in strides_tried or coarse <= stride:
                continue
            strides_tried.add(coarse)
            if evaluate(Approximation(1.0, ratio, coarse)).ssim < target_ssim:
                break

    multiples = sorted({min(m, patch_size // stride) for m in BISECTION_MULTIPLES} - {0, 1})
    for multiple in multiples:
        for tolerance in TOLERANCES:
            if evaluate(Approximation(1.0, BISECTION_CAP, multiple * stride,
                                      tolerance)).ssim < target_ssim:
                break

    drilldowns = sorted((p for p in frontier if p.ssim >= target_ssim), key=_least_work)
    bases = [p.approximation for p in drilldowns[:TAU_BASES]] or [Approximation()]
    for base in bases:
        for tau in TAUS:
            point = evaluate(Approximation(tau, base.drilldown_ratio, base.coarse_stride,
                                           base.drilldown_tolerance))
            if point.ssim < target_ssim:
                break

    frontier, exact_seconds = _timed_side_by_side(search, frontier, target_ssim, exact_seconds,
                                                  tuning, say)
    candidates = sorted((p for p in frontier if p.ssim >= target_ssim), key=_rank)
    chosen, holdout_ssim = None, 1.0
    checks: list[HoldoutCheck] = []
    for point in candidates:
        _, holdout_ssim, _ = search.evaluate(point.approximation, held_out)
        checks.append(HoldoutCheck(point.approximation, holdout_ssim))
        say(f"held out: {point.approximation.describe()} SSIM {holdout_ssim:.3f}")
        if holdout_ssim >= target_ssim:
            chosen = point
            break
    if chosen is None:
        chosen = FrontierPoint(Approximation(), exact_seconds, 1.0, 1.0)
        holdout_ssim = 1.0
    return TuningResult(
        approximation=chosen.approximation,
        target_ssim=target_ssim,
        tuning_ssim=chosen.ssim,
        holdout_ssim=holdout_ssim,
        speedup=chosen.speedup,
        exact_seconds=exact_seconds,
        frontier=tuple(sorted(frontier, key=_rank)),
        holdout_checks=tuple(checks),
        tuning_images=len(tuning),
        holdout_images=len(held_out),
    )


def _rank(point: FrontierPoint) -> tuple[bool, float]:
    """Settings timed side by side first (fastest first), then the rest by their first time."""
    return not point.side_by_side, point.seconds


def _least_work(point: FrontierPoint) -> float:
    """Most saving first: a ranking the search can make before any setting is timed again."""
    return -(point.flops_ratio or 0.0)


def _timed_side_by_side(search: _SideBySide, frontier: list[FrontierPoint], target_ssim: float,
                        exact_seconds: float, indices: Sequence[int],
                        say: ProgressReport) -> tuple[list[FrontierPoint], float]:
    """``frontier`` with every passing setting's time taken again, in turn with exact and
    each other, and exact's seconds from the same rounds."""
    passing = [p for p in frontier if p.ssim >= target_ssim]
    if not passing:
        return frontier, exact_seconds
    say(f"timing exact and the {len(passing)} passing settings again, side by side")
    exact, *seconds = search.side_by_side([Approximation()] + [p.approximation for p in passing],
                                          indices)
    retimed = {id(point): replace(point, seconds=s, speedup=exact / s, side_by_side=True)
               for point, s in zip(passing, seconds, strict=True)}
    say(f"side by side: exact: {exact:.2f} s per image")
    for point in retimed.values():
        say(f"side by side: {point.approximation.describe()}: {point.seconds:.2f} s, "
            f"{point.speedup:.2f}x over exact")
    return ([retimed.get(id(point), replace(point, speedup=exact / point.seconds))
             for point in frontier], exact)


class _SideBySide(Protocol):
    def side_by_side(self, approximations: Sequence[Approximation], indices: Sequence[int]
                     ) -> list[float]: ...


class _Search:
    """Runs settings on sample images, keeping the exact heatmaps to compare with."""

    def __init__(self, engine: IncrementalOcclusion, images: Sequence[Tensor], patch_size: int,
                 stride: int, patch_value: PatchValue, batch_size: int | None,
                 should_stop: StopCheck | None,
                 combine: Callable[[list[float]], np.floating[Any]],
                 clock: Callable[[], float]) -> None:
        self._engine = engine
        self._should_stop = should_stop
        self._images = images
        self._patch, self._stride = patch_size, stride
        self._value, self._batch = patch_value, batch_size
        self._combine = combine
        self._clock = clock
        self._exact: dict[int, np.ndarray] = {}
        self._targets: dict[int, int] = {}
        self._quickest: dict[tuple[Approximation, int], float] = {}
        """The quickest run so far of each setting on each image."""

    def _run(self, index: int, approximation: Approximation) -> tuple[OcclusionResult, float]:
        started = self._clock()
        result = approximate(
            approximation, self._engine, self._images[index], self._patch, self._stride,
            patch_value=self._value, target=self._targets.get(index), batch_size=self._batch,
            should_stop=self._should_stop,
        )
        elapsed = self._clock() - started
        self._targets.setdefault(index, result.target)
        key = (approximation, index)
        self._quickest[key] = min(elapsed, self._quickest.get(key, elapsed))
        return result, elapsed

    def exact_seconds(self, indices: Sequence[int]) -> float:
        seconds = []
        for index in range(len(self._images)):
            result, elapsed = self._run(index, Approximation())
            self._exact[index] = result.heatmap
            if index in indices:
                seconds.append(elapsed)
        return float(np.mean(seconds))

    def side_by_side(self, approximations: Sequence[Approximation], indices: Sequence[int]
                     ) -> list[float]:
        """Mean seconds per image of each setting, each image's the quickest of its runs there,
        after one more run of each in turn on each image (the order reversed on every other
        image), so that all of them see the same machine."""
        for turn, index in enumerate(indices):
            order = range(len(approximations))
            for k in (order if turn % 2 == 0 else reversed(order)):
                self._run(index, approximations[k])
        return [float(np.mean([self._quickest[approximation, index] for index in indices]))
                for approximation in approximations]

    def evaluate(self, approximation: Approximation, indices: Sequence[int]
                 ) -> tuple[float, float, float | None]:
        """Mean seconds per image, the SSIM score against exact over ``indices``, and the
        mean saving in convolution FLOPs."""
        seconds, scores, savings = [], [], []
        for index in indices:
            result, elapsed = self._run(index, approximation)
            seconds.append(elapsed)
            scores.append(heatmap_ssim(result.heatmap, self._exact[index]))
            if result.stats.flops_ratio is not None:
                savings.append(result.stats.flops_ratio)
        flops_ratio = float(np.mean(savings)) if len(savings) == len(seconds) else None
        return float(np.mean(seconds)), float(self._combine(scores)), flops_ratio
