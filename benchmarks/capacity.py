"""How many workers a hospital's day of heatmaps needs: measure, then simulate.

``measure`` times heatmap jobs per model the way a worker runs them (the job
body of ``krypton.core.jobs``: decode, preprocess, occlude), on images of
the demo, and writes the mean seconds per job, with the machine and settings.

``simulate`` replays a day of arrivals (Poisson, at a rate that follows a
hospital's reading hours with two morning and afternoon peaks) through those
service times twice: with a fixed pool of workers, and with the scaling rule of
``deploy/kubernetes`` (KEDA on the stream: one worker per job waiting and at
least one per job running, a cold start before a new worker takes jobs, scale
down one worker a minute after two quiet minutes, to the minimum five minutes
after the last job). It prints p50/p95/max time-to-heatmap and worker-hours.

    .venv/bin/python benchmarks/capacity.py measure --weights checkpoints -o capacity.json
    .venv/bin/python benchmarks/capacity.py simulate capacity.json --model resnet18
"""

from __future__ import annotations

import heapq
import json
import math
import os
import platform
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

app = typer.Typer(add_completion=False, no_args_is_help=True)

READING_HOURS = ((0, 7, 0.2), (7, 9, 1.0), (9, 11, 2.0), (11, 14, 1.0), (14, 16, 1.6),
                 (16, 19, 0.8), (19, 24, 0.3))
"""(from hour, to hour, relative arrival rate): a radiology department's day."""


@app.command()
def measure(
    models: str = "resnet18,vgg16,inception_v3",
    weights: Annotated[str | None, typer.Option(
        help="Folder of demo-MODEL.pt checkpoints; random weights where one is missing.")
    ] = None,
    images: int = 3,
    patch: int = 16,
    stride: int = 8,
    setting: Annotated[list[str] | None, typer.Option(
        help="MODEL=TAU/R/COARSE[/TOLERANCE]: also time this tuned setting.")] = None,
    output: Annotated[Path, typer.Option("-o")] = Path("capacity.json"),
) -> None:
    """Seconds per heatmap job, per model and setting, measured on this machine."""
    from krypton.approximation import Approximation
    from krypton.benchmarks.engine import bench_deployment
    from krypton.core.jobs import explain
    from krypton.core.model_cache import ModelCache
    from krypton.core.plans import resolve_heatmap
    from krypton.demo import SAMPLE_SEED, demo_checkpoint, lesion_samples
    from krypton.models.deployment import Deployment

    tuned = dict(text.split("=", 1) for text in setting or [])
    names = models.split(",")
    trained = [n for n in names if weights and demo_checkpoint(weights, n).is_file()]
    deployment = Deployment(models={
        **bench_deployment([n for n in names if n not in trained]).models,
        **(bench_deployment(trained, weights).models if trained else {})})
    cache = ModelCache(deployment, "cpu")
    rows = []
    for name in names:
        size = cache.get(name).deployed.preprocessing.size
        pictures = lesion_samples(size, images + 1, seed=SAMPLE_SEED + 2)
        runs = [("exact", Approximation())]
        if name in tuned:
            runs.append(("tuned", Approximation.from_text(tuned[name])))
        for label, approximation in runs:
            if approximation.is_exact:
                plan = resolve_heatmap(deployment, model=name, patch_size=patch, stride=stride)
            else:
                plan = resolve_heatmap(deployment, model=name, patch_size=patch, stride=stride,
                                       mode="approximate", **approximation.knobs())
            explain(cache, plan, pictures[0])  # loading and tracing out of the way
            seconds = []
            for picture in pictures[1:]:
                started = time.perf_counter()
                explain(cache, plan, picture)
                seconds.append(time.perf_counter() - started)
            rows.append({"model": name, "setting": label, "knobs": approximation.knobs(),
                         "weights": "demo" if name in trained else "random",
                         "seconds_per_job": float(np.mean(seconds)),
                         "jobs_per_second": 1.0 / float(np.mean(seconds)),
                         "images": images, "patch": patch, "stride": stride})
            typer.echo(f"{name} {label}: {rows[-1]['seconds_per_job']:.2f} s per job", err=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False, cwd=Path(__file__).parent).stdout.strip()
    output.write_text(json.dumps({
        "measured": time.strftime("%Y-%m-%d"), "commit": commit or "unknown",
        "machine": f"{_processor()}, {os.cpu_count()} cores, CPU", "rows": rows},
        indent=2) + "\n")
    typer.echo(f"wrote {output}")


def _processor() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@dataclass(order=True)
class _Event:
    time: float
    kind: str = field(compare=False)
    worker: int = field(default=-1, compare=False)


@dataclass
class Outcome:
    waits: list[float]
    """Seconds from arrival to a finished heatmap, per job."""
    worker_hours: float
    peak_workers: int


def arrivals(jobs_per_day: int, rng: random.Random) -> list[float]:
    """Arrival times in seconds over one day, Poisson at :data:`READING_HOURS`' rates."""
    weight = sum((end - start) * rate for start, end, rate in READING_HOURS)
    times = []
    for start, end, rate in READING_HOURS:
        per_second = jobs_per_day * rate / weight / 3600.0
        now = start * 3600.0
        while True:
            now += rng.expovariate(per_second)
            if now >= end * 3600.0:
                break
            times.append(now)
    return times


