"""Which drill-down settings keep every image's heatmap: coarse strides and refinement choices.

On unseen demo lesion images, for each coarse stride (``--coarse``) at
``tau = 1`` and ratio ``r``, reports SSIM against the exact map (mean, 10th
percentile, min) and the pointing game's agreement with the exact map, for
three ways of choosing the refined cells:

* ``drop``: the engine's drill-down (``DrillDown``), which refines the cells
  with the largest interpolated probability drop;
* ``range``: the cells where the coarse map's 3x3 neighbourhood spans the
  widest range (where the interpolation is least sure), simulated from the
  exact map: a refined cell's value is its exact value. The same simulation
  with ``drop``'s choice is checked against the engine's output first, so the
  two rows compare like with like;
* ``bisect T``: refinement by bisection to tolerance ``T`` under the cap
  ``--cap`` (:mod:`krypton.engine.bisection`), for each coarse stride of
  ``--bisect-coarse``, run on the exact map (at ``tau = 1`` every position it
  measures is exact); checked against the engine on the first image.

No timing: the cost of a setting is its position count, printed beside it
(mean and most over the images, for bisection, whose cost varies)::

    python -m krypton.benchmarks.drilldown_study --demo-weights checkpoints \\
        --model resnet18 --images 12 --coarse 8,12,16,20 --bisect-coarse 16,32 \\
        --tolerances 0.05,0.1,0.15,0.2 --seed 2

``--bounds K1,K2`` adds, per image, references for what measuring some
positions and interpolating the rest can keep: the SSIM of the exact map's own
3x3 mean (how much fine texture the map has, which interpolation cannot
follow), of bilinear interpolation from every second position, and of an
oracle that knows the exact map and measures, beyond the first
``--bisect-coarse`` lattice, the positions where that lattice's interpolation
errs most, up to K positions in all (K at the lattice's own count is the
lattice alone). The oracle is not a strict bound (it does not re-interpolate
around what it measures, and the largest errors are not always what SSIM
weighs most), but a rule that must measure to find its errors pays for the
search that the oracle gets free. Bisection's positions and SSIM per image
are printed beside it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
import typer
from torch import Tensor

from krypton.benchmarks.engine import POINTING_TOLERANCE, bench_deployment
from krypton.core.model_cache import ModelCache
from krypton.demo import SAMPLE_SEED, lesion_batch
from krypton.engine import Approximation, IncrementalOcclusion, approximate, heatmap_ssim, points_at
from krypton.engine.bisection import bisect_from_lattice, lattice_axis
from krypton.engine.drilldown import drilldown_count, interpolate_coarse
from krypton.engine.patches import PatchGrid
from krypton.models import to_model_input

_Number = TypeVar("_Number", int, float)


def _range_choice(coarse: Tensor, coarse_grid: PatchGrid, fine_grid: PatchGrid,
                  count: int) -> Tensor:
    spread = F.max_pool2d(coarse[None, None], 3, 1, 1) + F.max_pool2d(-coarse[None, None],
                                                                      3, 1, 1)
    estimate = interpolate_coarse(spread[0, 0], coarse_grid, fine_grid).flatten()
    return torch.topk(estimate, count).indices


def _filled(estimate: Tensor, exact: np.ndarray, chosen: Tensor) -> np.ndarray:
    heatmap = estimate.clone().flatten()
    heatmap[chosen] = torch.from_numpy(exact).flatten()[chosen]
    return heatmap.view(estimate.shape).numpy()


def _bisected(exact: np.ndarray, step: int, tolerance: float, budget: int
              ) -> tuple[np.ndarray, int]:
    """Bisection on ``exact``'s every ``step``-th value: the map and the positions it cost."""
    lattice = exact[::step, ::step].astype(np.float64)
    done = bisect_from_lattice(lattice, exact.shape, step,
                               lambda flat: exact.ravel()[flat].astype(np.float64),
                               tolerance=tolerance, budget=budget)
    return done.heatmap, lattice.size + done.refined


def _bounds(exact: np.ndarray, step: int, budgets: list[int]) -> list[float]:
    """SSIM of the 3x3 mean, of the every-second-position lattice, and of the oracle at
    each budget (see the module's docstring)."""
    smoothed = F.avg_pool2d(torch.from_numpy(exact)[None, None], 3, 1, 1,
                            count_include_pad=False)[0, 0].numpy()
    every_second, _ = _bisected(exact, 2, float("inf"), 0)
    lattice, cost = _bisected(exact, step, float("inf"), 0)
    worst_first = np.argsort(-np.abs(lattice - exact), axis=None)
    scores = [heatmap_ssim(smoothed, exact), heatmap_ssim(every_second, exact)]
    for budget in budgets:
        oracle = lattice.copy()
        chosen = worst_first[:budget - cost]
        oracle.flat[chosen] = exact.flat[chosen]
        scores.append(heatmap_ssim(oracle, exact))
    return scores


