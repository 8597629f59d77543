"""The worker on the in-memory queue: burst runs, failures, retries, deletions, takeovers."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
import pytest
import redis

from krypton.core.model_cache import ModelCache
from krypton.core.plans import HeatmapPlan
from krypton.models.deployment import Deployment
from krypton.service import constants
from krypton.service.schemas import Job, JobStatus, new_job_id
from krypton.service.store import JobQueue
from krypton.service.store.memory import InMemoryQueue
from krypton.service.worker import Worker
from tests.service import helpers
from tests.service.helpers import MODEL, FakeClock


@pytest.fixture(scope="module")
def cache(deployment: Deployment) -> ModelCache:
    """One model cache for the module's workers: each test needs no rebuild."""
    return ModelCache(deployment, "cpu")


def _job(patch_size: int = 16, stride: int = 16, **fields: Any) -> Job:
    return Job(id=new_job_id(), params=HeatmapPlan(model=MODEL, patch_size=patch_size,
                                                     stride=stride), **fields)


def _burst(queue: JobQueue, deployment: Deployment, cache: ModelCache,
           name: str = "burst") -> Worker:
    worker = Worker(helpers.store_around(queue), deployment, name=name, cache=cache)
    asyncio.run(worker.run(burst=True, block_ms=50))
    return worker


def _heatmap(queue: InMemoryQueue, job_id: str) -> np.ndarray | None:
    data = asyncio.run(queue.result(job_id))
    return None if data is None else np.load(io.BytesIO(data))


def test_worker_runs_a_queued_job_to_success(deployment: Deployment, cache: ModelCache,
                                             retina_png: bytes) -> None:
    queue = InMemoryQueue(ttl_seconds=60)
    job = asyncio.run(queue.submit(_job(), [retina_png]))
    _burst(queue, deployment, cache)
    done = asyncio.run(queue.get(job.id))
    assert done is not None and done.status is JobStatus.succeeded, done
    assert (done.progress, done.attempts, done.worker) == (1.0, 1, "burst")


def test_worker_stores_the_heatmap_as_npy(deployment: Deployment, cache: ModelCache,
                                         retina_png: bytes) -> None:
    queue = InMemoryQueue(ttl_seconds=60)
    job = asyncio.run(queue.submit(_job(patch_size=16, stride=8), [retina_png]))
    _burst(queue, deployment, cache)
    heatmap = _heatmap(queue, job.id)
    assert heatmap is not None and heatmap.shape == (7, 7)


def test_worker_counts_the_jobs_it_finished(deployment: Deployment, cache: ModelCache,
                                            retina_png: bytes) -> None:
    queue = InMemoryQueue(ttl_seconds=60)
    for _ in range(3):
        asyncio.run(queue.submit(_job(), [retina_png]))
    assert _burst(queue, deployment, cache).jobs_done == 3


def test_worker_fails_a_job_whose_image_cannot_be_decoded(deployment: Deployment,
                                                          cache: ModelCache) -> None:
    queue = InMemoryQueue(ttl_seconds=60)
    job = asyncio.run(queue.submit(_job(), [b"\x89PNG\r\n\x1a\n broken"]))
    _burst(queue, deployment, cache)
    done = asyncio.run(queue.get(job.id))
    assert done is not None and done.status is JobStatus.failed
    assert done.error is not None
    assert (done.error["status"], done.error["job_id"]) == (422, job.id)
    assert asyncio.run(queue.result(job.id)) is None


def test_worker_fails_a_job_that_already_stopped_max_attempts_workers(
    deployment: Deployment, cache: ModelCache, retina_png: bytes
) -> None:
    queue = InMemoryQueue(ttl_seconds=60)
    job = asyncio.run(queue.submit(_job(attempts=constants.MAX_ATTEMPTS), [retina_png]))
    _burst(queue, deployment, cache)
    done = asyncio.run(queue.get(job.id))
    assert done is not None and done.status is JobStatus.failed
    assert done.error is not None
    assert done.error["type"] == "urn:krypton:problem:worker-crashed"


def test_worker_fails_a_job_that_crashed_max_attempts_workers_after_it_was_reclaimed(
    deployment: Deployment, cache: ModelCache, retina_png: bytes
) -> None:
    queue = InMemoryQueue(ttl_seconds=60, claim_idle_ms=50)

    async def scenario() -> Job | None:
        job = await queue.submit(_job(), [retina_png])
        await queue.save(job.model_copy(update={
            "status": JobStatus.running, "attempts": constants.MAX_ATTEMPTS,
            "worker": "third-dead-worker"}))
        worker = Worker(helpers.store_around(queue), deployment, name="alive", cache=cache)
        for _ in range(3):  # redelivered to the same worker if it does not settle the job
            await worker.run_once(block_ms=50)
            await asyncio.sleep(0.06)
        return await queue.get(job.id)

    done = asyncio.run(scenario())
    assert done is not None and done.status is JobStatus.failed, done
    assert done.error is not None and done.error["type"] == "urn:krypton:problem:worker-crashed"


