"""Score fixed approximate settings on further demo images, with naive timed beside them.

``krypton bench --approximate --check N`` scores only the setting the tuner
chose. This scores any settings, so a frontier seen on a few tuning images can
be checked on images no tuning saw (seed ``SAMPLE_SEED + 1``, as ``--check``).
One process, one machine: exact, each setting and naive (on a coarse grid of a
few batches) run on every image in turn.

    .venv/bin/python benchmarks/check_settings.py resnet18 --stride 4 --count 8 \
        --setting 0.5/0.05/15 --setting 1/0.05/15
"""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
import typer

from krypton.benchmarks.engine import bench_deployment
from krypton.core.model_cache import ModelCache
from krypton.demo import SAMPLE_SEED, lesion_samples
from krypton.engine import Approximation, approximate, heatmap_ssim


def main(
    model: str,
    setting: Annotated[list[str], typer.Option(
        help="TAU/R/COARSE[/TOLERANCE], repeatable.")],
    stride: int = 4,
    patch: int = 16,
    count: int = 8,
    weights: str = "checkpoints",
) -> None:
    settings = [Approximation.from_text(text) for text in setting]
    cache = ModelCache(bench_deployment([model], weights), "cpu")
    loaded = cache.get(model)
    exact, naive = cache.engine(model, "exact"), cache.engine(model, "naive")
    size = loaded.deployed.preprocessing.size
    scores: dict[Approximation, list[float]] = {s: [] for s in settings}
    seconds = dict.fromkeys(settings, 0.0)
    exact_seconds, naive_rates, positions = 0.0, [], 0
    images = [loaded.model_input(pixels)
              for pixels in lesion_samples(size, count, seed=SAMPLE_SEED + 1)]
    for index, image in enumerate(images):
        started = time.perf_counter()
        reference = exact.attribute(image, patch, stride)
        exact_seconds += time.perf_counter() - started
        positions = reference.stats.positions
        for approximation in settings:
            started = time.perf_counter()
            result = approximate(approximation, exact, image, patch, stride,
                                             target=reference.target)
            seconds[approximation] += time.perf_counter() - started
            scores[approximation].append(heatmap_ssim(result.heatmap, reference.heatmap))
        started = time.perf_counter()
        sample = naive.attribute(image, patch, (size - patch) // 10, batch_size=32)
        naive_rates.append(sample.stats.positions / (time.perf_counter() - started))
        typer.echo(f"image {index + 1}/{count} done", err=True)
    naive_seconds = count * positions / float(np.mean(naive_rates))
    typer.echo(f"{model}, stride {stride}, {count} images: naive {naive_seconds / count:.1f} s, "
               f"exact {exact_seconds / count:.2f} s per image")
    typer.echo("| tau | r | coarse stride | approx / naive | approx / exact "
               "| SSIM mean | SSIM min |")
    typer.echo("|---|---|---|---|---|---|---|")
    for approximation in settings:
        typer.echo(f"| {approximation.tau} | {approximation.drilldown_ratio} "
                   f"| {approximation.coarse_stride} "
                   f"| {naive_seconds / seconds[approximation]:.1f}x "
                   f"| {exact_seconds / seconds[approximation]:.1f}x "
                   f"| {np.mean(scores[approximation]):.3f} "
                   f"| {np.min(scores[approximation]):.3f} |")


if __name__ == "__main__":
    typer.run(main)