def _numbers(text: str, kind: Callable[[str], _Number]) -> list[_Number]:
    """A comma-separated list of numbers; an empty text gives none."""
    return [kind(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-weights", required=True,
                        help="Folder of `krypton demo train` checkpoints.")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--ratio", type=float, default=0.05)
    parser.add_argument("--coarse", default="8,10,11,12,15,16,20")
    parser.add_argument("--bisect-coarse", default="16,32",
                        help="Coarse strides for bisection, multiples of --stride.")
    parser.add_argument("--tolerances", default="0.05,0.1,0.15,0.2")
    parser.add_argument("--cap", type=float, default=0.5,
                        help="Bisection's cap: the most of the fine positions it refines.")
    parser.add_argument("--seed", type=int, default=1,
                        help="Images of seed SAMPLE_SEED + this (tuning uses +0).")
    parser.add_argument("--bounds", default="",
                        help="Positions K for the oracle bound, e.g. 730,1000; empty skips.")
    args = parser.parse_args()
    patch, stride, ratio = args.patch, args.stride, args.ratio
    strides = _numbers(args.coarse, int)
    bisect_strides = _numbers(args.bisect_coarse, int)
    tolerances = _numbers(args.tolerances, float)
    budgets = _numbers(args.bounds, int)
    if budgets and not bisect_strides:
        parser.error("--bounds measures from the first --bisect-coarse lattice: give one")
    cache = ModelCache(bench_deployment([args.model], args.demo_weights), "cpu")
    preprocessing = cache.get(args.model).deployed.preprocessing
    engine = cache.engine(args.model, "exact")
    assert isinstance(engine, IncrementalOcclusion)
    size, tolerance = preprocessing.size, POINTING_TOLERANCE * patch
    fine = PatchGrid(size, size, patch, stride)
    if budgets:
        lattice = math.prod(len(lattice_axis(n, bisect_strides[0] // stride)) for n in fine.shape)
        if min(budgets) < lattice:
            parser.error(f"--bounds below the lattice's own {lattice} positions: {budgets}")
    batch = lesion_batch(size, args.images, seed=SAMPLE_SEED + args.seed)
    scores: dict[tuple[int, str], list[tuple[float, bool, int]]] = {}
    count = drilldown_count(fine.size, ratio)
    exact_hits: list[bool] = []
    bounds: list[list[float]] = []
    for index in range(args.images):
        image = to_model_input(batch.pixels(index), preprocessing)
        box = tuple(int(v) for v in batch.boxes[index])
        assert len(box) == 4
        exact = engine.attribute(image, patch, stride)
        exact_hits.append(points_at(exact.heatmap, box, patch, stride, tolerance=tolerance))
        for coarse_stride in strides:
            grid = PatchGrid(size, size, patch, coarse_stride)
            drilled = approximate(Approximation(1.0, ratio, coarse_stride),
                                  engine, image, patch, stride, target=exact.target).heatmap
            coarse = torch.from_numpy(engine.attribute(
                image, patch, coarse_stride, target=exact.target).heatmap)
            estimate = interpolate_coarse(coarse, grid, fine)
            by_drop = torch.topk(estimate.flatten(), count, largest=False).indices
            simulated = _filled(estimate, exact.heatmap, by_drop)
            assert np.abs(simulated - drilled).max() < 1e-4, "the simulation is the engine's"
            by_range = _filled(estimate, exact.heatmap,
                               _range_choice(coarse, grid, fine, count))
            for name, heatmap in (("drop", drilled), ("range", by_range)):
                scores.setdefault((coarse_stride, name), []).append((
                    heatmap_ssim(heatmap, exact.heatmap),
                    points_at(heatmap, box, patch, stride, tolerance=tolerance),
                    grid.size + count))
        for coarse_stride in bisect_strides:
            for limit in tolerances:
                heatmap, cost = _bisected(exact.heatmap, coarse_stride // stride, limit,
                                          drilldown_count(fine.size, args.cap))
                if index == 0:
                    engine_map = approximate(Approximation(1.0, args.cap, coarse_stride, limit),
                                             engine, image, patch, stride,
                                             target=exact.target).heatmap
                    assert np.abs(heatmap - engine_map).max() < 1e-4, "it is the engine's"
                scores.setdefault((coarse_stride, f"bisect {limit}"), []).append((
                    heatmap_ssim(heatmap, exact.heatmap),
                    points_at(heatmap, box, patch, stride, tolerance=tolerance), cost))
        if budgets:
            bounds.append(_bounds(exact.heatmap.astype(np.float64),
                                  bisect_strides[0] // stride, budgets))
        typer.echo(f"image {index + 1}/{args.images} done", err=True)
    typer.echo(f"{args.model}, patch {patch}, stride {stride} ({fine.size} positions), r {ratio},"
               f" {args.images} images; exact map points at the lesion on "
               f"{np.mean(exact_hits):.0%}")
    typer.echo("| coarse stride | positions (most) | choice | SSIM mean | p10 | min "
               "| pointing agrees with exact |")
    typer.echo("|---|---|---|---|---|---|---|")
    for (coarse_stride, name), rows in scores.items():
        ssim = np.array([s for s, _, _ in rows])
        costs = [c for _, _, c in rows]
        agree = np.mean([hit == e for (_, hit, _), e in zip(rows, exact_hits, strict=True)])
        typer.echo(f"| {coarse_stride} | {np.mean(costs):.0f} ({max(costs)}) | {name} "
                   f"| {ssim.mean():.3f} | {np.percentile(ssim, 10):.3f} | {ssim.min():.3f} "
                   f"| {agree:.0%} |")
    if bounds:
        first = bisect_strides[0]
        typer.echo(f"\nPer image, SSIM from coarse stride {first} (bisection's positions in "
                   "brackets):")
        typer.echo("| image | 3x3 mean | every 2nd position | "
                   + " | ".join(f"oracle, {k}" for k in budgets) + " | "
                   + " | ".join(f"bisect {t}" for t in tolerances) + " |")
        typer.echo("|---|---|---|" + "---|" * (len(budgets) + len(tolerances)))
        for index, row in enumerate(bounds):
            bisected = [scores[(first, f"bisect {t}")][index] for t in tolerances]
            typer.echo(f"| {index} | " + " | ".join(f"{v:.3f}" for v in row) + " | "
                       + " | ".join(f"{ssim:.3f} ({cost})" for ssim, _, cost in bisected)
                       + " |")


if __name__ == "__main__":
    main()
