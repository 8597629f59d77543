"""How soon a clinician sees a heatmap: seconds to the first partial map and to the finished one.

Runs against a running service, as a client would: each image is submitted,
its events stream followed, and the seconds from the submit to the first
``partial`` event and to ``succeeded`` are recorded, for each mode asked for.
One warm-up job (not counted) loads the model first. Prints one line per job
and a summary with the median and the worst image, so a slow image shows::

    python -m krypton.benchmarks.first_partial --url http://127.0.0.1:8000 \\
        --model fundus-resnet18 --dataset fundus-demo --stride 4 IMAGE...
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from krypton.client import Client, KryptonError


@dataclass(frozen=True)
class Timing:
    image: str
    mode: str
    first_partial: float | None
    """Seconds from the submit to the first partial map; ``None`` if none came."""
    finished: float


def time_job(client: Client, image: Path, mode: str, fields: dict[str, Any]) -> Timing:
    """Submit ``image`` and follow its events until it has finished."""
    started = time.perf_counter()
    job = client.submit(image, mode=mode, **fields)
    first: float | None = None
    for name, data in client.events(job):
        if name == "partial" and first is None:
            first = time.perf_counter() - started
        if name == "failed":
            raise KryptonError(data["error"], data["error"]["status"])
        if name == "succeeded":
            break
    finished = time.perf_counter() - started
    client.delete(job)
    return Timing(image.name, mode, first, finished)


def summary(timings: list[Timing], mode: str) -> str:
    rows = [t for t in timings if t.mode == mode]
    firsts = [t.first_partial for t in rows if t.first_partial is not None]
    worst = max(rows, key=lambda t: t.finished)
    median = statistics.median(t.finished for t in rows)
    line = (f"{mode}: {len(rows)} images; finished median {median:.2f} s, worst "
            f"{worst.finished:.2f} s ({worst.image})")
    if firsts:
        slowest = max((t for t in rows if t.first_partial is not None),
                      key=lambda t: t.first_partial or 0.0)
        line += (f"; first partial median {statistics.median(firsts):.2f} s, worst "
                 f"{slowest.first_partial:.2f} s ({slowest.image})")
    missing = len(rows) - len(firsts)
    return line + (f"; {missing} without a partial map" if missing else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, help="Images to explain.")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--model", default=None, help="Deployed model (default: the dataset's).")
    parser.add_argument("--dataset", default=None, help="Tuned dataset, for approximate mode.")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--modes", default="approximate,exact",
                        help="Comma-separated modes, each run on every image.")
    args = parser.parse_args()
    fields: dict[str, Any] = {"patch_size": args.patch, "stride": args.stride}
    if args.model:
        fields["model"] = args.model
    if args.dataset:
        fields["dataset"] = args.dataset
    modes = args.modes.split(",")
    timings: list[Timing] = []
    with Client(args.url, api_key=args.api_key, timeout=600.0) as client:
        warm = time_job(client, args.images[0], modes[0], fields)
        typer.echo(f"warm-up ({warm.image}, {warm.mode}): {warm.finished:.2f} s, not counted")
        for image in args.images:
            for mode in modes:
                timing = time_job(client, image, mode, fields)
                timings.append(timing)
                first = "-" if timing.first_partial is None else f"{timing.first_partial:.2f}"
                typer.echo(f"{timing.image:28s} {mode:12s} first partial {first:>6s} s  "
                           f"finished {timing.finished:7.2f} s")
    for mode in modes:
        typer.echo(summary(timings, mode))


if __name__ == "__main__":
    main()
