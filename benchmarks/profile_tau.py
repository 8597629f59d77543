"""Where an incremental run's time goes, and why ``tau`` saves less time than FLOPs.

Projective-field thresholding (``tau < 1``) cuts the convolution FLOPs the
engine spends per position; the wall time falls by less. This profiles one
exact (``tau = 1``) and one thresholded run per model with PyTorch's profiler
and splits their CPU time into: convolutions, the other layers' own operators
(batch norm, ReLU, pooling, additions, the classifier), gathering each
position's input region from the stored maps (index arithmetic and
``index_select``), writing the recomputed windows back, and what no operator
accounts for (Python and dispatch between operators). Each part's time at
both settings shows which parts shrink with the FLOPs and which do not.

Random seeded weights: time does not depend on what the weights learned::

    python -m krypton.benchmarks.profile_tau --models vgg16,resnet18 --tau 0.5 \\
        --patch 16 --stride 8
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import typer
from torch.profiler import ProfilerActivity, profile, record_function

from krypton.engine import Approximation, IncrementalOcclusion, approximate
from krypton.engine import incremental as incremental_module
from krypton.models import build_model

PARTS = ("convolution", "other layers", "gather regions", "write windows", "between operators")


def _labelled(method: Callable[..., Any], label: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with record_function(label):
            return method(*args, **kwargs)
    return wrapper


@contextlib.contextmanager
def _labels() -> Iterator[None]:
    """Name the engine's gather and write steps in the profile, for this run only."""
    rows = incremental_module._Rows
    gather, write = rows.gather, rows.write
    rows.gather = _labelled(gather, "krypton.gather")  # type: ignore[method-assign]
    rows.write = _labelled(write, "krypton.write")  # type: ignore[method-assign]
    try:
        yield
    finally:
        rows.gather, rows.write = gather, write  # type: ignore[method-assign]


def _parts(run: Callable[[], Any]) -> tuple[dict[str, float], float]:
    """Seconds per part of one profiled ``run``, and its profiled wall time."""
    with _labels(), profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        run()
        wall = time.perf_counter() - started
    events = prof.key_averages()
    inclusive = {e.key: e.cpu_time_total / 1e6 for e in events}
    gather = inclusive.get("krypton.gather", 0.0)
    write = inclusive.get("krypton.write", 0.0)
    conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key) / 1e6
    operators = sum(e.self_cpu_time_total for e in events
                    if not e.key.startswith("krypton.")) / 1e6
    # The labelled steps' operators are in ``operators``; count them once, in their part.
    labelled_children = gather + write - sum(
        e.self_cpu_time_total for e in events if e.key.startswith("krypton.")) / 1e6
    other = max(operators - conv - labelled_children, 0.0)
    parts = {"convolution": conv, "other layers": other, "gather regions": gather,
             "write windows": write}
    parts["between operators"] = max(wall - sum(parts.values()), 0.0)
    return parts, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg16,resnet18")
    parser.add_argument("--tau", type=float, default=0.5)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(0))
    typer.echo(f"patch {args.patch}, stride {args.stride}, tau 1 vs {args.tau}, random weights, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    typer.echo("| model | part | s at tau 1 | s at tau "
          f"{args.tau} | saved | share of tau-1 time |")
    typer.echo("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model = build_model(name, num_classes=4, seed=0).eval()
        engine = IncrementalOcclusion(model)
        settings = (Approximation(), Approximation(args.tau))
        runs = {s.tau: functools.partial(approximate, s, engine, image, args.patch, args.stride)
                for s in settings}
        for run in runs.values():
            run()  # plans, buffers and first-call costs out of the way
        unprofiled = {}
        for tau, run in runs.items():
            started = time.perf_counter()
            result = run()
            unprofiled[tau] = (time.perf_counter() - started, result.stats.flops_ratio or 1.0)
        profiled = {tau: _parts(run) for tau, run in runs.items()}
        exact, cut = profiled[1.0][0], profiled[args.tau][0]
        for part in PARTS:
            typer.echo(f"| {name} | {part} | {exact[part]:.2f} | {cut[part]:.2f} "
                  f"| {exact[part] - cut[part]:+.2f} | {exact[part] / profiled[1.0][1]:.0%} |")
        (wall_exact, flops_exact), (wall_cut, flops_cut) = unprofiled[1.0], unprofiled[args.tau]
        typer.echo(f"| {name} | **unprofiled wall** | {wall_exact:.2f} | {wall_cut:.2f} | "
              f"{wall_exact / wall_cut:.2f}x faster | conv FLOPs {flops_cut / flops_exact:.2f}x "
              f"fewer; convolution time {exact['convolution'] / cut['convolution']:.2f}x less |")


if __name__ == "__main__":
    main()
