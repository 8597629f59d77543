"""The worker: claims jobs, runs their bodies, stores outcomes, acknowledges.

One long-lived worker per GPU (or CPU) loads each model once and keeps it
(:mod:`~krypton.core.model_cache`); what each kind of job computes lives in
:mod:`~krypton.core.jobs`. Compute runs in a thread so the worker's event
loop stays free to beat its heartbeat, keep its claim fresh and write
progress while batches finish. The engine polls a stop check before every
batch: a job deleted mid-run is abandoned at its next batch, and so is one
whose worker was told to stop (it hands the job back rather than holding
shutdown until the job ends). A job whose worker died is reclaimed by another
worker and run again from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError
from redis.exceptions import RedisError

from krypton.core.jobs import JobContext, Outcome, run_body
from krypton.core.model_cache import COMPUTE_LOCK, ModelCache
from krypton.engine import EngineError, RunStopped
from krypton.models import DEFAULT_MAX_PIXELS
from krypton.models.deployment import Deployment
from krypton.render import heatmap_npy, shrink
from krypton.service import constants
from krypton.service.config import DeliveryPolicy
from krypton.service.delivery import deliver, results_for_pacs
from krypton.service.pacs import PacsNotFound
from krypton.service.problems import invalid_input, problem, problem_for
from krypton.service.schemas import Delivery, Job, JobStatus, WorkerInfo, utcnow
from krypton.service.store import Claim, Store

__all__ = ["Worker"]

logger = logging.getLogger(__name__)


def failure(exc: BaseException) -> dict[str, Any]:
    """The problem document a job that raised ``exc`` is failed with: the engine's
    refusals are the caller's to fix, like any invalid input."""
    if isinstance(exc, EngineError):
        return invalid_input(str(exc))
    return problem_for(exc)


