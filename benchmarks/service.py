"""Load the running service with heatmap jobs and measure latency, throughput and overhead.

Run from a second process against a live API (``krypton bench-api``): it
submits ``jobs`` heatmap jobs, ``concurrency`` at a time, each with
``Prefer: wait`` so the latency is submit-to-finished as a client sees it, then
computes the same heatmap by calling the engine directly in this process to
measure what the API, queue and worker add per job. With ``api_key`` it sends
``Authorization: Bearer KEY``; with ``api_pid`` (the API's process on this
machine) it reads the API's resident memory before and after the run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from krypton.core.jobs import explain
from krypton.core.model_cache import ModelCache
from krypton.core.plans import resolve_heatmap
from krypton.models import decode_image
from krypton.models.deployment import default_deployment

__all__ = ["LoadReport", "engine_call", "format_report", "resident_bytes", "run_load"]


@dataclass(frozen=True)
class LoadReport:
    url: str
    workers: int
    jobs: int
    concurrency: int
    wall_seconds: float
    latencies: tuple[float, ...]
    compute_seconds: tuple[float, ...]
    direct_seconds: float | None = None
    api_rss_before: int | None = None
    """The API process's VmRSS in bytes before the warm-up job (``api_pid`` given)."""
    api_rss_after: int | None = None
    """Its VmRSS once every job has finished."""
    api_rss_peak: int | None = None
    """Its VmHWM (peak resident memory since it started) once every job has finished."""

    @property
    def throughput(self) -> float:
        return self.jobs / self.wall_seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q))

    @property
    def overhead_seconds(self) -> float | None:
        """Mean client latency minus the paired direct engine calls (one client only)."""
        if self.direct_seconds is None:
            return None
        return statistics.fmean(self.latencies) - self.direct_seconds

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"throughput": self.throughput, "p50": self.percentile(50),
                               "p95": self.percentile(95),
                               "p99": self.percentile(99),
                               "overhead_seconds": self.overhead_seconds}


def resident_bytes(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory from ``/proc/PID/status`` (Linux): ``VmRSS`` now,
    ``VmHWM`` at its peak."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"{field} not in /proc/{pid}/status")


def run_load(url: str, image: Path, *, jobs: int, concurrency: int,
             form: dict[str, str], direct: Callable[[], float] | None = None,
             report: Callable[[str], None] = print, api_key: str | None = None,
             api_pid: int | None = None) -> LoadReport:
    """Submit ``jobs`` jobs from ``concurrency`` threads; every job must succeed.

    With ``direct`` and one client, each job is paired with a direct engine
    call right after it, so both see the same machine load and their
    difference is the service's overhead. ``api_key`` is sent as a bearer
    key; ``api_pid`` is the API's process, whose memory is read before and
    after.
    """
    data = image.read_bytes()
    headers = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}
    rss_before = None if api_pid is None else resident_bytes(api_pid)
    with httpx.Client(base_url=url, timeout=120, headers=headers) as client:
        ready = client.get("/readyz").json()
        workers = int(ready.get("live_workers", 0))  # details are for admin keys only

        def one(_: int) -> tuple[float, float]:
            started = time.perf_counter()
            response = client.post("/v1/heatmaps", files={"image": (image.name, data)},
                                   data=form, headers={"Prefer": "wait=60"})
            response.raise_for_status()
            job = response.json()
            while job["status"] not in ("succeeded", "failed"):
                time.sleep(0.05)
                job = client.get(f"/v1/heatmaps/{job['id']}").json()
            latency = time.perf_counter() - started
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job['id']} failed: {job['error']}")
            client.delete(f"/v1/heatmaps/{job['id']}")
            return latency, float(job["compute_seconds"])

        one(0)  # warm-up: the worker loads the model and plans the grid once
        direct_times: list[float] = []
        paired = direct is not None and concurrency == 1
        if paired and direct is not None:
            direct()

        def measured(index: int) -> tuple[float, float]:
            outcome = one(index)
            if paired and direct is not None:
                direct_times.append(direct())
            return outcome

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(measured, range(jobs)))
        wall = time.perf_counter() - started - sum(direct_times)
    report(f"{jobs} jobs, concurrency {concurrency}, {workers} worker(s): {wall:.1f} s")
    return LoadReport(url=url, workers=workers, jobs=jobs, concurrency=concurrency,
                      wall_seconds=wall, latencies=tuple(r[0] for r in results),
                      compute_seconds=tuple(r[1] for r in results),
                      direct_seconds=statistics.fmean(direct_times) if direct_times else None,
                      api_rss_before=rss_before,
                      api_rss_after=None if api_pid is None else resident_bytes(api_pid),
                      api_rss_peak=None if api_pid is None else resident_bytes(api_pid, "VmHWM"))


def engine_call(image: Path, *, model: str, patch_size: int, stride: int
                ) -> Callable[[], float]:
    """A timed direct call of what a heatmap job does: decode, then the plan's heatmap."""
    deployment = default_deployment()
    plan = resolve_heatmap(deployment, model=model, patch_size=patch_size, stride=stride)
    cache = ModelCache(deployment, "cpu")
    data = image.read_bytes()

    def once() -> float:
        started = time.perf_counter()
        explain(cache, plan, decode_image(data))
        return time.perf_counter() - started

    return once


def _mib(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.0f}"


def format_report(reports: list[LoadReport]) -> str:
    lines = ["| workers | concurrency | jobs | throughput (jobs/s) | p50 latency (s) | "
             "p95 latency (s) | p99 latency (s) | mean compute (s) | "
             "overhead vs engine (s) | API RSS before / after / peak (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        overhead = r.overhead_seconds
        lines.append(
            f"| {r.workers} | {r.concurrency} | {r.jobs} | {r.throughput:.2f} | "
            f"{r.percentile(50):.2f} | {r.percentile(95):.2f} | {r.percentile(99):.2f} | "
            f"{statistics.fmean(r.compute_seconds):.2f} | "
            f"{'-' if overhead is None else f'{overhead:.3f}'} | "
            f"{_mib(r.api_rss_before)} / {_mib(r.api_rss_after)} / {_mib(r.api_rss_peak)} |")
    return "\n".join(lines)
