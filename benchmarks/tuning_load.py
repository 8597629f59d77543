"""Tune twice, once on an idle machine and once beside a CPU hog, and time both choices idle.

Tuning ranks settings by their time, and a machine with other work on it changes
speed while the search runs. This measures whether that changes the choice: the
same model and tuning images are tuned idle, then with ``--hogs`` processes
spinning (in bursts of random length, so that the load changes between one
setting and the next, or steadily), and the two chosen settings are then timed
side by side, idle, on images neither tuning saw. The choices agree when the
busy one's idle time is within ``--within`` of the idle one's.

    .venv/bin/python benchmarks/tuning_load.py resnet18 --weights checkpoints
"""

from __future__ import annotations

import multiprocessing
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import numpy as np
import typer
from torch import Tensor

from krypton.benchmarks.engine import bench_deployment
from krypton.core.model_cache import ModelCache
from krypton.demo import SAMPLE_SEED, lesion_samples
from krypton.engine import Approximation, IncrementalOcclusion, TuningResult, approximate, tune


def _spin(seed: int, bursts: bool) -> None:
    """Keep one core busy: all the time, or on and off for 0.2 to 3 s at a time."""
    rng = random.Random(seed)
    while True:
        until = time.monotonic() + (rng.uniform(0.2, 3.0) if bursts else 3600.0)
        while time.monotonic() < until:
            pass
        time.sleep(rng.uniform(0.2, 3.0))


@contextmanager
def _hogs(count: int, bursts: bool) -> Iterator[None]:
    processes = [multiprocessing.Process(target=_spin, args=(seed, bursts), daemon=True)
                 for seed in range(count)]
    for process in processes:
        process.start()
    try:
        yield
    finally:
        for process in processes:
            process.terminate()
            process.join()


def _describe(result: TuningResult) -> str:
    a = result.approximation
    return (f"tau {a.tau}, r {a.drilldown_ratio}, coarse {a.coarse_stride}, "
            f"tolerance {a.drilldown_tolerance}")


def _idle_seconds(engine: IncrementalOcclusion, images: list[Tensor], settings: list[Approximation],
                  patch: int, stride: int, rounds: int) -> list[float]:
    """Mean seconds per image of each setting, in turn on every image, the quickest of
    ``rounds`` runs per image."""
    quickest = np.full((len(settings), len(images)), np.inf)
    for turn in range(rounds):
        for i, image in enumerate(images):
            order = range(len(settings)) if (turn + i) % 2 == 0 else reversed(range(len(settings)))
            for k in order:
                started = time.perf_counter()
                approximate(settings[k], engine, image, patch, stride)
                quickest[k, i] = min(quickest[k, i], time.perf_counter() - started)
    return [float(row.mean()) for row in quickest]


def main(
    model: str,
    weights: str = "checkpoints",
    count: Annotated[int, typer.Option(help="Tuning images (half held out).")] = 12,
    check: Annotated[int, typer.Option(help="Further images the choices are timed on.")] = 4,
    patch: int = 16,
    stride: int = 8,
    target_ssim: float = 0.9,
    hogs: Annotated[int, typer.Option(help="Processes spinning during the busy tuning.")] = 2,
    bursts: Annotated[bool, typer.Option(help="Hogs spin in bursts, else all the time.")] = True,
    rounds: Annotated[int, typer.Option(help="Idle timing rounds of the two choices.")] = 3,
    within: float = 0.15,
) -> None:
    cache = ModelCache(bench_deployment([model], weights), "cpu")
    loaded = cache.get(model)
    engine = cache.engine(model, "exact")
    assert isinstance(engine, IncrementalOcclusion)
    size = loaded.deployed.preprocessing.size
    images = [loaded.model_input(p) for p in lesion_samples(size, count, seed=SAMPLE_SEED)]
    unseen = [loaded.model_input(p) for p in lesion_samples(size, check, seed=SAMPLE_SEED + 1)]

    results, minutes = {}, {}
    for label, load in (("idle", 0), ("busy", hogs)):
        started = time.perf_counter()
        with _hogs(load, bursts):
            results[label] = tune(engine, images, patch, stride, target_ssim=target_ssim)
        minutes[label] = (time.perf_counter() - started) / 60
        typer.echo(f"{label} tuning ({load} hogs, {minutes[label]:.1f} min): "
                   f"{_describe(results[label])}, {results[label].speedup:.1f}x over exact "
                   "as it measured", err=True)

    settings = [Approximation(), results["idle"].approximation, results["busy"].approximation]
    exact, idle, busy = _idle_seconds(engine, unseen, settings, patch, stride, rounds)
    typer.echo(f"{model}, patch {patch}, stride {stride}, {count} tuning images, "
               f"{check} unseen, {hogs} hogs ({'bursts' if bursts else 'steady'})")
    typer.echo("| tuned | chosen setting | tuning took | x exact as tuning measured "
               "| idle s/image, unseen | idle x exact, unseen |")
    typer.echo("|---|---|---|---|---|---|")
    for label, seconds in (("idle", idle), ("busy", busy)):
        typer.echo(f"| {label} | {_describe(results[label])} | {minutes[label]:.1f} min "
                   f"| {results[label].speedup:.1f}x | {seconds:.3f} | {exact / seconds:.1f}x |")
    gap = busy / idle - 1
    same = results["idle"].approximation == results["busy"].approximation
    typer.echo(f"exact {exact:.3f} s/image; the busy choice takes {gap:+.1%} of the idle "
               f"choice's time: {'within' if abs(gap) <= within else 'outside'} {within:.0%}"
               + ("; both chose the same setting, so the gap is the machine's noise"
                  if same else ""))


if __name__ == "__main__":
    typer.run(main)
