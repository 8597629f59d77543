"""The store's contract, held by both the embedded store and Redis: jobs and their queue,
workers' heartbeats, tuned configs, and notice of a job's changes."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from krypton.core.plans import HeatmapPlan
from krypton.models import DatasetConfig, DatasetStore
from krypton.service.problems import RateLimited, ServiceError
from krypton.service.schemas import Job, JobStatus, WorkerInfo, new_job_id, utcnow
from krypton.service.store import Admission, Claim, JobQueue, Store
from krypton.service.store.redis import RedisStreamQueue
from tests.service.helpers import FakeClock

Runner = Callable[..., Any]


_clocks: dict[int, FakeClock] = {}
"""The injected clock of each in-memory queue a scenario runs on, by ``id(queue)``."""


async def _elapse(queue: JobQueue, seconds: float) -> None:
    """Let ``seconds`` pass for ``queue``: on its clock in memory, for real in Redis."""
    clock = _clocks.get(id(queue))
    if clock is None:
        await asyncio.sleep(seconds)
    else:
        clock.advance(seconds)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a scenario on a fresh queue of each kind (options as keyword arguments)."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    def runner(scenario: Callable[[Any], Awaitable[Any]], *, whole: bool = False,
               **options: Any) -> Any:
        """``scenario`` is given the job queue, or with ``whole`` the whole store."""
        options = {"ttl_seconds": 60, **options}

        async def main() -> Any:
            store: Store
            if url is None:
                clock = FakeClock()
                store = Store.memory(clock=clock, **options)
                _clocks[id(store.jobs)] = clock
            else:
                store = Store.redis(url, **options)
            try:
                return await scenario(store if whole else store.jobs)
            finally:
                _clocks.pop(id(store.jobs), None)
                await store.close()

        return asyncio.run(main())

    return runner


def _job() -> Job:
    return Job(id=new_job_id(), params=HeatmapPlan(model="m", patch_size=16, stride=8))


def _worker(name: str) -> WorkerInfo:
    return WorkerInfo(name=name, device="cpu", pid=1, host="h", started_at=utcnow(),
                      jobs_done=0, current_job=None)


async def _finish(queue: JobQueue, job: Job, result: bytes | None = b"npy", *,
                  owner: str = "") -> bool:
    """Claim ``job`` and store it as succeeded with ``result``, as worker ``owner``."""
    claim = await queue.claim(owner or "w", 100)
    assert claim is not None and claim.job_id == job.id
    return await queue.finish(claim, job.model_copy(update={"status": JobStatus.succeeded}),
                              result, owner=owner)


async def _until(queue: JobQueue, check: Callable[[], Awaitable[bool]],
                 timeout: float = 10.0) -> None:
    waited = 0.0
    while not await check():
        assert waited < timeout, "timed out"
        await _elapse(queue, 0.05)
        waited += 0.05


# ---------------------------------------------------------------- documents


def test_queue_get_returns_the_submitted_job(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> tuple[Job, Job | None]:
        job = await queue.submit(_job(), [b"image"])
        return job, await queue.get(job.id)

    stored, fetched = run(scenario)
    assert fetched == stored


def test_queue_submit_stamps_expiry_ttl_from_now(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> Job:
        return await queue.submit(_job(), [b"image"])

    job = run(scenario, ttl_seconds=120)
    assert job.expires_at is not None
    assert abs((job.expires_at - utcnow() - dt.timedelta(seconds=120)).total_seconds()) < 5


def test_queue_get_of_unknown_job_is_none(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> Job | None:
        return await queue.get("nope")

    assert run(scenario) is None


def test_queue_images_returns_every_uploaded_image_in_order(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> list[bytes] | None:
        job = await queue.submit(_job(), [b"first", b"second"])
        return await queue.images(job.id, 2)

    assert run(scenario) == [b"first", b"second"]


def test_queue_save_overwrites_an_existing_job(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> tuple[bool, Job | None]:
        job = await queue.submit(_job(), [b"image"])
        saved = await queue.save(job.model_copy(update={"status": JobStatus.running}))
        return saved, await queue.get(job.id)

    saved, job = run(scenario)
    assert saved and job is not None and job.status is JobStatus.running


def test_queue_save_with_owner_writes_while_the_owner_holds_the_job(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> tuple[bool, bool, Job | None]:
        job = await queue.submit(_job(), [b"image"])
        claimed = await queue.save(job.model_copy(update={"worker": "a"}), owner="")
        progressed = await queue.save(job.model_copy(update={"worker": "a", "progress": 0.5}),
                                      owner="a")
        return claimed, progressed, await queue.get(job.id)

    claimed, progressed, job = run(scenario)
    assert claimed and progressed and job is not None and job.progress == 0.5


def test_queue_save_with_owner_refuses_a_job_another_worker_took_over(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> tuple[bool, Job | None]:
        job = await queue.submit(_job(), [b"image"])
        await queue.save(job.model_copy(update={"worker": "b"}))
        stale = await queue.save(job.model_copy(update={"worker": "a", "progress": 0.5}),
                                 owner="a")
        return stale, await queue.get(job.id)

    stale, job = run(scenario)
    assert not stale and job is not None and (job.worker, job.progress) == ("b", 0.0)


def test_queue_save_with_owner_never_overwrites_a_finished_job(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> tuple[bool, Job | None]:
        job = await queue.submit(_job(), [b"image"])
        await queue.save(job.model_copy(update={"worker": "a", "status": JobStatus.succeeded}))
        late = await queue.save(job.model_copy(update={"worker": "a",
                                                       "status": JobStatus.running}), owner="a")
        return late, await queue.get(job.id)

    late, job = run(scenario)
    assert not late and job is not None and job.status is JobStatus.succeeded


def test_queue_result_round_trips_the_bytes(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> tuple[bool, bytes | None]:
        job = await queue.submit(_job(), [b"image"])
        return await _finish(queue, job), await queue.result(job.id)

    assert run(scenario) == (True, b"npy")


@pytest.mark.parametrize("what", ["job", "images", "result"])
def test_queue_delete_purges_job_images_and_result(run: Runner, what: str) -> None:
    async def scenario(queue: JobQueue) -> object:
        job = await queue.submit(_job(), [b"first", b"second"])
        await _finish(queue, job)
        assert await queue.delete(job.id)
        return {"job": await queue.get(job.id), "images": await queue.images(job.id, 2),
                "result": await queue.result(job.id)}[what]

    assert run(scenario) is None


def test_queue_delete_of_unknown_job_is_false(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> bool:
        return await queue.delete("nope")

    assert run(scenario) is False


def test_queue_save_after_delete_does_not_bring_the_job_back(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> tuple[bool, Job | None]:
        job = await queue.submit(_job(), [b"image"])
        await queue.delete(job.id)
        saved = await queue.save(job.model_copy(update={"status": JobStatus.succeeded}))
        return saved, await queue.get(job.id)

    assert run(scenario) == (False, None)


def test_queue_finish_after_delete_stores_nothing(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> tuple[bool, bytes | None]:
        job = await queue.submit(_job(), [b"image"])
        claim = await queue.claim("w", 100)
        assert claim is not None
        await queue.delete(job.id)
        done = job.model_copy(update={"status": JobStatus.succeeded})
        return await queue.finish(claim, done, b"npy", owner=""), await queue.result(job.id)

    assert run(scenario) == (False, None)


def test_a_job_deleted_while_queued_is_never_claimed(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> list[Claim | None]:
        job = await queue.submit(_job(), [b"image"])
        await queue.delete(job.id)
        claims = [await queue.claim("w", 10)]
        kept = await queue.submit(_job(), [b"image"])
        claims.append(await queue.claim("w", 10))
        return [None if c is None else c.job_id == kept.id for c in claims]

    assert run(scenario) == [None, True]


def test_queue_finish_by_a_worker_that_lost_the_job_stores_nothing(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> tuple[bool, Job | None, bytes | None]:
        job = await queue.submit(_job(), [b"image"])
        await queue.save(job.model_copy(update={"worker": "b", "status": JobStatus.running}))
        stale = await _finish(queue, job, b"stale", owner="a")
        return stale, await queue.get(job.id), await queue.result(job.id)

    stale, job, result = run(scenario)
    assert (stale, result) == (False, None)
    assert job is not None and job.worker == "b" and job.status is JobStatus.running


def test_queue_finish_acknowledges_the_claim(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> Any:
        job = await queue.submit(_job(), [b"image"])
        assert await _finish(queue, job)
        await _elapse(queue, 0.2)
        return await queue.claim("later", 10)

    assert run(scenario, claim_idle_ms=100) is None


def test_queue_job_images_and_result_expire_after_the_ttl(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> list[object]:
        job = await queue.submit(_job(), [b"image"])
        await _finish(queue, job)
        assert await queue.get(job.id) is not None
        await _until(queue, lambda: _gone(queue, job.id))
        return [await queue.images(job.id, 1), await queue.result(job.id)]

    assert run(scenario, ttl_seconds=1) == [None, None]


async def _gone(queue: JobQueue, job_id: str) -> bool:
    return await queue.get(job_id) is None


# ---------------------------------------------------------------- claims


def test_queue_claim_delivers_each_job_to_one_consumer(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> tuple[set[str], set[str], object]:
        submitted = {(await queue.submit(_job(), [b"i"])).id for _ in range(2)}
        first = await queue.claim("a", 100)
        second = await queue.claim("b", 100)
        third = await queue.claim("c", 100)
        assert first is not None and second is not None
        return submitted, {first.job_id, second.job_id}, third

    submitted, claimed, third = run(scenario)
    assert claimed == submitted
    assert third is None


def test_queue_claim_without_jobs_waits_then_returns_none(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> tuple[object, float]:
        started = asyncio.get_running_loop().time()
        claim = await queue.claim("a", 200)
        return claim, asyncio.get_running_loop().time() - started

    claim, waited = run(scenario)
    assert claim is None
    assert waited >= 0.15


def test_queue_claim_hands_an_idle_claim_to_another_consumer(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> tuple[str, str]:
        job = await queue.submit(_job(), [b"i"])
        first = await queue.claim("dead", 100)
        assert first is not None
        await _elapse(queue, 0.25)
        second = await queue.claim("alive", 100)
        assert second is not None
        return job.id, second.job_id

    submitted, reclaimed = run(scenario, claim_idle_ms=200)
    assert reclaimed == submitted


def test_queue_touch_keeps_a_claim_from_being_reclaimed(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> object:
        await queue.submit(_job(), [b"i"])
        claim = await queue.claim("busy", 100)
        assert claim is not None
        for _ in range(3):
            await _elapse(queue, 0.25)
            await queue.touch(claim, "busy")
        return await queue.claim("idle", 50)

    assert run(scenario, claim_idle_ms=600) is None


def test_queue_touch_reports_a_claim_still_held(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> bool:
        await queue.submit(_job(), [b"i"])
        claim = await queue.claim("busy", 100)
        assert claim is not None
        return await queue.touch(claim, "busy")

    assert run(scenario) is True


def test_queue_touch_by_a_stalled_worker_does_not_take_the_claim_back(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> tuple[bool, bool]:
        await queue.submit(_job(), [b"i"])
        stalled = await queue.claim("stalled", 100)
        assert stalled is not None
        await _elapse(queue, 0.25)
        taken = await queue.claim("rescuer", 100)
        assert taken is not None and taken.message_id == stalled.message_id
        return await queue.touch(stalled, "stalled"), await queue.touch(taken, "rescuer")

    stalled_touched, rescuer_touched = run(scenario, claim_idle_ms=200)
    assert stalled_touched is False
    assert rescuer_touched is True


def test_queue_touch_after_ack_reports_the_claim_gone(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> bool:
        await queue.submit(_job(), [b"i"])
        claim = await queue.claim("a", 100)
        assert claim is not None
        await queue.ack(claim)
        return await queue.touch(claim, "a")

    assert run(scenario) is False


def test_queue_ack_ends_delivery_for_good(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> object:
        await queue.submit(_job(), [b"i"])
        claim = await queue.claim("a", 100)
        assert claim is not None
        await queue.ack(claim)
        await _elapse(queue, 0.25)
        return await queue.claim("b", 50)

    assert run(scenario, claim_idle_ms=200) is None


# ---------------------------------------------------------------- heartbeats


def test_registry_lists_beating_workers_by_name(run: Runner) -> None:
    async def scenario(store: Store) -> list[str]:
        for name in ("w2", "w1"):
            await store.workers.beat(_worker(name))
        return [worker.name for worker in await store.workers.live()]

    assert run(scenario, whole=True) == ["w1", "w2"]


def test_registry_retire_removes_the_heartbeat(run: Runner) -> None:
    async def scenario(store: Store) -> list[WorkerInfo]:
        await store.workers.beat(_worker("w1"))
        await store.workers.retire("w1")
        return await store.workers.live()

    assert run(scenario, whole=True) == []


def test_registry_heartbeat_expires_when_a_worker_stops_beating(run: Runner) -> None:
    async def scenario(store: Store) -> list[WorkerInfo]:
        await store.workers.beat(_worker("w1"))
        assert await store.workers.live()
        await _until(store.jobs, lambda: _no_workers(store))
        return await store.workers.live()

    assert run(scenario, whole=True, heartbeat_ttl_seconds=1) == []


async def _no_workers(store: Store) -> bool:
    return not await store.workers.live()


def test_queue_ping_answers_true(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> bool:
        return await queue.ping()

    assert run(scenario) is True


def test_redis_queue_ping_of_unreachable_server_is_false(unused_port: int) -> None:
    async def main() -> bool:
        queue = RedisStreamQueue.from_url(f"redis://127.0.0.1:{unused_port}/0", ttl_seconds=60)
        try:
            return await queue.ping()
        finally:
            await queue.close()

    assert asyncio.run(main()) is False



# ---------------------------------------------------------------- dataset configs


def _config(tau: float = 0.7) -> DatasetConfig:
    return DatasetConfig(dataset="retina", model="resnet18", checkpoint="ab" * 32,
                         patch_size=16, stride=8, tau=tau, drilldown_ratio=0.1,
                         coarse_stride=24, target_ssim=0.9, achieved_ssim=0.93)


def test_store_dataset_config_is_none_before_tuning(run: Runner) -> None:
    async def scenario(store: Store) -> object:
        return await store.configs.get("retina")

    assert run(scenario, whole=True) is None


def test_store_keeps_the_latest_dataset_config(run: Runner) -> None:
    async def scenario(store: Store) -> object:
        await store.configs.save(_config(0.7))
        await store.configs.save(_config(0.5))
        return await store.configs.get("retina")

    assert run(scenario, whole=True) == _config(0.5)


def test_store_dataset_configs_do_not_expire_with_jobs(run: Runner) -> None:
    async def scenario(store: Store) -> object:
        await store.configs.save(_config())
        job = await store.jobs.submit(_job(), [b"image"])
        await _until(store.jobs, lambda: _gone(store.jobs, job.id))
        return await store.configs.get("retina")

    assert run(scenario, whole=True, ttl_seconds=1) == _config()


def test_embedded_store_with_a_config_folder_keeps_configs_as_files(tmp_path: Path) -> None:
    async def scenario() -> object:
        await Store.memory(ttl_seconds=60, configs=DatasetStore(tmp_path)).configs.save(
            _config())
        return await Store.memory(ttl_seconds=60, configs=DatasetStore(tmp_path)
                                  ).configs.get("retina")

    assert asyncio.run(scenario()) == _config()
    assert DatasetStore(tmp_path).load("retina") == _config()


def test_queue_submit_records_how_many_images_the_job_has(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> tuple[int, int | None]:
        job = await queue.submit(_job(), [b"a", b"b", b"c"])
        stored = await queue.get(job.id)
        return job.images, stored and stored.images

    assert run(scenario) == (3, 3)


# ---------------------------------------------------------------- admission


async def _outcomes(queue: JobQueue, admission: Admission, count: int,
                    image: bytes = b"image") -> list[str]:
    """Submit ``count`` jobs at once; each one's outcome: "ok" or the refusal's type."""
    async def one() -> str:
        try:
            await queue.submit(_job(), [image], admission)
        except ServiceError as exc:
            return exc.slug
        return "ok"

    return list(await asyncio.gather(*(one() for _ in range(count))))


def test_queue_admits_no_more_than_its_backlog_under_concurrent_submissions(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> list[str]:
        return await _outcomes(queue, Admission(account="a", max_backlog=20), 60)

    outcomes = run(scenario)
    assert (outcomes.count("ok"), outcomes.count("queue-full")) == (20, 40)


@pytest.mark.parametrize("claimed", [False, True], ids=["queued", "running"])
def test_a_deleted_job_frees_its_place_in_the_backlog_at_once(run: Runner,
                                                               claimed: bool) -> None:
    async def scenario(queue: JobQueue) -> list[str]:
        admission = Admission(account="a", max_backlog=2)
        jobs = [await queue.submit(_job(), [b"image"], admission) for _ in range(2)]
        if claimed:
            assert await queue.claim("w", 10) is not None
        for job in jobs:
            assert await queue.delete(job.id)
        return await _outcomes(queue, admission, 3)

    assert sorted(run(scenario)) == ["ok", "ok", "queue-full"]


def test_queue_rate_counts_the_last_minute_not_the_calendar_minute(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> list[str]:
        admission = Admission(account="a", rate_per_minute=3)
        first = await _outcomes(queue, admission, 3)
        await _elapse(queue, 1.0)  # a calendar minute may end here; the last minute does not
        return first + await _outcomes(queue, admission, 1)

    assert run(scenario) == ["ok", "ok", "ok", "rate-limited"]


def test_queue_rate_refusal_says_when_the_oldest_submission_leaves_the_minute(
        run: Runner) -> None:
    async def scenario(queue: JobQueue) -> int:
        admission = Admission(account="a", rate_per_minute=1)
        await queue.submit(_job(), [b"image"], admission)
        await _elapse(queue, 0.5)
        with pytest.raises(RateLimited) as refused:
            await queue.submit(_job(), [b"image"], admission)
        return int(refused.value.headers["Retry-After"])

    assert 59 <= run(scenario) <= 60


def test_queue_limits_one_accounts_unfinished_jobs_not_anothers(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> tuple[list[str], list[str]]:
        busy = await _outcomes(queue, Admission(account="busy", max_jobs=2), 3)
        other = await _outcomes(queue, Admission(account="other", max_jobs=2), 1)
        return busy, other

    busy, other = run(scenario)
    assert sorted(busy) == ["ok", "ok", "quota-exceeded"] and other == ["ok"]


def test_queue_frees_an_accounts_job_quota_when_a_job_finishes(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> list[str]:
        admission = Admission(account="a", max_jobs=1)
        job = await queue.submit(_job(), [b"image"], admission)
        await _finish(queue, job)
        return await _outcomes(queue, admission, 1)

    assert run(scenario) == ["ok"]


def test_queue_limits_the_bytes_an_account_keeps_until_it_deletes_a_job(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> tuple[str, str, str]:
        admission = Admission(account="a", max_bytes=2500)
        kept = await queue.submit(_job(), [b"x" * 1000], admission)
        await queue.submit(_job(), [b"x" * 1000], admission)
        refused = await _outcomes(queue, admission, 1, b"x" * 1000)
        await queue.delete(kept.id)
        return refused[0], (await _outcomes(queue, admission, 1, b"x" * 1000))[0], \
            (await _outcomes(queue, Admission(account="b", max_bytes=2500), 1, b"x" * 2000))[0]

    assert run(scenario) == ("quota-exceeded", "ok", "ok")


def test_queue_forgets_an_accounts_bytes_once_its_jobs_expire(run: Runner) -> None:
    async def scenario(queue: JobQueue) -> list[str]:
        admission = Admission(account="a", max_bytes=1500)
        job = await queue.submit(_job(), [b"x" * 1000], admission)
        await _until(queue, lambda: _gone(queue, job.id))
        return await _outcomes(queue, admission, 1, b"x" * 1000)

    assert run(scenario, ttl_seconds=1) == ["ok"]