def simulate(times: list[float], service: float, *, fixed: int | None = None,
             minimum: int = 0, maximum: int = 8, cold_start: float = 60.0,
             poll: float = 5.0, stabilization: float = 120.0, cooldown: float = 300.0,
             rng: random.Random | None = None) -> Outcome:
    """Jobs through workers that each run one at a time, fixed or scaled by the rule.

    Service times vary by +-10% around ``service`` (images differ). The scaler
    looks every ``poll`` seconds: it wants ``max(waiting, running)`` workers
    within [``minimum``, ``maximum``]; new workers take jobs after
    ``cold_start``; it removes one idle worker a minute once it has wanted fewer
    for ``stabilization`` seconds, and goes below one only after ``cooldown``
    seconds without jobs. (A removed worker is an idle one here; a busy one
    would hand its job back, which the pending trigger then covers.)
    """
    rng = rng or random.Random(0)
    queue: list[float] = []  # arrival times of waiting jobs
    busy: dict[int, float] = {}  # worker -> arrival time of its job
    ready: set[int] = set()
    starting: dict[int, float] = {}  # worker -> when it becomes ready
    started_at: dict[int, float] = {}
    worker_seconds, waits, peak = 0.0, [], 0
    events = [_Event(t, "arrival") for t in times]
    end_of_day = 24 * 3600.0
    if fixed is None:
        events += [_Event(t, "poll") for t in np.arange(0.0, end_of_day + 3600.0, poll)]
    heapq.heapify(events)
    next_id, last_job, low_since, last_removal = 0, -math.inf, None, -math.inf
    last_done = 0.0

    def add_worker(now: float, warm: bool) -> None:
        nonlocal next_id
        started_at[next_id] = now
        if warm:
            ready.add(next_id)
        else:
            starting[next_id] = now + cold_start
            heapq.heappush(events, _Event(now + cold_start, "ready", next_id))
        next_id += 1

    def dispatch(now: float) -> None:
        for worker in sorted(ready - set(busy)):
            if not queue:
                return
            busy[worker] = queue.pop(0)
            heapq.heappush(events, _Event(now + service * rng.uniform(0.9, 1.1), "done",
                                          worker))

    for _ in range(fixed or minimum):
        add_worker(0.0, warm=True)
    while events:
        event = heapq.heappop(events)
        now = event.time
        if event.kind == "arrival":
            queue.append(now)
            last_job = now
        elif event.kind == "done":
            waits.append(now - busy.pop(event.worker))
            last_job = last_done = now
        elif event.kind == "ready" and event.worker in starting:
            del starting[event.worker]
            ready.add(event.worker)
        elif event.kind == "poll":
            if not queue and not busy and now > end_of_day and len(ready) <= minimum:
                break
            wanted = min(maximum, max(minimum, len(queue), len(busy)))
            if now - last_job < cooldown:
                wanted = max(wanted, min(1, maximum))
            current = len(ready) + len(starting)
            if wanted > current:
                for _ in range(wanted - current):
                    add_worker(now, warm=False)
                low_since = None
            elif wanted < current:
                low_since = now if low_since is None else low_since
                idle = sorted(ready - set(busy))
                if idle and now - low_since >= stabilization and now - last_removal >= 60.0:
                    worker = idle[-1]
                    ready.discard(worker)
                    worker_seconds += now - started_at.pop(worker)
                    last_removal = now
            else:
                low_since = None
        dispatch(now)
        peak = max(peak, len(ready) + len(starting))
    finish = max(end_of_day, last_done)  # a fixed pool is paid for until its last job ends
    worker_seconds += sum(finish - started for started in started_at.values())
    return Outcome(waits, worker_seconds / 3600.0, peak)


def _summary(label: str, outcome: Outcome) -> str:
    waits = np.asarray(outcome.waits)
    return (f"| {label} | {len(waits)} | {np.percentile(waits, 50):.1f} "
            f"| {np.percentile(waits, 95):.1f} | {waits.max():.1f} | {outcome.worker_hours:.1f} "
            f"| {outcome.peak_workers} |")


@app.command("simulate")
def simulate_day(
    measurements: Path,
    model: str = "resnet18",
    setting: str = "exact",
    jobs_per_day: int = 2000,
    maximum: Annotated[int, typer.Option(help="The ScaledObject's maxReplicaCount, and "
                                         "the fixed pool it is compared with.")] = 8,
    minimum: int = 0,
    cold_start: Annotated[float, typer.Option(help="Seconds from a new worker to its first "
                                              "job: pod start, model load and trace.")] = 60.0,
    seed: int = 0,
) -> None:
    """A day of arrivals through the measured service time: fixed pool against the rule."""
    document = json.loads(measurements.read_text())
    [row] = [r for r in document["rows"] if r["model"] == model and r["setting"] == setting]
    service = float(row["seconds_per_job"])
    times = arrivals(jobs_per_day, random.Random(seed))
    busiest = np.histogram(times, bins=24, range=(0, 24 * 3600))[0].max()
    typer.echo(f"{model} ({setting}, {service:.2f} s per job, measured {document['measured']} "
               f"at {document['commit']} on {document['machine']}); {len(times)} jobs in the "
               f"day, {busiest} in the busiest hour")
    typer.echo("| workers | jobs | p50 s | p95 s | max s | worker-hours | peak workers |")
    typer.echo("|---|---|---|---|---|---|---|")
    for fixed in sorted({1, max(1, maximum // 2), maximum}):
        typer.echo(_summary(f"fixed {fixed}", simulate(times, service, fixed=fixed,
                                                        rng=random.Random(seed))))
    typer.echo(_summary(f"scaled {minimum}-{maximum}", simulate(
        times, service, minimum=minimum, maximum=maximum, cold_start=cold_start,
        rng=random.Random(seed))))


if __name__ == "__main__":
    app()
