"""Fault runs against real processes: a Redis server, the API and workers, each its own process.

The scenarios of a hostile hospital network (memory, Redis losing its data, crowds,
quotas, the door, patient data in logs, stopped and stale workers) are in
:mod:`krypton.benchmarks.hostile` and run from here too.

Each scenario starts its own ``redis-server`` (AOF on, a free port), one
``krypton serve`` with ``KRYPTON_REDIS_URL`` and API keys, and ``krypton
worker`` processes, submits heatmap jobs, breaks something mid-run, then
waits for every job and checks its document and the workers' logs:

- ``worker-kill``: SIGKILL a worker while it computes; the job is reclaimed
  by the other worker after ``KRYPTON_CLAIM_IDLE_MS`` and finishes once;
- ``redis-restart``: stop Redis (SIGTERM, or SIGKILL with
  ``--redis-signal KILL``) while jobs run and wait, start it again on the same
  AOF; every job completes;
- ``api-restart``: stop the API (SIGTERM or SIGKILL) while jobs are queued
  and start it again; the jobs are still there and complete;
- ``load``: no fault; ``krypton bench-api``'s load (:func:`run_load`) with a
  key, reporting p50/p95/p99 and the API's resident memory.

A job is *lost* when it never succeeds (gone, failed, or still unfinished at
the deadline). Its document's ``attempts`` counts the runs that started, and
so do the workers' logs (``started (attempt N)``); a run that got through
storing its outcome logs ``succeeded in``, so a job *finished twice* (two
workers both believing they completed it) shows there. A run cut short (its
worker killed, or its outcome not storable while Redis was down) is started
again from the beginning: ``restarted`` lists those jobs. The script exits 1
when a job is lost or finished twice. Everything started here is stopped
before it exits.

    python benchmarks/faults.py worker-kill redis-restart api-restart
    python benchmarks/faults.py load --jobs 200 --concurrency 1,8 --stride 32
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import typer

ROOT = Path(__file__).resolve().parents[1]
CLAIM_IDLE_MS = 3000
_STARTED = re.compile(r"job ([0-9a-f]{32}): heatmap on \S+ started \(attempt (\d+)\)")
_FINISHED = re.compile(r"job ([0-9a-f]{32}): heatmap on \S+ succeeded in")
"""Logged once a run got through ``Worker._finish`` (which drops, without raising, the
result of a run another worker took over)."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait(what: str, check: Callable[[], bool], timeout: float, every: float = 0.2) -> float:
    """Poll ``check`` until true; the seconds it took. Raises TimeoutError naming ``what``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - started
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


@dataclass
class Cluster:
    """Redis, the API and workers as child processes, with their logs in ``folder``."""

    folder: Path
    krypton: str
    redis_server: str
    workers: int
    env: dict[str, str]
    redis_port: int = field(default_factory=_free_port)
    api_port: int = field(default_factory=_free_port)
    admin_key: str = ""
    user_key: str = ""
    persistent: bool = True
    """Run Redis with its append-only file, as the README does; ``False``: as it once did."""
    redis: subprocess.Popen[bytes] | None = None
    api: subprocess.Popen[bytes] | None = None
    worker_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None
               ) -> subprocess.Popen[bytes]:
        log = (self.folder / f"{name}.log").open("ab")
        self._logs.append(log)
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder,
                                env=env, start_new_session=True)

    def _service_env(self) -> dict[str, str]:
        """The API's and workers' environment; a setting given as "" is left unset."""
        environment = os.environ | {
            "KRYPTON_REDIS_URL": self.redis_url,
            "KRYPTON_KEYS_FILE": str(self.folder / "keys.json"),
            "KRYPTON_DATASETS_DIR": str(self.folder / "datasets"),
            "KRYPTON_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS),
            "KRYPTON_RATE_LIMIT_PER_MINUTE": "100000"} | self.env
        return {name: value for name, value in environment.items() if value != ""}

    def add_keys(self) -> None:
        def add(name: str, scope: str) -> str:
            done = subprocess.run(
                [self.krypton, "keys", "add", name, "--scope", scope, "--file",
                 str(self.folder / "keys.json")], capture_output=True, text=True, check=True)
            return done.stdout.strip().splitlines()[-1]

        self.admin_key, self.user_key = add("faults-admin", "admin"), add("faults-user", "heatmaps")

    def start_redis(self) -> None:
        (self.folder / "redis").mkdir(exist_ok=True)
        self.redis = self._spawn("redis", [
            self.redis_server, "--port", str(self.redis_port), "--bind", "127.0.0.1",
            "--dir", str(self.folder / "redis"), "--appendonly",
            "yes" if self.persistent else "no", "--save", ""])
        client = redis.Redis(port=self.redis_port)
        _wait("redis answers", lambda: bool(client.ping()), 20)
        client.close()

    def stop_redis(self, signum: signal.Signals) -> None:
        assert self.redis is not None
        self.redis.send_signal(signum)
        self.redis.wait(30)

    def start_api(self) -> None:
        self.api = self._spawn("api", [self.krypton, "serve", "--host", "127.0.0.1",
                                       "--port", str(self.api_port)], self._service_env())
        _wait("the API answers", lambda: httpx.get(f"{self.url}/healthz").is_success, 60)

    def stop_api(self, signum: signal.Signals) -> None:
        assert self.api is not None
        self.api.send_signal(signum)
        self.api.wait(30)

    def start_workers(self) -> None:
        for index in range(self.workers):
            self.worker_procs.append(self._spawn(f"worker-{index}", [self.krypton, "worker"],
                                                 self._service_env()))
        _wait(f"{self.workers} live workers", lambda: self.ready()["live_workers"]
              >= self.workers, 120)

    def ready(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{self.url}/readyz", headers=self.admin).json()
        return answer

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def stop_all(self) -> None:
        """Stop what this cluster started: workers, the API, then Redis."""
        for proc in [*self.worker_procs, self.api, self.redis]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        for log in self._logs:
            log.close()

    def worker_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")
                         for p in sorted(self.folder.glob("worker-*.log")))


@contextlib.contextmanager
def cluster(args: argparse.Namespace, name: str, *, workers: int | None = None,
            env: dict[str, str] | None = None, persistent: bool = True) -> Iterator[Cluster]:
    """Redis, the API and ``workers`` (default ``--workers``) started, stopped on exit;
    ``env`` adds settings for the API and the workers."""
    folder = Path(tempfile.mkdtemp(prefix=f"krypton-{name}-", dir=args.workdir))
    base = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    running = Cluster(folder=folder, krypton=args.krypton, redis_server=args.redis_server,
                      workers=args.workers if workers is None else workers,
                      env=base | (env or {}), persistent=persistent)
    try:
        running.add_keys()
        running.start_redis()
        running.start_api()
        running.start_workers()
        yield running
    finally:
        running.stop_all()
        typer.echo(f"[{name}] logs in {folder}", err=True)


class Client:
    """Submits and polls jobs through the API, counting every answer (outages included)."""

    def __init__(self, running: Cluster, image: Path, form: dict[str, str]) -> None:
        self.running, self.image, self.form = running, image.read_bytes(), form
        self.answers: collections.Counter[str] = collections.Counter()
        self.http = httpx.Client(timeout=30, headers={
            "Authorization": f"Bearer {running.user_key}"})

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        try:
            response = self.http.request(method, self.running.url + path, **kwargs)
        except httpx.HTTPError as exc:
            self.answers[type(exc).__name__] += 1
            return None
        self.answers[str(response.status_code)] += 1
        return response

    def submit(self, count: int) -> list[str]:
        ids = []
        for _ in range(count):
            response = self._call("POST", "/v1/heatmaps", data=self.form,
                                  files={"image": ("image.jpg", self.image)})
            assert response is not None and response.status_code == 202, response
            ids.append(response.json()["id"])
        return ids

    def job(self, job_id: str) -> dict[str, Any] | None:
        response = self._call("GET", f"/v1/heatmaps/{job_id}")
        if response is None or response.status_code != 200:
            return None
        document: dict[str, Any] = response.json()
        return document

    def jobs(self, ids: list[str]) -> dict[str, dict[str, Any] | None]:
        return {job_id: self.job(job_id) for job_id in ids}

    def wait_finished(self, ids: list[str], timeout: float) -> dict[str, dict[str, Any] | None]:
        """Poll until every job has finished (or ``timeout``); their last documents."""
        deadline = time.monotonic() + timeout
        last: dict[str, dict[str, Any] | None] = dict.fromkeys(ids)
        while time.monotonic() < deadline:
            for job_id in ids:
                known = last[job_id]
                if known is None or known["status"] not in ("succeeded", "failed"):
                    last[job_id] = self.job(job_id) or known
            if all(j is not None and j["status"] in ("succeeded", "failed")
                   for j in last.values()):
                break
            time.sleep(0.5)
        return last


def verdict(name: str, running: Cluster, client: Client, ids: list[str],
            documents: dict[str, dict[str, Any] | None], **facts: Any) -> dict[str, Any]:
    """Every job's outcome, attempts and starts in the workers' logs; prints and returns it."""
    logs = running.worker_logs()
    starts = collections.Counter(m.group(1) for m in _STARTED.finditer(logs))
    finished = collections.Counter(m.group(1) for m in _FINISHED.finditer(logs))
    status = collections.Counter("missing" if d is None else d["status"]
                                 for d in documents.values())
    attempts = collections.Counter(0 if d is None else d["attempts"] for d in documents.values())
    result = {
        "scenario": name, "jobs": len(ids), "status": dict(status),
        "lost": sum(1 for d in documents.values() if d is None or d["status"] != "succeeded"),
        "attempts": {str(k): v for k, v in sorted(attempts.items())},
        "runs_started": sum(starts[j] for j in ids),
        "restarted": sorted(j for j in ids if starts[j] > 1),
        "finished_more_than_once": sorted(j for j in ids if finished[j] > 1),
        "answers_seen_by_client": dict(client.answers),
        "reclaims_logged": logs.count("reclaimed message"),
    } | facts
    typer.echo(json.dumps(result, indent=1))
    return result


def _running_job(running: Cluster, ids: list[str]) -> dict[str, Any] | None:
    """A worker computing one of ``ids`` with progress under 60%: its heartbeat, or None."""
    for worker in running.ready().get("workers") or []:
        if worker["current_job"] in ids:
            job = httpx.get(f"{running.url}/v1/heatmaps/{worker['current_job']}",
                            headers=running.admin).json()
            if (job["status"] == "running" and job["worker"] == worker["name"]
                    and job["progress"] < 0.6):
                return dict(worker)
    return None


def worker_kill(args: argparse.Namespace, form: dict[str, str]) -> dict[str, Any]:
    with cluster(args, "worker-kill") as running:
        client = Client(running, args.image, form)
        ids = client.submit(args.jobs)
        found: list[dict[str, Any]] = []

        def computing() -> bool:
            worker = _running_job(running, ids)
            if worker is not None:
                found.append(worker)
            return worker is not None

        _wait("a worker computing a job", computing, 120, every=0.1)
        victim = found[0]
        victim_pid, victim_job = int(victim["pid"]), str(victim["current_job"])
        os.kill(victim_pid, signal.SIGKILL)
        killed_at = time.time()
        documents = client.wait_finished(ids, args.timeout)
        job = documents[victim_job] or {}
        started = job.get("started_at")
        restart = None if started is None else round(_epoch(started) - killed_at, 1)
        return verdict("worker-kill", running, client, ids, documents,
                       killed_worker=victim["name"], killed_pid=victim_pid,
                       killed_job=victim_job, killed_job_status=job.get("status"),
                       killed_job_attempts=job.get("attempts"),
                       killed_job_finished_by=job.get("worker"),
                       seconds_from_kill_to_restart=restart,
                       claim_idle_ms=CLAIM_IDLE_MS)


def redis_restart(args: argparse.Namespace, form: dict[str, str]) -> dict[str, Any]:
    with cluster(args, "redis-restart") as running:
        client = Client(running, args.image, form)
        ids = client.submit(args.jobs)
        _wait("a worker computing a job", lambda: _running_job(running, ids) is not None, 120,
              every=0.1)
        before = client.jobs(ids)
        states = collections.Counter(d["status"] if d else "missing" for d in before.values())
        signum = signal.Signals[f"SIG{args.redis_signal}"]
        stopped = time.monotonic()
        running.stop_redis(signum)
        down: dict[str, dict[str, Any] | None] = {}
        readyz_down = None
        if args.outage >= 3:  # what clients see meanwhile (a poll takes about 2 s of retries)
            down = client.jobs(ids[:1])
            readyz_down = httpx.get(f"{running.url}/readyz").status_code
        time.sleep(max(0.0, args.outage - (time.monotonic() - stopped)))
        running.start_redis()
        outage = time.monotonic() - stopped
        back = _wait("the API answers again", lambda: client.job(ids[0]) is not None, 60)
        documents = client.wait_finished(ids, args.timeout)
        return verdict(f"redis-restart (SIG{args.redis_signal})", running, client, ids,
                       documents, states_when_stopped=dict(states),
                       outage_seconds=round(outage, 1),
                       api_answered_again_after_seconds=round(back, 1),
                       readyz_during_outage=readyz_down,
                       jobs_readable_during_outage=f"{sum(d is not None for d in down.values())}"
                       f" of {len(down)}")


def api_restart(args: argparse.Namespace, form: dict[str, str]) -> dict[str, Any]:
    with cluster(args, "api-restart") as running:
        client = Client(running, args.image, form)
        ids = client.submit(args.jobs)
        before = client.jobs(ids)
        states = collections.Counter(d["status"] if d else "missing" for d in before.values())
        signum = signal.Signals[f"SIG{args.api_signal}"]
        stopped = time.monotonic()
        running.stop_api(signum)
        running.start_api()
        outage = time.monotonic() - stopped
        after = client.jobs(ids)
        readable = sum(d is not None for d in after.values())
        states_after = collections.Counter(d["status"] if d else "missing" for d in after.values())
        documents = client.wait_finished(ids, args.timeout)
        return verdict(f"api-restart (SIG{args.api_signal})", running, client, ids, documents,
                       states_when_stopped=dict(states), api_down_seconds=round(outage, 1),
                       readable_after_restart=readable,
                       states_after_restart=dict(states_after))


def load(args: argparse.Namespace, form: dict[str, str]) -> dict[str, Any]:
    from krypton.benchmarks.service import format_report, run_load

    with cluster(args, "load") as running:
        assert running.api is not None
        reports = [run_load(running.url, args.image, jobs=args.jobs, concurrency=int(c),
                            form=form, api_key=running.user_key, api_pid=running.api.pid,
                            report=lambda line: typer.echo(line, err=True))
                   for c in args.concurrency.split(",")]
        table = format_report(reports)
        typer.echo(table)
        return {"scenario": "load", "table": table,
                "reports": [{k: v for k, v in r.as_dict().items()
                             if k not in ("latencies", "compute_seconds")}
                            for r in reports]}


def _epoch(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


SCENARIOS: dict[str, Callable[[argparse.Namespace, dict[str, str]], dict[str, Any]]] = {
    "worker-kill": worker_kill, "redis-restart": redis_restart, "api-restart": api_restart,
    "load": load}


def main() -> None:
    from krypton.benchmarks.hostile import SCENARIOS as HOSTILE

    scenarios = SCENARIOS | HOSTILE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="+", choices=sorted(scenarios))
    beside = Path(sys.executable).with_name("krypton")
    parser.add_argument("--krypton", default=str(beside) if beside.exists()
                        else shutil.which("krypton"),
                        help="The krypton command (default: beside this Python).")
    parser.add_argument("--redis-server", default="redis-server")
    parser.add_argument("--workdir", default=None, help="Where each run's folder goes.")
    parser.add_argument("--image", type=Path, default=ROOT / "examples" / "retina.jpg")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=10, help="Jobs per scenario.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS of each process (0: torch's default).")
    parser.add_argument("--concurrency", default="1,8", help="Clients of the load run.")
    parser.add_argument("--redis-signal", choices=("TERM", "KILL"), default="TERM")
    parser.add_argument("--api-signal", choices=("TERM", "KILL"), default="TERM")
    parser.add_argument("--outage", type=float, default=5.0,
                        help="Seconds Redis stays down (0: started again at once; under 3 "
                        "the API is not polled meanwhile).")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="Seconds to wait for the jobs of one scenario.")
    parser.add_argument("--clients", type=int, default=500,
                        help="crowd: simultaneous submissions, and streams of one job.")
    parser.add_argument("--stops", type=int, default=40, help="sigterm: workers stopped.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()
    form = {"model": args.model, "patch_size": str(args.patch), "stride": str(args.stride)}
    results = []
    for name in args.scenarios:
        results.append(scenarios[name](args, form))
        if args.json is not None:  # after each: a long run keeps what it measured
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    bad = [r["scenario"] for r in results
           if r.get("lost") or r.get("finished_more_than_once") or r.get("ok") is False]
    if bad:
        typer.echo(f"failed: {', '.join(bad)}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
