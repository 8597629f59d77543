"""The worker: claims jobs, runs the engine, stores results, acknowledges.

One long-lived worker per GPU (or CPU) loads each model once and keeps it.
Compute runs in a thread so the worker's event loop stays free to beat its
heartbeat, keep its claim fresh and write progress while batches finish. A
heatmap or tuning job deleted mid-run is abandoned at its next progress write;
a job whose worker died is reclaimed by another worker and run again from the
start, and so is one whose worker was told to stop (it hands the job back at
its next batch rather than holding shutdown until the job ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from redis.exceptions import RedisError

from krypton.engine import (
    Approximation,
    IncrementalOcclusion,
    OcclusionEngine,
    make_engine,
    tune,
)
from krypton.models import DatasetConfig, decode_image, patch_value, to_model_input
from krypton.models.deployment import DeployedModel, Deployment
from krypton.render import heatmap_npy
from krypton.service import constants
from krypton.service.errors import problem, problem_for
from krypton.service.queue import Claim, JobQueue
from krypton.service.schemas import (
    HeatmapParams,
    Job,
    JobStatus,
    Prediction,
    PredictParams,
    RunSummary,
    TuningParams,
    WorkerInfo,
    utcnow,
)

__all__ = ["ModelCache", "Worker"]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


class JobCancelled(Exception):
    """The job was deleted while it ran."""


class WorkerStopping(Exception):
    """The worker was told to stop while a job ran: the job goes back to the queue."""


@dataclass
class LoadedModel:
    """A deployed model built once, with its engines and weight identity."""

    deployed: DeployedModel
    network: torch.nn.Module
    weights_id: str
    engines: dict[str, OcclusionEngine] = field(default_factory=dict)

    def model_input(self, image: bytes, max_pixels: int) -> torch.Tensor:
        """Uploaded bytes decoded and preprocessed as this model was trained."""
        return to_model_input(decode_image(image, max_pixels=max_pixels),
                              self.deployed.preprocessing)


class ModelCache:
    """Builds each deployed model on first use and keeps it for the process's life."""

    def __init__(self, deployment: Deployment, device: str) -> None:
        self.deployment = deployment
        self.device = device
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> LoadedModel:
        with self._lock:
            if name not in self._loaded:
                deployed = self.deployment.model(name)
                started = time.perf_counter()
                network = deployed.build().to(self.device)
                self._loaded[name] = LoadedModel(deployed, network, deployed.weights_id())
                logger.info("loaded model %s (%s) on %s in %.2f s", name, deployed.architecture,
                            self.device, time.perf_counter() - started)
            return self._loaded[name]

    def preload(self) -> list[str]:
        """Build every deployed model now; returns the names that failed (logged).

        A deployment with a missing or mismatched checkpoint shows up in the
        worker's log at start, not in the first patient's job.
        """
        failed = []
        for name in self.deployment.models:
            try:
                self.get(name)
            except Exception:
                logger.exception("model %s cannot be loaded; its jobs will fail", name)
                failed.append(name)
        return failed

    def engine(self, name: str, mode: str) -> OcclusionEngine:
        loaded = self.get(name)
        kind = "naive" if mode == "naive" else "exact"
        with self._lock:
            if kind not in loaded.engines:
                loaded.engines[kind] = make_engine(loaded.network, kind, device=self.device)
            return loaded.engines[kind]


@dataclass(frozen=True)
class Outcome:
    """What a finished computation adds to its job, and the result bytes to store."""

    updates: dict[str, Any]
    result: bytes | None = None


def run_heatmap(cache: ModelCache, params: HeatmapParams, image: bytes, max_pixels: int,
                progress: Progress) -> Outcome:
    loaded = cache.get(params.model)
    preprocessing = loaded.deployed.preprocessing
    approximation = Approximation()
    if params.mode == "approximate":
        approximation = Approximation(params.tau or 1.0, params.drilldown_ratio,
                                      params.coarse_stride)
    result = approximation.attribute(
        cache.engine(params.model, params.mode),
        loaded.model_input(image, max_pixels), params.patch_size, params.stride,
        patch_value=patch_value(params.patch_color, preprocessing),
        target=params.target_class, progress=progress)
    labels = loaded.deployed.labels
    stats = result.stats
    return Outcome(updates={
        "prediction": Prediction(
            predicted_class=result.predicted_class,
            predicted_label=labels[result.predicted_class],
            predicted_probability=result.predicted_probability, target_class=result.target,
            target_label=labels[result.target], target_probability=result.target_probability),
        "run": RunSummary(
            positions=stats.positions, input_size=preprocessing.size,
            heatmap_shape=result.heatmap.shape, seconds=stats.seconds,
            device=stats.device, mode=params.mode, flops_ratio=stats.flops_ratio, tau=stats.tau,
            drilldown_ratio=stats.drilldown_ratio, coarse_stride=stats.coarse_stride),
    }, result=heatmap_npy(result.heatmap))


