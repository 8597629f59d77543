"""Redis-mode faults a hospital network produces: workers stopped mid-command, stale
workers, and a Redis that comes back empty or is killed.

Every test here runs real :class:`Worker` objects on a real ``redis-server``;
what they break is timing (a signal landing inside a Redis command, a worker
that stalls past its claim) or the server itself.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
from fastapi.testclient import TestClient
from PIL import Image

from krypton.core.jobs import explain
from krypton.core.model_cache import ModelCache
from krypton.core.plans import HeatmapPlan
from krypton.models import build_model, decode_image
from krypton.models.deployment import Deployment, load_deployment
from krypton.models.images import INFERENCE_SIDE
from krypton.service import constants
from krypton.service.schemas import Job, JobStatus, WorkerInfo, new_job_id, utcnow
from krypton.service.store import Claim, Store
from krypton.service.store.redis import RedisStreamQueue, RedisWorkers
from krypton.service.worker import Worker
from tests.service import helpers
from tests.service.conftest import ClientFactory, start_redis, stop_redis
from tests.service.helpers import FAST, MODEL, ThreadedWorker

pytestmark = pytest.mark.redis


# ---------------------------------------------------------------- stopping


class _SlowBeats(RedisWorkers):
    """A registry whose heartbeat spends 0.3 s inside Redis commands (its own transaction,
    again and again), so that a stop lands during one."""

    beating = asyncio.Event()

    async def beat(self, info: WorkerInfo) -> None:
        self.beating.set()
        until = time.monotonic() + 0.3
        while time.monotonic() < until:
            await super().beat(info)


def test_worker_told_to_stop_during_a_heartbeat_command_stops_and_stays_stopped(
        redis_url: str, redis_client: redis.Redis, deployment: Deployment) -> None:
    cache = ModelCache(deployment, "cpu")

    async def stop_once(attempt: int) -> tuple[bool, bool]:
        queue = RedisStreamQueue.from_url(redis_url, ttl_seconds=60)
        beats = _SlowBeats(queue.client)
        beats.beating = asyncio.Event()
        worker = Worker(helpers.store_around(queue, beats), deployment,
                        name=f"stopping-{attempt}", cache=cache)
        task = asyncio.create_task(worker.run(block_ms=20))
        await asyncio.wait_for(beats.beating.wait(), 10)
        worker.stop()  # what SIGTERM does, while the heartbeat waits on Redis
        done, _ = await asyncio.wait({task}, timeout=5)
        await asyncio.sleep(0.1)
        beating_after = bool(redis_client.exists(constants.WORKER_KEY.format(worker.name)))
        if not done:
            task.cancel()
        await queue.close()
        return bool(done), beating_after

    async def scenario() -> list[tuple[bool, bool]]:
        return [await stop_once(attempt) for attempt in range(40)]

    outcomes = asyncio.run(scenario())
    assert outcomes == [(True, False)] * 40, (
        f"{sum(not stopped for stopped, _ in outcomes)} of 40 runs did not stop within 5 s; "
        f"{sum(beating for _, beating in outcomes)} still had a heartbeat")


# ---------------------------------------------------------------- stale workers


def _second_deployment(tmp_path: Path, registry: Path) -> Deployment:
    """The test deployment with another checkpoint under the same model name."""
    folder = tmp_path / "other"
    (folder / "weights").mkdir(parents=True)
    network = build_model("resnet18", num_classes=len(helpers.LABELS), seed=29)
    torch.save(network.state_dict(), folder / "weights" / f"{MODEL}.pt")
    other = folder / "registry.toml"
    other.write_text(registry.read_text(encoding="utf-8"), encoding="utf-8")
    return load_deployment(other)


class _Interposed(RedisStreamQueue):
    """A worker's queue that lets another worker take its job over, and finish it, just
    before this worker stores its outcome: after every check this worker makes."""

    takeover: Any = None
    """Coroutine function run once, before the first outcome write."""
    frozen = False

    async def touch(self, claim: Claim, consumer: str) -> bool:
        if self.frozen:  # stalled: its claim ages until another worker may take it
            return True
        return await super().touch(claim, consumer)

    async def _before_outcome(self) -> None:
        if self.takeover is not None:
            takeover, self.takeover = self.takeover, None
            self.frozen = True
            await takeover()

    async def finish(self, *args: Any, **kwargs: Any) -> bool:
        await self._before_outcome()
        return await super().finish(*args, **kwargs)


def _taken_over_while_storing(redis_url: str, plan: HeatmapPlan, image: bytes,
                              stale: tuple[Deployment, ModelCache],
                              live: tuple[Deployment, ModelCache]
                              ) -> tuple[Job | None, bytes | None]:
    """A job the stale worker computes and the live one takes over (and finishes) just
    before the stale one stores its outcome; the job and result as stored."""
    async def scenario() -> tuple[Job | None, bytes | None]:
        stale_queue = _Interposed.from_url(redis_url, ttl_seconds=60, claim_idle_ms=200)
        live_queue = RedisStreamQueue.from_url(redis_url, ttl_seconds=60, claim_idle_ms=200)
        assert isinstance(stale_queue, _Interposed)
        stale_worker = Worker(helpers.store_around(stale_queue), stale[0], name="stale",
                              cache=stale[1])
        live_worker = Worker(helpers.store_around(live_queue), live[0], name="live",
                             cache=live[1])

        async def takeover() -> None:
            await asyncio.sleep(0.3)  # the stale worker's claim goes idle
            assert await live_worker.run_once(block_ms=100), "the live worker found no job"

        stale_queue.takeover = takeover
        job = await stale_queue.submit(Job(id=new_job_id(), params=plan), [image])
        assert await stale_worker.run_once(block_ms=100)
        stored = await live_queue.get(job.id), await live_queue.result(job.id)
        await stale_queue.close()
        await live_queue.close()
        return stored

    return asyncio.run(scenario())


def test_stale_worker_never_overwrites_the_result_of_the_worker_that_took_its_job_over(
        tmp_path: Path, redis_url: str, registry: Path, deployment: Deployment,
        retina_png: bytes) -> None:
    stale_cache = ModelCache(deployment, "cpu")
    other = _second_deployment(tmp_path, registry)
    live_cache = ModelCache(other, "cpu")
    plan = HeatmapPlan(model=MODEL, patch_size=16, stride=16)
    pixels = decode_image(retina_png, max_side=INFERENCE_SIDE)
    expected = {name: explain(cache, plan, pixels).heatmap
                for name, cache in (("stale", stale_cache), ("live", live_cache))}
    assert not np.allclose(expected["stale"], expected["live"]), "the two must differ"

    document, result = _taken_over_while_storing(
        redis_url, plan, retina_png, (deployment, stale_cache), (other, live_cache))
    assert document is not None and document.status is JobStatus.succeeded
    assert document.worker == "live"
    assert result is not None
    np.testing.assert_allclose(np.load(io.BytesIO(result)), expected["live"], rtol=1e-6)


def test_a_worker_whose_outcome_was_not_stored_does_not_log_it_as_finished(
        redis_url: str, deployment: Deployment, retina_png: bytes,
        caplog: pytest.LogCaptureFixture) -> None:
    cache = ModelCache(deployment, "cpu")
    plan = HeatmapPlan(model=MODEL, patch_size=16, stride=16)
    with caplog.at_level(logging.INFO, logger="krypton.service.worker"):
        document, _ = _taken_over_while_storing(redis_url, plan, retina_png,
                                                (deployment, cache), (deployment, cache))
    assert document is not None
    finished = [r.getMessage() for r in caplog.records if "succeeded in" in r.getMessage()]
    assert len(finished) == 1, finished  # the live worker's; the stale one's was dropped
    assert any("not stored" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- Redis comes back empty


def test_workers_take_new_jobs_after_redis_comes_back_empty(
        redis_url: str, redis_client: redis.Redis, make_client: ClientFactory,
        deployment: Deployment, retina_png: bytes) -> None:
    client = make_client(redis_url=redis_url)
    with ThreadedWorker(redis_url, deployment, name="survivor"):
        assert helpers.finished(client, retina_png, **FAST)["status"] == "succeeded"
        redis_client.flushall()  # what a restart without persistence leaves
        job = helpers.finished(client, retina_png, **FAST)
    assert job["status"] == "succeeded", job["error"]


def test_readyz_says_not_ready_while_no_worker_can_claim(
        redis_url: str, redis_client: redis.Redis, make_client: ClientFactory) -> None:
    client = make_client(redis_url=redis_url)

    async def beat_only() -> None:
        # A worker that beats but whose queue has no consumer group to claim from.
        store = Store.redis(redis_url, ttl_seconds=60)
        await store.workers.beat(WorkerInfo(name="beats-only", device="cpu", pid=1, host="h",
                                            started_at=utcnow(), jobs_done=0,
                                            current_job=None))
        await store.close()

    asyncio.run(beat_only())
    redis_client.delete(constants.STREAM)
    response = client.get("/readyz")
    assert response.status_code == 503, response.text
    assert response.json()["status"] == "not ready"


def _empty_redis_in_use_again(client: TestClient, redis_client: redis.Redis,
                              image: bytes) -> None:
    """Redis as a restart without persistence leaves it, then taken into use again."""
    time.sleep(0.01)  # the lost job's id is older than the store's new start
    redis_client.flushall()
    assert helpers.submit(client, image, **FAST).status_code == 202


def test_a_job_redis_lost_is_answered_as_lost_not_as_never_existing(
        redis_url: str, redis_client: redis.Redis, make_client: ClientFactory,
        retina_png: bytes) -> None:
    client = make_client(redis_url=redis_url, embedded_workers=0)
    submitted = helpers.submit(client, retina_png, **FAST)
    assert submitted.status_code == 202, submitted.text
    _empty_redis_in_use_again(client, redis_client, retina_png)
    document = helpers.assert_problem(client.get(submitted.headers["Location"]), 404)
    assert document["type"] == "urn:krypton:problem:job-lost", document
    assert "submit it again" in document["detail"]
    never = helpers.assert_problem(client.get(f"/v1/heatmaps/{new_job_id()}"), 404)
    assert never["type"] == "urn:krypton:problem:job-not-found"


def test_a_stream_of_a_job_redis_lost_ends_naming_it_lost(
        redis_url: str, redis_client: redis.Redis, make_client: ClientFactory,
        retina_png: bytes) -> None:
    client = make_client(redis_url=redis_url, embedded_workers=0)
    submitted = helpers.submit(client, retina_png, **FAST)
    assert submitted.status_code == 202, submitted.text
    with client.stream("GET", submitted.json()["links"]["events"]) as stream:
        lines = stream.iter_lines()
        assert next(lines) == "event: progress"
        _empty_redis_in_use_again(client, redis_client, retina_png)
        rest = [line for line in lines if line.startswith(("event:", "data:"))]
    assert rest[-2] == "event: failed"
    assert json.loads(rest[-1].removeprefix("data:"))["error"]["type"] == (
        "urn:krypton:problem:job-lost")


# ---------------------------------------------------------------- Redis killed


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Any:
    """A ``redis-server`` run as the README says (append-only file), that a test may kill."""
    binary = shutil.which("redis-server")
    assert binary is not None
    port = helpers.free_port()

    class Server:
        url = f"redis://127.0.0.1:{port}/0"

        def __init__(self) -> None:
            self.process = start_redis(binary, tmp_path, port, persistent=True)

        def kill_and_restart(self) -> None:
            self.process.kill()
            self.process.wait(10)
            self.process = start_redis(binary, tmp_path, port, persistent=True)

    server = Server()
    yield server
    stop_redis(server.process)


def test_redis_killed_with_jobs_in_flight_loses_none_and_runs_none_twice(
        persistent_redis: Any, make_client: ClientFactory, deployment: Deployment,
        retina_png: bytes) -> None:
    client = make_client(redis_url=persistent_redis.url)
    locations = []
    with ThreadedWorker(persistent_redis.url, deployment, name="w1", claim_idle_ms=1000), \
            ThreadedWorker(persistent_redis.url, deployment, name="w2", claim_idle_ms=1000):
        for _ in range(6):
            response = helpers.submit(client, retina_png, **helpers.SLOW)
            assert response.status_code == 202, response.text
            locations.append(response.headers["Location"])
        helpers.wait_until(lambda: any(client.get(url).json()["status"] == "running"
                                       for url in locations), what="a job to run")
        persistent_redis.kill_and_restart()
        jobs = [helpers.wait_for_job(client, url, timeout=180) for url in locations]
    assert [job["status"] for job in jobs] == ["succeeded"] * 6, [j["error"] for j in jobs]
    stream = redis.Redis.from_url(persistent_redis.url)
    assert stream.xlen(constants.STREAM) == 0, "every job acknowledged once"


# ---------------------------------------------------------------- Redis full


@pytest.fixture
def nearly_full_redis(redis_url: str, redis_client: redis.Redis) -> Any:
    """The private server with ``maxmemory`` 256 KB above what it uses now."""
    used = int(redis_client.info("memory")["used_memory"])
    redis_client.config_set("maxmemory", used + 256 * 1024)
    yield redis_url
    redis_client.config_set("maxmemory", 0)


def test_an_upload_redis_has_no_room_for_is_refused_as_store_full(
        nearly_full_redis: str, make_client: ClientFactory) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    image = helpers.encode(Image.fromarray(noise), "PNG")
    assert len(image) > 256 * 1024
    client = make_client(redis_url=nearly_full_redis, embedded_workers=0)
    response = helpers.submit(client, image, **FAST)
    document = helpers.assert_problem(response, 503)
    assert document["type"] == "urn:krypton:problem:store-full", document
    assert response.headers["Retry-After"].isdigit()
    assert client.get("/healthz").status_code == 200


# ---------------------------------------------------------------- a Redis that hangs


def test_a_redis_that_hangs_is_answered_503_within_the_timeout_not_when_it_returns(
        tmp_path: Path, unused_port: int, make_client: ClientFactory, retina_png: bytes) -> None:
    binary = shutil.which("redis-server")
    assert binary is not None
    process = start_redis(binary, tmp_path, unused_port)
    try:
        client = make_client(redis_url=f"redis://127.0.0.1:{unused_port}/0")
        job_id = helpers.submit(client, retina_png, **FAST).json()["id"]
        os.kill(process.pid, signal.SIGSTOP)  # alive, listening, answering nothing
        started = time.monotonic()
        try:
            response = client.get(f"/v1/heatmaps/{job_id}")
        finally:
            took = time.monotonic() - started
            os.kill(process.pid, signal.SIGCONT)
    finally:
        stop_redis(process)
    helpers.assert_problem(response, 503)
    assert took < constants.REDIS_SOCKET_TIMEOUT_SECONDS + 3, f"answered after {took:.1f} s"