def test_worker_drops_a_job_deleted_before_it_ran(deployment: Deployment, cache: ModelCache,
                                                  retina_png: bytes) -> None:
    queue = InMemoryQueue(ttl_seconds=60)
    job = asyncio.run(queue.submit(_job(), [retina_png]))
    asyncio.run(queue.delete(job.id))
    worker = _burst(queue, deployment, cache)
    assert worker.jobs_done == 0
    assert asyncio.run(queue.get(job.id)) is None
    assert asyncio.run(queue.result(job.id)) is None


def test_worker_retires_its_heartbeat_when_it_stops(deployment: Deployment, cache: ModelCache
                                                   ) -> None:
    store = helpers.store_around(InMemoryQueue(ttl_seconds=60))

    async def scenario() -> tuple[list[str], list[str]]:
        worker = Worker(store, deployment, name="short-lived", cache=cache)
        task = asyncio.create_task(worker.run(block_ms=50))
        while not await store.workers.live():
            await asyncio.sleep(0.01)
        beating = [w.name for w in await store.workers.live()]
        worker.stop()
        await asyncio.wait_for(task, 10)
        return beating, [w.name for w in await store.workers.live()]

    assert asyncio.run(scenario()) == (["short-lived"], [])


def test_worker_takes_over_the_job_of_a_dead_worker(deployment: Deployment, cache: ModelCache,
                                                    retina_png: bytes) -> None:
    queue = InMemoryQueue(ttl_seconds=60, claim_idle_ms=100)

    async def scenario() -> Job | None:
        job = await queue.submit(_job(), [retina_png])
        claim = await queue.claim("dead", 100)  # claimed, marked running, then the worker died
        assert claim is not None
        await queue.save(job.model_copy(update={"status": JobStatus.running, "attempts": 1,
                                                "worker": "dead"}))
        await asyncio.sleep(0.15)
        worker = Worker(helpers.store_around(queue), deployment, name="alive", cache=cache)
        await worker.run(burst=True, block_ms=50)
        return await queue.get(job.id)

    done = asyncio.run(scenario())
    assert done is not None and done.status is JobStatus.succeeded
    assert (done.attempts, done.worker) == (2, "alive")


def _run_until_running_then(queue: InMemoryQueue, deployment: Deployment, cache: ModelCache,
                            image: bytes, *, delete: bool) -> tuple[Worker, Job, float]:
    """Start a slow job, wait until it reports progress, optionally delete it, then wait
    for the worker to go idle. Returns the worker, the job and the seconds that took."""

    async def scenario() -> tuple[Worker, Job, float]:
        worker = Worker(helpers.store_around(queue), deployment, name="w", cache=cache)
        job = await queue.submit(_job(patch_size=8, stride=1), [image])
        task = asyncio.create_task(worker.run(block_ms=50))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:
            current = await queue.get(job.id)
            assert current is not None and not current.status.finished, current
            if current.progress > 0:
                break
            assert loop.time() < deadline, "the job never reported progress"
            await asyncio.sleep(0.01)
        if delete:
            await queue.delete(job.id)
        started = loop.time()
        while worker.current is not None:
            assert loop.time() < deadline, "the worker never went idle"
            await asyncio.sleep(0.01)
        idle_after = loop.time() - started
        worker.stop()
        await asyncio.wait_for(task, 30)
        return worker, job, idle_after

    return asyncio.run(scenario())


def test_worker_abandons_a_job_deleted_while_running(deployment: Deployment, cache: ModelCache,
                                                     retina_png: bytes) -> None:
    queue = InMemoryQueue(ttl_seconds=60)
    worker, job, _ = _run_until_running_then(queue, deployment, cache, retina_png, delete=True)
    assert worker.jobs_done == 0
    assert asyncio.run(queue.get(job.id)) is None
    assert asyncio.run(queue.result(job.id)) is None


def test_worker_abandons_a_deleted_job_at_the_next_progress_write(
    deployment: Deployment, cache: ModelCache, retina_png: bytes
) -> None:
    # The job runs for seconds; the deletion must stop it within about one progress interval.
    queue = InMemoryQueue(ttl_seconds=60)
    _, _, idle_after = _run_until_running_then(queue, deployment, cache, retina_png,
                                               delete=True)
    assert idle_after < constants.PROGRESS_INTERVAL_SECONDS + 2.0