def run_predict(cache: ModelCache, params: PredictParams, image: bytes, max_pixels: int,
                progress: Progress) -> Outcome:
    loaded = cache.get(params.model)
    tensor = loaded.model_input(image, max_pixels)
    with torch.inference_mode():
        logits = loaded.network(tensor.unsqueeze(0).to(cache.device))
    probabilities = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
    top = int(np.argmax(probabilities))
    label = loaded.deployed.labels[top]
    probability = float(probabilities[top])
    progress(1, 1)
    return Outcome(updates={
        "probabilities": [float(p) for p in probabilities],
        "prediction": Prediction(predicted_class=top, predicted_label=label,
                                 predicted_probability=probability, target_class=top,
                                 target_label=label, target_probability=probability),
    })


def run_tuning(cache: ModelCache, params: TuningParams, images: list[bytes], max_pixels: int,
               progress: Progress) -> Outcome:
    loaded = cache.get(params.model)
    preprocessing = loaded.deployed.preprocessing
    tensors = [loaded.model_input(i, max_pixels) for i in images]
    steps = [0]

    def report(line: str) -> None:
        logger.info("tuning %s: %s", params.dataset, line)
        steps[0] += 1
        progress(min(steps[0], 19), 20)  # tuning's length is unknown up front

    engine = cache.engine(params.model, "exact")
    assert isinstance(engine, IncrementalOcclusion)
    tuned = tune(engine, tensors, params.patch_size, params.stride,
                 target_ssim=params.target_ssim, holdout=max(1, len(tensors) // 2),
                 patch_value=patch_value("gray", preprocessing),
                 report=report)
    chosen = tuned.approximation
    config = DatasetConfig(
        dataset=params.dataset, model=loaded.deployed.architecture, checkpoint=loaded.weights_id,
        patch_size=params.patch_size, stride=params.stride, tau=chosen.tau,
        drilldown_ratio=chosen.drilldown_ratio, coarse_stride=chosen.coarse_stride,
        target_ssim=params.target_ssim, achieved_ssim=tuned.holdout_ssim,
        speedup=tuned.speedup)
    cache.deployment.store.save(config)
    met = tuned.holdout_ssim >= params.target_ssim
    return Outcome(updates={"tuned": dataclasses.asdict(config) | {"met_target": met}})


_TORCH_LOCK = threading.Lock()
"""Workers sharing a process take turns with the model: torch.fx tracing (done
when an engine is first built) patches ``nn.Module.__call__`` process-wide, so a
forward pass in another thread during a trace would be traced too. Scale out
with one worker process per GPU; in one process there is nothing to gain."""


def _compute_alone(cache: ModelCache, params: HeatmapParams | PredictParams | TuningParams,
                   images: list[bytes], max_pixels: int, progress: Progress) -> Outcome:
    with _TORCH_LOCK:
        if isinstance(params, HeatmapParams):
            return run_heatmap(cache, params, images[0], max_pixels, progress)
        if isinstance(params, PredictParams):
            return run_predict(cache, params, images[0], max_pixels, progress)
        return run_tuning(cache, params, images, max_pixels, progress)


class Worker:
    """Claims jobs from ``queue`` and runs them until stopped (or, in burst mode, idle)."""

    def __init__(self, queue: JobQueue, deployment: Deployment, *, device: str = "cpu",
                 name: str | None = None, max_pixels: int = constants.DEFAULT_MAX_PIXELS,
                 cache: ModelCache | None = None) -> None:
        self.queue = queue
        self.cache = cache or ModelCache(deployment, device)
        self.device = device
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.max_pixels = max_pixels
        self.jobs_done = 0
        self.current: str | None = None
        self.started_at = utcnow()
        self._stopping = threading.Event()  # read by the loop and the compute thread

    def stop(self) -> None:
        """Finish now: a running job is handed back at its next batch."""
        self._stopping.set()

    async def run(self, *, burst: bool = False, block_ms: int = 1000) -> None:
        """Work until :meth:`stop` (or, with ``burst``, until the queue is empty)."""
        logger.info("worker %s started on %s (queue: %s)", self.name, self.device,
                    self.queue.name)
        beating = asyncio.create_task(self._beat_forever())
        try:
            while not self._stopping.is_set():
                try:
                    worked = await self.run_once(block_ms=block_ms)
                except (RedisError, OSError):
                    # Redis restarting or unreachable: wait it out rather than exit; an
                    # unacknowledged job is redelivered once Redis is back.
                    logger.warning("worker %s: queue unreachable; retrying", self.name,
                                   exc_info=True)
                    await asyncio.sleep(constants.HEARTBEAT_SECONDS)
                    continue
                except Exception:
                    # A bug or a malformed message must not stop the worker for good.
                    logger.exception("worker %s: unexpected error; carrying on", self.name)
                    await asyncio.sleep(constants.HEARTBEAT_SECONDS)
                    continue
                if burst and not worked:
                    break
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
            with contextlib.suppress(Exception):
                await self.queue.retire(self.name)
            logger.info("worker %s stopped after %d jobs", self.name, self.jobs_done)

    async def run_once(self, *, block_ms: int = 1000) -> bool:
        """Claim and finish one job; ``False`` when none came within ``block_ms``."""
        claim = await self.queue.claim(self.name, block_ms)
        if claim is None:
            return False
        self.current = claim.job_id
        try:
            await self._process(claim)
        finally:
            self.current = None
        return True

    async def _beat_forever(self) -> None:
        while True:
            try:
                await self.queue.beat(self._info())
            except Exception:  # a Redis blip must not kill the worker
                logger.warning("worker %s: heartbeat failed", self.name, exc_info=True)
            await asyncio.sleep(constants.HEARTBEAT_SECONDS)

    def _info(self) -> WorkerInfo:
        return WorkerInfo(name=self.name, device=self.device, pid=os.getpid(),
                          host=socket.gethostname(), started_at=self.started_at,
                          jobs_done=self.jobs_done, current_job=self.current)

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
        keepalive = asyncio.create_task(self._keep_claim(claim))
        try:
            outcome = await self._compute(job)
        except JobCancelled:
            logger.info("job %s: deleted or taken over while running; dropped", job.id)
            await self._let_go(claim)
            return
        except WorkerStopping:
            await self._hand_back(claim, job)
            return
        except Exception as exc:
            document = problem_for(exc) | {"job_id": job.id}
            if document["status"] >= 500:
                logger.exception("job %s failed", job.id)
            else:
                logger.info("job %s: refused: %s", job.id, document["detail"])
            outcome = Outcome(updates={"status": JobStatus.failed, "error": document})
        finally:
            keepalive.cancel()
        await self._finish(claim, job, outcome)
        logger.info("job %s: %s on %s %s in %.3f s", job.id, job.kind.value, job.params.model,
                    outcome.updates.get("status", JobStatus.succeeded).value,
                    time.perf_counter() - started)

    async def _finish(self, claim: Claim, job: Job, outcome: Outcome) -> None:
        current = await self.queue.get(job.id)
        if current is not None and current.worker not in (None, self.name):
            # Reclaimed by another worker while this one stalled: that one finishes it.
            logger.warning("job %s: taken over by %s; dropping this result", job.id,
                           current.worker)
            return
        if outcome.result is not None and not await self.queue.put_result(job.id, outcome.result):
            await self._let_go(claim)
            return
        updates = {"status": JobStatus.succeeded, "progress": 1.0} | outcome.updates
        finished = job.model_copy(update=updates | {"timings": job.timings.model_copy(
            update={"finished_at": utcnow()})})
        if finished.status is JobStatus.failed:
            finished = finished.model_copy(update={"progress": job.progress})
        if not await self.queue.save(finished, owner=self.name):
            await self._let_go(claim)
            return
        await self.queue.ack(claim)
        self.jobs_done += 1

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

    async def _keep_claim(self, claim: Claim) -> None:
        # Touch well within the idle time after which another worker may take the job.
        interval = min(constants.HEARTBEAT_SECONDS, self.queue.claim_idle_ms / 3000)
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.queue.touch(claim, self.name):
                    # Taken over: the owner-checked saves stop this worker's run.
                    logger.warning("job %s: claim taken over; no longer refreshed",
                                   claim.job_id)
                    return
            except Exception:
                logger.warning("job %s: could not refresh the claim", claim.job_id,
                               exc_info=True)

    async def _compute(self, job: Job) -> Outcome:
        params = job.params
        count = params.images if isinstance(params, TuningParams) else 1
        images = await self.queue.images(job.id, count)
        if images is None:
            raise JobCancelled(job.id)
        progress = self._progress_reporter(job)
        return await asyncio.to_thread(_compute_alone, self.cache, params, images,
                                       self.max_pixels, progress)

    def _progress_reporter(self, job: Job) -> Progress:
        """A callback for the compute thread that writes progress, throttled.

        It runs in the compute thread, so it hands the write to the event loop
        and waits for the answer: that is how a deletion reaches the engine.
        """
        loop = asyncio.get_running_loop()
        last = [0.0]

        def report(done: int, total: int) -> None:
            if self._stopping.is_set():
                raise WorkerStopping(job.id)
            now = time.monotonic()
            if done < total and now - last[0] < constants.PROGRESS_INTERVAL_SECONDS:
                return
            last[0] = now
            update = job.model_copy(update={"progress": min(done / max(total, 1), 1.0)})
            saved = asyncio.run_coroutine_threadsafe(self._save_progress(update), loop)
            try:
                exists = saved.result(timeout=30)
            except Exception:  # a Redis blip costs a progress update, not the job
                logger.warning("job %s: progress not saved", job.id, exc_info=True)
                return
            if not exists:
                raise JobCancelled(job.id)

        return report

    async def _save_progress(self, job: Job) -> bool:
        current = await self.queue.get(job.id)
        if current is None:
            return False
        return await self.queue.save(current.model_copy(update={"progress": job.progress}),
                                     owner=self.name)
