"""Benchmark: naive vs Captum vs exact incremental occlusion, one process, one machine.

Every figure printed is measured in this run. Speedups are ratios of
positions per second measured back to back on the same image, model copy
and device. Naive and Captum get the batch size that served naive best in a
short calibration, so neither baseline is handicapped.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from krypton.benchmarks.provenance import cpu_name
from krypton.core.model_cache import ModelCache
from krypton.core.plans import resolve_heatmap
from krypton.engine import (
    Approximation,
    IncrementalOcclusion,
    ReferenceOcclusion,
    approximate,
    heatmap_ssim,
    points_at,
    tune,
)
from krypton.engine.patches import PatchGrid
from krypton.engine.tuning import Score
from krypton.models import Preprocessing, classifier_head, to_model_input
from krypton.models.deployment import DEMO_LABELS, DeployedModel, Deployment

__all__ = [
    "ApproximateRow",
    "QualityCheck",
    "BenchRow",
    "format_approximate_table",
    "format_table",
    "machine_description",
    "run_approximate_benchmark",
    "run_benchmark",
    "sample_images",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

CPU_BATCHES = (4, 9, 16, 36)
CUDA_BATCHES = (64, 144, 256, 576)


@dataclass(frozen=True)
class BenchRow:
    model: str
    input_size: int
    patch: int
    stride: int
    positions: int
    naive_batch: int
    exact_batch: int
    naive_pps: float
    captum_pps: float | None
    exact_pps: float
    theoretical_ratio: float
    flops_ratio: float
    max_abs_diff: float
    approximate_pps: float | None = None
    approximate_ssim: float | None = None
    """SSIM of the approximate heatmap against the exact one."""

    @property
    def speedup_naive(self) -> float:
        return self.exact_pps / self.naive_pps

    @property
    def approximate_speedup_naive(self) -> float | None:
        return None if self.approximate_pps is None else self.approximate_pps / self.naive_pps

    @property
    def speedup_captum(self) -> float | None:
        return None if self.captum_pps is None else self.exact_pps / self.captum_pps

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "speedup_naive": self.speedup_naive,
                "speedup_captum": self.speedup_captum,
                "approximate_speedup_naive": self.approximate_speedup_naive}


def benchmark_image() -> np.ndarray:
    """A real fundus photograph (scikit-image's ``retina``), RGB in [0, 1]."""
    from skimage import data

    return np.asarray(data.retina(), dtype=np.float32) / 255.0


def run_benchmark(
    models: Sequence[str],
    *,
    patch: int = 16,
    stride: int = 16,
    device: str = "cpu",
    exact_batch: int | None = None,
    with_captum: bool = True,
    approximation: Approximation | None = None,
    demo_weights: str | os.PathLike[str] | None = None,
    report: Callable[[str], None] = print,
) -> list[BenchRow]:
    """Time the methods on each model at its native input size, on one image.

    Untrained models (their head rescaled so the heatmap has contrast) explain
    scikit-image's fundus photograph; with ``demo_weights``, the trained demo
    models explain a demo lesion image. With ``approximation``, approximate
    mode is timed too and scored against the exact map.
    """
    cache = ModelCache(bench_deployment(models, demo_weights), device)
    rows = []
    for name in models:
        resolve_heatmap(cache.deployment, model=name, patch_size=patch, stride=stride)
        loaded = cache.get(name)
        if demo_weights is None:
            image = loaded.model_input(benchmark_image())
            calibrate_head(loaded.network, image)
        else:
            (image,) = _demo_inputs(loaded.deployed.preprocessing, 1)
        size = image.shape[1]
        report(f"{name}: {size}x{size}, patch {patch}, stride {stride}")
        rows.append(_bench_model(name, cache, image, patch, stride, device, exact_batch,
                                 with_captum, approximation, report))
    return rows


def bench_deployment(models: Sequence[str], demo_weights: str | os.PathLike[str] | None = None
                     ) -> Deployment:
    """The benchmarked models deployed as the service would deploy them.

    Untrained (seeded random weights, four neutral classes) by default; with
    ``demo_weights``, the ``krypton demo train`` checkpoints in that folder.
    """
    from krypton.demo import LABELS, demo_checkpoint

    return Deployment(models={
        name: DeployedModel(
            name=name, architecture=name,
            labels=DEMO_LABELS if demo_weights is None else LABELS,
            checkpoint=None if demo_weights is None else demo_checkpoint(demo_weights, name))
        for name in models})


def _bench_model(
    name: str, cache: ModelCache, image: Tensor, patch: int, stride: int, device: str,
    exact_batch: int | None, with_captum: bool, approximation: Approximation | None,
    report: Callable[[str], None],
) -> BenchRow:
    naive, exact = cache.engine(name, "naive"), cache.engine(name, "exact")
    assert isinstance(naive, ReferenceOcclusion)
    grid = PatchGrid(image.shape[1], image.shape[2], patch, stride)
    size = image.shape[1]

    # Warm up both engines (kernel selection, allocator) on a two-position grid.
    for engine in (naive, exact):
        engine.attribute(image, patch, size - patch, batch_size=2)
    naive_batch, _ = _calibrate_naive(naive, image, patch, device)

    naive_result, naive_seconds = _timed(
        lambda: naive.attribute(image, patch, stride, batch_size=naive_batch), device)
    report(f"  naive   {grid.size / naive_seconds:8.2f} positions/s (batch {naive_batch})")

    captum_pps = None
    if with_captum:
        captum_positions, captum_seconds = _time_captum(
            naive.model, image, patch, stride, naive_result.target, naive_batch, device)
        captum_pps = captum_positions / captum_seconds
        report(f"  captum  {captum_pps:8.2f} positions/s")

    exact_result, exact_seconds = _timed(
        lambda: exact.attribute(image, patch, stride, batch_size=exact_batch), device)
    report(f"  exact   {grid.size / exact_seconds:8.2f} positions/s "
           f"(batch {exact_result.stats.batch_size})")
    approximate_pps = approximate_ssim = None
    if approximation is not None:
        approximated, approximate_seconds = _timed(functools.partial(
            approximate, approximation, exact, image, patch, stride, target=exact_result.target,
            batch_size=exact_batch), device)
        approximate_pps = grid.size / approximate_seconds
        approximate_ssim = heatmap_ssim(approximated.heatmap, exact_result.heatmap)
        report(f"  approx  {approximate_pps:8.2f} positions/s, SSIM {approximate_ssim:.3f}")
    stats = exact_result.stats
    return BenchRow(
        model=name,
        input_size=size,
        patch=patch,
        stride=stride,
        positions=grid.size,
        naive_batch=naive_batch,
        exact_batch=stats.batch_size,
        naive_pps=grid.size / naive_seconds,
        captum_pps=captum_pps,
        exact_pps=grid.size / exact_seconds,
        theoretical_ratio=float(stats.theoretical_ratio or 1.0),
        flops_ratio=float(stats.flops_ratio or 1.0),
        max_abs_diff=float(np.abs(exact_result.heatmap - naive_result.heatmap).max()),
        approximate_pps=approximate_pps,
        approximate_ssim=approximate_ssim,
    )


def _calibrate_naive(engine: ReferenceOcclusion, image: Tensor, patch: int,
                     device: str) -> tuple[int, float]:
    """The batch size at which naive inference runs fastest here, and its positions/s.

    Each candidate is a square number, timed on a grid of about that many
    positions so that it runs as one batch.
    """
    candidates = CUDA_BATCHES if device.startswith("cuda") else CPU_BATCHES
    side = image.shape[1] - patch
    rates: dict[int, float] = {}
    for batch in candidates:
        step = max(side // max(math.isqrt(batch) - 1, 1), 1)
        result, seconds = _timed(
            functools.partial(engine.attribute, image, patch, step, batch_size=batch), device
        )
        rates[batch] = result.stats.positions / seconds
    best = max(rates, key=lambda b: rates[b])
    return best, rates[best]


def _time_captum(model: nn.Module, image: Tensor, patch: int, stride: int, target: int,
                 batch: int, device: str) -> tuple[int, float]:
    from captum.attr import Occlusion

    def probabilities(x: Tensor) -> Tensor:
        return torch.softmax(model(x.contiguous(memory_format=torch.channels_last)), dim=1)

    occluder = Occlusion(probabilities)
    inputs = image.unsqueeze(0).to(device)
    channels = image.shape[0]
    positions = int(np.prod([-(-(n - patch) // stride) + 1 for n in image.shape[1:]]))

    def run() -> Tensor:
        with torch.no_grad():
            result: Tensor = occluder.attribute(
                inputs, sliding_window_shapes=(channels, patch, patch),
                strides=(channels, stride, stride), baselines=0.0, target=target,
                perturbations_per_eval=batch,
            )
        return result

    _, seconds = _timed(run, device)
    return positions, seconds


def _timed(fn: Callable[[], T], device: str) -> tuple[T, float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def machine_description(device: str) -> str:
    """One line naming the processor or GPU, threads and library versions."""
    if device.startswith("cuda"):
        hardware = torch.cuda.get_device_name(torch.device(device))
    else:
        hardware = cpu_name() + f", {torch.get_num_threads()} threads"
    return (f"{hardware}; torch {torch.__version__}; Python {platform.python_version()}; "
            f"{platform.system()} {platform.machine()}")


def format_table(rows: Sequence[BenchRow]) -> str:
    """A Markdown table of the rows, ready for BENCHMARKS.md."""
    lines = [
        "| model | input | positions | naive pos/s | Captum pos/s | exact pos/s "
        "| exact / naive | exact / Captum | R (theory) | FLOPs ratio run | max abs diff "
        "| approx / naive (SSIM) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        captum = "-" if r.captum_pps is None else f"{r.captum_pps:.2f}"
        vs_captum = "-" if r.speedup_captum is None else f"{r.speedup_captum:.2f}x"
        approximate = ("-" if r.approximate_speedup_naive is None else
                       f"{r.approximate_speedup_naive:.1f}x ({r.approximate_ssim:.3f})")
        lines.append(
            f"| {r.model} | {r.input_size} | {r.positions} | {r.naive_pps:.2f} | {captum} "
            f"| {r.exact_pps:.2f} | {r.speedup_naive:.2f}x | {vs_captum} "
            f"| {r.theoretical_ratio:.2f} | {r.flops_ratio:.2f} | {r.max_abs_diff:.1e} "
            f"| {approximate} |"
        )
    return "\n".join(lines)


POINTING_TOLERANCE = 0.5
"""Pointing game tolerance, in patches: a strongest position whose patch centre
is within half a patch of the lesion's box still hides part of the lesion."""


@dataclass(frozen=True)
class QualityCheck:
    """Per-image quality of approximate maps on images tuning never saw."""

    ssim: tuple[float, ...]
    """SSIM of each approximate map against its exact map."""
    exact_hits: tuple[bool, ...]
    """Whether each exact map's strongest position falls on the lesion (pointing game)."""
    approximate_hits: tuple[bool, ...]

    @property
    def images(self) -> int:
        return len(self.ssim)

    @property
    def ssim_mean(self) -> float:
        return float(np.mean(self.ssim))

    @property
    def ssim_p10(self) -> float:
        return float(np.percentile(self.ssim, 10))

    @property
    def ssim_min(self) -> float:
        return float(np.min(self.ssim))

    @property
    def pointing_exact(self) -> float:
        return float(np.mean(self.exact_hits))

    @property
    def pointing_approximate(self) -> float:
        return float(np.mean(self.approximate_hits))

    @property
    def pointing_agreement(self) -> float:
        """Share of images where the approximate map's verdict equals the exact map's."""
        return float(np.mean([a == e for a, e in zip(self.approximate_hits, self.exact_hits,
                                                       strict=True)]))

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "ssim_mean": self.ssim_mean, "ssim_p10": self.ssim_p10,
                "ssim_min": self.ssim_min, "pointing_exact": self.pointing_exact,
                "pointing_approximate": self.pointing_approximate,
                "pointing_agreement": self.pointing_agreement}

    def summary(self) -> str:
        return (f"SSIM mean {self.ssim_mean:.3f}, p10 {self.ssim_p10:.3f}, min "
                f"{self.ssim_min:.3f}; pointing exact {self.pointing_exact:.0%}, approximate "
                f"{self.pointing_approximate:.0%}, agree {self.pointing_agreement:.0%} "
                f"({self.images} images)")


@dataclass(frozen=True)
class ApproximateRow:
    """Approximate vs exact vs naive on held-out images, after tuning on the others."""

    model: str
    input_size: int
    patch: int
    stride: int
    positions: int
    naive_pps: float
    exact_seconds: float
    approximate_seconds: float
    tau: float
    drilldown_ratio: float | None
    coarse_stride: int | None
    drilldown_tolerance: float | None
    holdout_ssim: float
    min_holdout_ssim: float
    tuning_seconds: float
    exact_range: float
    """Mean max - min of the held-out exact heatmaps: near 0, SSIM says little."""
    frontier: tuple[tuple[float, float | None, int | None, float | None, float, float, bool],
                    ...]
    """(tau, r, coarse stride, bisection tolerance, speedup over exact, SSIM, timed side by
    side) of every setting tuning tried."""
    check: QualityCheck | None = None
    """The chosen setting on further images, per image (not timed)."""
    holdout_images: int | None = None
    """How many held-out images the times and held-out SSIMs are over."""

    @property
    def naive_seconds(self) -> float:
        return self.positions / self.naive_pps

    @property
    def speedup_naive(self) -> float:
        return self.naive_seconds / self.approximate_seconds

    @property
    def speedup_exact(self) -> float:
        return self.exact_seconds / self.approximate_seconds

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "naive_seconds": self.naive_seconds,
                "speedup_naive": self.speedup_naive, "speedup_exact": self.speedup_exact,
                "check": None if self.check is None else self.check.as_dict()}


def sample_images(count: int) -> list[np.ndarray]:
    """Images of one use case: crops and flips of scikit-image's two fundus images.

    Alternates the full photograph (``retina``) with close-ups (crops of it and
    the ``microaneurysms`` detail), so tuning and held-out halves both see each.
    """
    from skimage import data

    retina = np.asarray(data.retina(), dtype=np.float32) / 255.0
    detail = np.asarray(data.microaneurysms(), dtype=np.float32) / 255.0
    detail = np.repeat(detail[..., None], 3, axis=2)
    views = [
        retina,
        detail,
        retina[:, ::-1],
        retina[250:1150, 150:1050],
        detail[::-1],
        retina[300:1300, 400:1400, :][::-1],
        detail[:, ::-1],
        retina[100:1000, 350:1250],
    ]
    return [np.ascontiguousarray(v) for v in views[:count]]


def _demo_inputs(preprocessing: Preprocessing, count: int, seed: int | None = None
                 ) -> list[Tensor]:
    """``count`` demo lesion images as model inputs; default the samples' seed."""
    from krypton.demo import SAMPLE_SEED, lesion_samples

    pixels = lesion_samples(preprocessing.size, count,
                            seed=SAMPLE_SEED if seed is None else seed)
    return [to_model_input(p, preprocessing) for p in pixels]


LOGIT_SPREAD = 2.0
"""A random head's logits are either nearly equal (VGG16, ResNet18) or far apart
(InceptionV3 gives p = 1.0); either way occlusion barely moves the probability
and the heatmap is almost flat, so SSIM would compare rounding noise. The
benchmark rescales the last linear layer so the logits on the first sample
span this much: the network stays untrained, but its heatmaps have contrast."""


def calibrate_head(model: nn.Module, image: Tensor, spread: float = LOGIT_SPREAD) -> nn.Module:
    """``model`` with its last linear layer scaled so ``image``'s logits span ``spread``.

    Scaling the weights and bias by ``s`` scales the logits by exactly ``s``.
    """
    head = classifier_head(model)
    with torch.inference_mode():
        logits = model(image.unsqueeze(0).to(head.weight.device))[0]
    scale = spread / float(logits.max() - logits.min())
    with torch.no_grad():
        head.weight.mul_(scale)
        if head.bias is not None:
            head.bias.mul_(scale)
    return model


def run_approximate_benchmark(
    models: Sequence[str],
    *,
    patch: int = 16,
    stride: int = 8,
    samples: int = 4,
    target_ssim: float = 0.9,
    tuning_score: Score = "mean",
    device: str = "cpu",
    demo_weights: str | os.PathLike[str] | None = None,
    check: int = 0,
    check_seed: int = 1,
    report: Callable[[str], None] = print,
) -> list[ApproximateRow]:
    """Tune each model on half the samples, then time and score the other half.

    With ``demo_weights`` (a folder of ``krypton demo train`` checkpoints) the
    models are the trained demo models and the samples are demo lesion images
    the training never saw; otherwise untrained models with a rescaled head on
    crops and flips of scikit-image's fundus images. ``check`` further demo
    images (seed ``SAMPLE_SEED + check_seed``, which tuning never draws from)
    score the chosen setting's SSIM beyond the few held-out ones; they are not
    timed.
    """
    if check < 0:
        raise ValueError(f"check must be 0 or more images, got {check}")
    if check_seed < 1:
        raise ValueError(f"check_seed counts from 1 (0 is the tuning images), got {check_seed}")
    if check and demo_weights is None:
        raise ValueError("check images come from the demo; pass demo_weights too")
    rows = []
    cache = ModelCache(bench_deployment(models, demo_weights), device)
    for name in models:
        loaded = cache.get(name)
        if demo_weights is None:
            images = [loaded.model_input(p) for p in sample_images(samples)]
            calibrate_head(loaded.network, images[0])
        else:
            images = _demo_inputs(loaded.deployed.preprocessing, samples)
        naive, exact = cache.engine(name, "naive"), cache.engine(name, "exact")
        assert isinstance(naive, ReferenceOcclusion) and isinstance(exact, IncrementalOcclusion)
        size = loaded.deployed.preprocessing.size
        for engine in (naive, exact):
            engine.attribute(images[0], patch, size - patch, batch_size=2)
        naive_batch, _ = _calibrate_naive(naive, images[0], patch, device)
        report(f"{name}: naive batch {naive_batch}; tuning on {samples // 2 + samples % 2}"
               f" images")
        tuning, tuning_seconds = _timed(functools.partial(
            tune, exact, images, patch, stride, target_ssim=target_ssim, score=tuning_score,
            holdout=samples // 2,
            report=lambda line: report(f"  {line}")), device)
        held_out = images[tuning.tuning_images :]
        exact_seconds, approximate_seconds, naive_rates, scores, ranges = 0.0, 0.0, [], [], []
        for image in held_out:
            # Naive costs the same at every position: time it on a coarse grid of a few
            # batches right beside the exact and approximate runs, so that all three
            # see the same machine load.
            coarse = max((size - patch) // max(math.isqrt(3 * naive_batch) - 1, 1), 1)
            sample, seconds = _timed(functools.partial(
                naive.attribute, image, patch, coarse, batch_size=naive_batch), device)
            naive_rates.append(sample.stats.positions / seconds)
            reference, seconds = _timed(
                functools.partial(exact.attribute, image, patch, stride), device)
            exact_seconds += seconds
            ranges.append(float(np.ptp(reference.heatmap)))
            result, seconds = _timed(functools.partial(
                approximate, tuning.approximation, exact, image, patch, stride,
                target=reference.target), device)
            approximate_seconds += seconds
            scores.append(heatmap_ssim(result.heatmap, reference.heatmap))
        chosen: Approximation = tuning.approximation
        checked = (_check_quality(exact, loaded.deployed.preprocessing, check, check_seed,
                                  patch, stride, chosen, report) if check else None)
        rows.append(ApproximateRow(
            model=name, input_size=size, patch=patch, stride=stride,
            positions=PatchGrid(size, size, patch, stride).size,
            naive_pps=float(np.mean(naive_rates)),
            exact_seconds=exact_seconds / len(held_out),
            approximate_seconds=approximate_seconds / len(held_out),
            tau=chosen.tau, drilldown_ratio=chosen.drilldown_ratio,
            coarse_stride=chosen.coarse_stride, drilldown_tolerance=chosen.drilldown_tolerance,
            holdout_ssim=float(np.mean(scores)),
            min_holdout_ssim=float(np.min(scores)), tuning_seconds=tuning_seconds,
            exact_range=float(np.mean(ranges)),
            frontier=tuple((p.approximation.tau, p.approximation.drilldown_ratio,
                            p.approximation.coarse_stride, p.approximation.drilldown_tolerance,
                            p.speedup, p.ssim, p.side_by_side)
                           for p in tuning.frontier),
            check=checked,
            holdout_images=len(held_out),
        ))
        report(f"  held out: {rows[-1].speedup_naive:.1f}x over naive, "
               f"{rows[-1].speedup_exact:.1f}x over exact, SSIM {rows[-1].holdout_ssim:.3f}")
    return rows


def _check_quality(engine: IncrementalOcclusion, preprocessing: Preprocessing, count: int,
                   seed: int, patch: int, stride: int, approximation: Approximation,
                   report: Callable[[str], None]) -> QualityCheck:
    """``approximation`` against exact on ``count`` fresh demo lesion images: SSIM and
    the pointing game of both maps."""
    from krypton.demo import SAMPLE_SEED, lesion_batch

    batch = lesion_batch(preprocessing.size, count, seed=SAMPLE_SEED + seed)
    tolerance = POINTING_TOLERANCE * patch
    scores, exact_hits, approximate_hits = [], [], []
    for index in range(count):
        image = to_model_input(batch.pixels(index), preprocessing)
        box = tuple(int(v) for v in batch.boxes[index])
        assert len(box) == 4
        reference = engine.attribute(image, patch, stride)
        result = approximate(approximation, engine, image, patch, stride, target=reference.target)
        scores.append(heatmap_ssim(result.heatmap, reference.heatmap))
        exact_hits.append(points_at(reference.heatmap, box, patch, stride, tolerance=tolerance))
        approximate_hits.append(points_at(result.heatmap, box, patch, stride,
                                          tolerance=tolerance))
        report(f"  check image {index + 1}/{count}: SSIM {scores[-1]:.3f}, pointing exact "
               f"{exact_hits[-1]}, approximate {approximate_hits[-1]}")
    checked = QualityCheck(tuple(scores), tuple(exact_hits), tuple(approximate_hits))
    report(f"  check: {checked.summary()}")
    return checked


def _check_cell(row: ApproximateRow) -> str:
    if row.check is None:
        return "- | - | -"
    c = row.check
    return (f"{c.ssim_mean:.3f} / {c.ssim_p10:.3f} / {c.ssim_min:.3f} | "
            f"{c.pointing_exact:.0%} / {c.pointing_approximate:.0%} / "
            f"{c.pointing_agreement:.0%} | {c.images}")


def _refinement(row: ApproximateRow) -> str:
    """The drill-down's refinement rule: a ratio, or bisection to a tolerance under a cap."""
    if row.drilldown_ratio is None:
        return "-"
    if row.drilldown_tolerance is None:
        return f"{row.drilldown_ratio}"
    return f"bisect {row.drilldown_tolerance} (cap {row.drilldown_ratio})"


def format_approximate_table(rows: Sequence[ApproximateRow]) -> str:
    """A Markdown table of approximate-inference rows."""
    lines = [
        "| model | input | positions | naive s/image | exact s/image | approx s/image "
        "| approx / naive | approx / exact | tau | r | coarse stride | held-out SSIM (min) "
        "| exact map range | unseen: SSIM mean / p10 / min | pointing exact / approx / agree "
        "| unseen images |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.input_size} | {r.positions} | {r.naive_seconds:.1f} "
            f"| {r.exact_seconds:.2f} | {r.approximate_seconds:.2f} | {r.speedup_naive:.1f}x "
            f"| {r.speedup_exact:.1f}x | {r.tau:.2f} | {_refinement(r)} "
            f"| {r.coarse_stride or '-'} | {r.holdout_ssim:.3f} ({r.min_holdout_ssim:.3f}) "
            f"| {r.exact_range:.3f} | {_check_cell(r)} |"
        )
    return "\n".join(lines)