@dataclass
class _Running:
    """A job in the compute thread: its progress so far, its deadline, whether it is gone."""

    deadline: float = float("inf")
    """``time.monotonic()`` after which the engine stops the job."""
    done: int = 0
    total: int = 0
    gone: threading.Event = field(default_factory=threading.Event)
    partial: npt.NDArray[np.float32] | None = None
    """The heatmap so far, as the engine last reported it."""

    def report(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def report_partial(self, heatmap: npt.NDArray[np.float32]) -> None:
        self.partial = heatmap

    @property
    def fraction(self) -> float:
        return min(self.done / self.total, 1.0) if self.total else 0.0


class Worker:
    """Claims jobs from ``store``'s queue and runs them until stopped (or, in burst mode,
    idle), beating in its worker registry."""

    def __init__(self, store: Store, deployment: Deployment, *, device: str = "cpu",
                 name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 cache: ModelCache | None = None,
                 job_timeout_seconds: float = constants.DEFAULT_JOB_TIMEOUT_SECONDS,
                 delivery: DeliveryPolicy | None = None) -> None:
        self.store = store
        self.deployment = deployment
        self.delivery = delivery or DeliveryPolicy()
        self.queue = store.jobs
        self.cache = cache or ModelCache(deployment, device)
        self.device = device
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.max_pixels = max_pixels
        self.job_timeout_seconds = job_timeout_seconds
        self.jobs_done = 0
        self.current: str | None = None
        self.started_at = utcnow()
        self._stopping = threading.Event()  # read by the loop and the compute thread
        self._claimed_at = time.monotonic()

    def stop(self) -> None:
        """Finish now: a running job is handed back at its next batch."""
        self._stopping.set()

    async def run(self, *, burst: bool = False, block_ms: int = 1000) -> None:
        """Work until :meth:`stop` (or, with ``burst``, until the queue is empty)."""
        logger.info("worker %s started on %s (queue: %s)", self.name, self.device,
                    self.store.name)
        quiet = asyncio.Event()
        beating = asyncio.create_task(self._beat_until(quiet))
        unreachable = False
        try:
            while not self._stopping.is_set():
                try:
                    worked = await self.run_once(block_ms=block_ms)
                except (RedisError, OSError) as exc:
                    # Redis restarting or unreachable: wait it out rather than exit; an
                    # unacknowledged job is redelivered once Redis is back. The traceback
                    # once an outage, not every two seconds.
                    logger.warning("worker %s: queue unreachable (%s: %s); retrying every "
                                   "%g s", self.name, type(exc).__name__, exc,
                                   constants.HEARTBEAT_SECONDS, exc_info=not unreachable)
                    unreachable = True
                    await asyncio.sleep(constants.HEARTBEAT_SECONDS)
                    continue
                except Exception:
                    # A bug or a malformed message must not stop the worker for good.
                    logger.exception("worker %s: unexpected error; carrying on", self.name)
                    await asyncio.sleep(constants.HEARTBEAT_SECONDS)
                    continue
                unreachable = False
                if burst and not worked:
                    break
        finally:
            # Heartbeats stop first, and the wait for them is bounded: a cancellation
            # that lands inside a Redis command can be lost (redis-py), and a worker
            # must never go on looking alive while it takes no jobs.
            await _stop_task(beating, quiet)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.store.workers.retire(self.name),
                                       constants.SHUTDOWN_WAIT_SECONDS)
            logger.info("worker %s stopped after %d jobs", self.name, self.jobs_done)

    async def run_once(self, *, block_ms: int = 1000) -> bool:
        """Claim and finish one job; ``False`` when none came within ``block_ms``."""
        claim = await self.queue.claim(self.name, block_ms)
        self._claimed_at = time.monotonic()
        if claim is None:
            return False
        self.current = claim.job_id
        try:
            await self._process(claim)
        finally:
            self.current = None
            self._claimed_at = time.monotonic()
        return True

    @property
    def can_claim(self) -> bool:
        """Whether this worker is at work: running a job, or its last claim answered
        within a heartbeat's lifetime (a worker whose claims fail is not one to wait for)."""
        recent = time.monotonic() - self._claimed_at < self.store.workers.heartbeat_ttl_seconds
        return self.current is not None or recent

    async def _beat_until(self, quiet: asyncio.Event) -> None:
        """Beat every ``HEARTBEAT_SECONDS`` while the worker can claim, until ``quiet``."""
        beats = 0
        while not quiet.is_set():
            try:
                if self.can_claim:
                    await self.store.workers.beat(self._info())
                if beats % constants.PRUNE_EVERY_BEATS == 0:
                    forgotten = await self.store.workers.prune()
                    if forgotten:
                        logger.info("forgot dead workers %s", ", ".join(forgotten))
            except Exception:  # a Redis blip must not kill the worker
                logger.warning("worker %s: heartbeat failed", self.name, exc_info=True)
            beats += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(quiet.wait(), constants.HEARTBEAT_SECONDS)

    def _info(self) -> WorkerInfo:
        return WorkerInfo(name=self.name, device=self.device, pid=os.getpid(),
                          host=socket.gethostname(), started_at=self.started_at,
                          jobs_done=self.jobs_done, current_job=self.current,
                          weights=self.cache.weights())

    async def _process(self, claim: Claim) -> None:
        try:
            job = await self.queue.get(claim.job_id)
        except ValidationError:
            # Written by an incompatible version; retrying cannot help.
            logger.exception("job %s: unreadable job document; dropped", claim.job_id)
            await self.queue.ack(claim)
            return
        if job is None or job.status.finished:
            # Deleted, expired, or finished by a worker that died before acknowledging.
            await self.queue.ack(claim)
            return
        if job.attempts >= constants.MAX_ATTEMPTS:
            # Every earlier attempt's worker is dead: this worker owns the job now.
            dead = job.worker or ""
            job = job.model_copy(update={"worker": self.name})
            if not await self.queue.save(job, owner=dead):
                await self._let_go(claim)
                return
            await self._finish(claim, job, Outcome(updates={
                "status": JobStatus.failed, "error": problem(
                    500, "worker-crashed", "Job crashed its workers",
                    f"the job was started {job.attempts} times and its worker stopped each time",
                    job_id=job.id)}))
            return
        previous = job.worker or ""
        job = job.model_copy(update={
            "status": JobStatus.running, "attempts": job.attempts + 1, "worker": self.name,
            "progress": 0.0,
            "timings": job.timings.model_copy(update={"started_at": utcnow()})})
        if not await self.queue.save(job, owner=previous):
            await self._let_go(claim)
            return
        started = time.perf_counter()
        logger.info("job %s: %s on %s started (attempt %d)", job.id, job.kind.value,
                    job.params.model, job.attempts)
        running = _Running(deadline=time.monotonic() + self.job_timeout_seconds)
        released, computed = asyncio.Event(), asyncio.Event()
        keeping = asyncio.create_task(self._keep_claim(claim, released))
        writing = asyncio.create_task(self._write_progress(job, running, computed))
        try:
            outcome = await self._compute(job, running)
            if job.pacs is not None and job.pacs.results_to is not None:
                outcome = await self._deliver(job, outcome)
        except RunStopped:
            if self._stopping.is_set():
                await _stop_task(keeping, released)
                await self._hand_back(claim, job)
                return
            if running.gone.is_set():
                await _stop_task(keeping, released)
                logger.info("job %s: deleted or taken over while running; dropped", job.id)
                await self._let_go(claim)
                return
            logger.info("job %s: stopped at its deadline", job.id)
            outcome = Outcome(updates={"status": JobStatus.failed, "error": problem(
                504, "job-deadline", "Job deadline exceeded",
                f"the job ran longer than {self.job_timeout_seconds:g} s and was stopped; a "
                "larger stride or approximate mode finishes sooner", job_id=job.id)})
        except Exception as exc:
            document = failure(exc) | {"job_id": job.id}
            if document["status"] >= 500:
                logger.exception("job %s failed", job.id)
            else:
                # The type, not the detail: a detail may quote the image's header.
                logger.info("job %s: refused: %s", job.id, document["type"])
            outcome = Outcome(updates={"status": JobStatus.failed, "error": document})
        finally:
            await _stop_task(writing, computed)
        try:
            stored = await self._finish_when_reachable(claim, job, outcome)
        finally:
            await _stop_task(keeping, released)
        if not stored:
            logger.info("job %s: outcome not stored: another worker holds the job", job.id)
            return
        logger.info("job %s: %s on %s %s in %.3f s", job.id, job.kind.value, job.params.model,
                    outcome.updates.get("status", JobStatus.succeeded).value,
                    time.perf_counter() - started)

    async def _finish_when_reachable(self, claim: Claim, job: Job, outcome: Outcome) -> bool:
        """Store a finished job's outcome, waiting out a Redis outage.

        Dropping the outcome would have the job reclaimed and computed again, and
        each such rerun would count towards the crash limit though no worker
        crashed. The claim is still refreshed meanwhile, so once Redis answers
        this worker, not another, stores the outcome. A worker told to stop
        gives up and leaves the claim to be reclaimed.
        """
        while True:
            try:
                return await self._finish(claim, job, outcome)
            except (RedisError, OSError):
                if self._stopping.is_set():
                    raise
                logger.warning("job %s: queue unreachable; holding its outcome", job.id)
                await asyncio.sleep(constants.HEARTBEAT_SECONDS)

    async def _finish(self, claim: Claim, job: Job, outcome: Outcome) -> bool:
        """Store the outcome, if this worker still holds the job (one step: a worker that
        took the job over while this one stalled keeps its own outcome); whether it did."""
        if outcome.dataset_config is not None:
            await self.store.configs.save(outcome.dataset_config)
        updates = {"status": JobStatus.succeeded, "progress": 1.0} | outcome.updates
        finished = job.model_copy(update=updates | {"timings": job.timings.model_copy(
            update={"finished_at": utcnow()})})
        if finished.status is JobStatus.failed:
            finished = finished.model_copy(update={"progress": job.progress})
        if await self.queue.finish(claim, finished, outcome.result, owner=self.name):
            self.jobs_done += 1
            return True
        await self._let_go(claim)
        return False

    async def _let_go(self, claim: Claim) -> None:
        """Stop working on ``claim``: acknowledge it if the job is gone or finished;
        leave it to the worker that took it over otherwise."""
        current = await self.queue.get(claim.job_id)
        if current is None or current.status.finished:
            await self.queue.ack(claim)
        else:
            logger.warning("job %s: taken over by %s; dropping this worker's work",
                           claim.job_id, current.worker)

    async def _hand_back(self, claim: Claim, job: Job) -> None:
        """Put a job this stopping worker started back as it was before it started.

        The claim stays unacknowledged, so another worker reclaims it after
        ``claim_idle_ms``; the attempt does not count towards the crash limit.
        """
        queued = job.model_copy(update={
            "status": JobStatus.queued, "attempts": job.attempts - 1, "worker": None,
            "progress": 0.0, "timings": job.timings.model_copy(update={"started_at": None})})
        if await self.queue.save(queued, owner=self.name):
            logger.info("job %s: worker %s stopping; job handed back", job.id, self.name)
        else:
            await self._let_go(claim)

    async def _keep_claim(self, claim: Claim, released: asyncio.Event) -> None:
        # Touch well within the idle time after which another worker may take the job.
        interval = min(constants.HEARTBEAT_SECONDS, self.queue.claim_idle_ms / 3000)
        while not released.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), interval)
                return
            try:
                if not await self.queue.touch(claim, self.name):
                    # Taken over: the owner-checked saves stop this worker's run.
                    logger.warning("job %s: claim taken over; no longer refreshed",
                                   claim.job_id)
                    return
            except Exception:
                logger.warning("job %s: could not refresh the claim", claim.job_id,
                               exc_info=True)

    async def _compute(self, job: Job, running: _Running) -> Outcome:
        images = await self.queue.images(job.id, job.images)
        if images is None:
            raise RunStopped(f"the images of job {job.id} are gone")
        context = JobContext(
            cache=self.cache, max_pixels=self.max_pixels, progress=running.report,
            partial=running.report_partial,
            should_stop=lambda: (self._stopping.is_set() or running.gone.is_set()
                                 or time.monotonic() > running.deadline))

        def compute() -> Outcome:
            with COMPUTE_LOCK:
                return run_body(context, job.kind, job.params, images)

        return await asyncio.to_thread(compute)

    async def _deliver(self, job: Job, outcome: Outcome) -> Outcome:
        """The outcome, with what became of storing its DICOM results in the PACS."""
        assert job.pacs is not None and job.pacs.results_to is not None
        assert outcome.result is not None
        images = await self.queue.images(job.id, job.images)
        if images is None:
            raise RunStopped(f"the images of job {job.id} are gone")
        began = time.perf_counter()
        documents = await asyncio.to_thread(
            results_for_pacs, job.model_copy(update=outcome.updates), outcome.result, images,
            weights=self.cache.get(job.params.model).weights_id)
        server = self.deployment.pacs.get(job.pacs.results_to)
        if server is None:  # the API's registry names a PACS this worker's does not
            missing = PacsNotFound(f"this worker's deployment names no PACS "
                                   f"{job.pacs.results_to!r}; the API and every worker must "
                                   "read the same registry")
            delivery = Delivery(pacs=job.pacs.results_to, status="failed", attempts=0,
                                error=problem_for(missing))
        else:
            try:
                delivery = await deliver(server, job.pacs.instance.study_instance_uid,
                                         documents, policy=self.delivery,
                                         stopping=self._stopping.is_set)
            except Exception as exc:  # the heatmap is computed: keep it, say what failed
                logger.exception("job %s: storing results in PACS %r failed", job.id,
                                 server.name)
                delivery = Delivery(pacs=server.name, status="failed", attempts=1,
                                    study_instance_uid=job.pacs.instance.study_instance_uid,
                                    error=problem_for(exc))
        logger.info("job %s: results %s in PACS %r in %.3f s", job.id,
                    delivery.status.replace("_", " "), delivery.pacs,
                    time.perf_counter() - began)
        return Outcome(updates=outcome.updates | {"delivery": delivery},
                       result=outcome.result, dataset_config=outcome.dataset_config)

    async def _write_progress(self, job: Job, running: _Running,
                              computed: asyncio.Event) -> None:
        """Save the running job's progress and heatmap so far now and then; notice
        when it is deleted.

        At most one write of each every ``PROGRESS_INTERVAL_SECONDS``, the map
        shrunk to ``PARTIAL_SIDE`` cells a side. A deleted job (or one another
        worker took over) sets ``running.gone``, which the engine sees before
        its next batch.
        """
        written = 0.0
        shown: npt.NDArray[np.float32] | None = None
        while not computed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(computed.wait(), constants.PROGRESS_INTERVAL_SECONDS)
                return
            try:
                current = await self.queue.get(job.id)
                if current is None or current.worker != self.name or current.status.finished:
                    running.gone.set()
                    return
                partial = running.partial
                if partial is not None and partial is not shown:
                    shown = partial
                    await self.queue.put_partial(job.id, heatmap_npy(
                        shrink(partial, constants.PARTIAL_SIDE)))
                if running.fraction > written:
                    written = running.fraction
                    if not await self.queue.save(
                            current.model_copy(update={"progress": written}), owner=self.name):
                        running.gone.set()
                        return
            except Exception:  # a Redis blip costs a progress update, not the job
                logger.warning("job %s: progress not saved", job.id, exc_info=True)


async def _stop_task(task: asyncio.Task[None], done: asyncio.Event) -> None:
    """Stop a loop that watches ``done``: tell it, cancel it, wait a bounded time.

    The event ends it even where a cancellation is lost inside a Redis command;
    the bound keeps a stuck command from holding the worker.
    """
    done.set()
    task.cancel()
    await asyncio.wait({task}, timeout=constants.SHUTDOWN_WAIT_SECONDS)