def test_worker_told_to_stop_hands_its_running_job_back_at_the_next_batch(
    deployment: Deployment, cache: ModelCache, retina_png: bytes
) -> None:
    queue = InMemoryQueue(ttl_seconds=60, claim_idle_ms=100)

    async def scenario() -> tuple[float, Job | None, str | None]:
        worker = Worker(helpers.store_around(queue), deployment, name="stopping", cache=cache)
        job = await queue.submit(_job(patch_size=8, stride=1), [retina_png])
        task = asyncio.create_task(worker.run(block_ms=50))
        while (await queue.get(job.id)).progress == 0:  # type: ignore[union-attr]
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        started = loop.time()
        worker.stop()
        await asyncio.wait_for(task, 30)
        stopped_after = loop.time() - started
        await asyncio.sleep(0.15)
        successor = await queue.claim("successor", 50)
        return stopped_after, await queue.get(job.id), successor and successor.job_id

    stopped_after, handed_back, reclaimed = asyncio.run(scenario())
    assert stopped_after < 5.0  # the whole job takes far longer at stride 1
    assert handed_back is not None
    assert (handed_back.status, handed_back.attempts, handed_back.worker) == (
        JobStatus.queued, 0, None)
    assert reclaimed == handed_back.id


def test_worker_keeps_its_claim_when_claim_idle_is_shorter_than_the_heartbeat(
    deployment: Deployment, retina_png: bytes
) -> None:
    queue = InMemoryQueue(ttl_seconds=60, claim_idle_ms=300)

    async def scenario() -> Job | None:
        busy = Worker(helpers.store_around(queue), deployment, name="busy")
        idle = Worker(helpers.store_around(queue), deployment, name="idle")
        job = await queue.submit(_job(patch_size=8, stride=2), [retina_png])
        first = asyncio.create_task(busy.run(block_ms=50))
        while (await queue.get(job.id)).status is not JobStatus.running:  # type: ignore[union-attr]
            await asyncio.sleep(0.01)
        second = asyncio.create_task(idle.run(block_ms=50))
        while not (await queue.get(job.id)).status.finished:  # type: ignore[union-attr]
            await asyncio.sleep(0.02)
        for worker, task in ((busy, first), (idle, second)):
            worker.stop()
            await asyncio.wait_for(task, 30)
        return await queue.get(job.id)

    done = asyncio.run(scenario())
    assert done is not None and done.status is JobStatus.succeeded
    assert (done.attempts, done.worker) == (1, "busy")


class _FlakyQueue(InMemoryQueue):
    """An in-memory queue whose ``failing`` call fails once, as if Redis were restarting."""

    def __init__(self, failing: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failing, self.failures = failing, 1

    def _fail_once(self, call: str) -> None:
        if call == self.failing and self.failures:
            self.failures -= 1
            raise redis.ConnectionError("Connection refused")

    async def claim(self, consumer: str, block_ms: int) -> Any:
        self._fail_once("claim")
        return await super().claim(consumer, block_ms)

    async def finish(self, *args: Any, **kwargs: Any) -> bool:
        self._fail_once("finish")
        return await super().finish(*args, **kwargs)


def test_worker_survives_an_unreachable_queue_and_then_runs_the_job(
        deployment: Deployment, cache: ModelCache) -> None:
    queue = _FlakyQueue("claim", ttl_seconds=60)
    job = asyncio.run(queue.submit(_job(), [helpers.encode(helpers.retina_image(), "PNG")]))
    _burst(queue, deployment, cache)
    assert queue.failures == 0
    finished = asyncio.run(queue.get(job.id))
    assert finished is not None and finished.status is JobStatus.succeeded, finished


def test_worker_holds_a_finished_outcome_until_the_queue_answers_again(
        deployment: Deployment, cache: ModelCache, retina_png: bytes) -> None:
    queue = _FlakyQueue("finish", ttl_seconds=60)  # Redis away as the job finishes
    job = asyncio.run(queue.submit(_job(), [retina_png]))
    worker = _burst(queue, deployment, cache)
    done = asyncio.run(queue.get(job.id))
    assert queue.failures == 0
    assert done is not None and done.status is JobStatus.succeeded, done
    assert (done.attempts, worker.jobs_done) == (1, 1)
    assert _heatmap(queue, job.id) is not None


class _CorruptQueue(InMemoryQueue):
    """An in-memory queue whose stored job document is unreadable (another version's)."""

    async def get(self, job_id: str) -> Job | None:
        return Job.model_validate_json(b'{"id": "x", "params": {"kind": "unknown"}}')


def test_worker_drops_an_unreadable_job_document_and_keeps_working(
        deployment: Deployment, cache: ModelCache) -> None:
    clock = FakeClock()
    queue = _CorruptQueue(ttl_seconds=600, claim_idle_ms=1000, clock=clock)

    async def scenario() -> tuple[Worker, Any]:
        await queue.submit(_job(), [helpers.encode(helpers.retina_image(), "PNG")])
        worker = Worker(helpers.store_around(queue), deployment, name="burst", cache=cache)
        await worker.run(burst=True, block_ms=50)
        clock.advance(60)  # long past claim_idle_ms: an unacknowledged claim is reclaimed
        return worker, await queue.claim("another", 10)

    worker, reclaimed = asyncio.run(scenario())
    assert worker.jobs_done == 0
    assert reclaimed is None
