"""Waiting on a job costs no loop of reads: the store says when the job changed.

``Prefer: wait``, ``/v1/predict`` and event streams wait on the store's
notice of each write (Redis pub/sub), reading the job again only then, or
once a second at most when no notice comes (a notice can be lost). Counted
here with Redis's own command statistics, against a real server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import threading
import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from krypton.core.plans import HeatmapPlan
from krypton.models.deployment import Deployment
from krypton.service import constants
from krypton.service.schemas import Job, new_job_id
from krypton.service.store import Store
from tests.service import helpers
from tests.service.conftest import ClientFactory
from tests.service.helpers import FAST, ThreadedWorker


def _reads(redis_client: redis.Redis) -> int:
    """GET and MGET commands Redis has served since it started."""
    stats = redis_client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("get", "mget"))


@pytest.fixture
def client(make_client: ClientFactory, redis_url: str) -> TestClient:
    """The API in Redis mode, with no worker: a job stays queued until one starts."""
    return make_client(redis_url=redis_url)


@pytest.mark.redis
def test_prefer_wait_on_a_queued_job_reads_it_about_once_a_second(
        client: TestClient, redis_client: redis.Redis, retina_png: bytes) -> None:
    before = _reads(redis_client)
    started = time.monotonic()
    response = helpers.submit(client, retina_png, prefer="wait=3", **FAST)
    waited = time.monotonic() - started
    reads = _reads(redis_client) - before
    assert response.status_code == 202, response.text
    assert waited >= 3.0
    # A 20 ms loop reads it 150 times in 3 s; a read a second, about 4 (and the route's own).
    assert reads <= 12, f"{reads} reads of Redis while one request waited {waited:.1f} s"


@pytest.mark.redis
def test_an_event_stream_of_a_queued_job_reads_it_about_once_a_second(
        client: TestClient, redis_client: redis.Redis, retina_png: bytes) -> None:
    job_id = helpers.submit(client, retina_png, **FAST).json()["id"]
    events: list[str] = []

    def follow() -> None:
        with client.stream("GET", f"/v1/heatmaps/{job_id}/events") as stream:
            events.extend(line for line in stream.iter_lines() if line.startswith("event:"))

    before = _reads(redis_client)
    reader = threading.Thread(target=follow)
    reader.start()
    time.sleep(3.0)
    reads = _reads(redis_client) - before
    assert client.delete(f"/v1/heatmaps/{job_id}").status_code == 204
    reader.join(10)
    assert not reader.is_alive(), "the stream did not end when its job was deleted"
    assert events[-1] == "event: failed", events
    # Polling four times a second reads the job and its heatmap so far 24 times in 3 s.
    assert reads <= 12, f"{reads} reads of Redis while one stream followed a queued job for 3 s"


@pytest.mark.redis
def test_prefer_wait_answers_within_moments_of_the_job_finishing(
        client: TestClient, redis_url: str, deployment: Deployment, retina_png: bytes) -> None:
    with ThreadedWorker(redis_url, deployment, name="waited-on"):
        helpers.finished(client, retina_png, **FAST)  # the model is loaded before timing
        response = helpers.submit(client, retina_png, prefer="wait=30", **FAST)
        answered = dt.datetime.now(dt.UTC)
    assert response.status_code == 200, response.text
    finished = dt.datetime.fromisoformat(response.json()["finished_at"])
    lag = (answered - finished).total_seconds()
    # Woken by the finishing write, not by the next read a second later.
    assert lag < 0.5, f"answered {lag:.2f} s after the job finished"


def test_prefer_wait_on_the_embedded_store_answers_within_moments_of_the_job_finishing(
        api: TestClient, retina_png: bytes) -> None:
    helpers.finished(api, retina_png, **FAST)  # the model is loaded before timing
    response = helpers.submit(api, retina_png, prefer="wait=30", **FAST)
    answered = dt.datetime.now(dt.UTC)
    assert response.status_code == 200, response.text
    lag = (answered - dt.datetime.fromisoformat(response.json()["finished_at"])).total_seconds()
    assert lag < 0.5, f"answered {lag:.2f} s after the job finished"


@pytest.mark.redis
def test_junk_on_the_changes_channel_does_not_stop_waiters_being_woken(
        redis_url: str, redis_client: redis.Redis) -> None:
    async def scenario() -> bool:
        store = Store.redis(redis_url, ttl_seconds=60)
        try:
            job = await store.jobs.submit(Job(id=new_job_id(), params=HeatmapPlan(
                model="m", patch_size=16, stride=8)), [b"image"])
            async with store.jobs.changes(job.id) as changes:
                await asyncio.sleep(0.3)  # the listener subscribes
                await changes.next(0.1)  # what it said on subscribing
                redis_client.publish(constants.CHANGES_CHANNEL, b"\xff\xfe not an id")
                redis_client.publish(constants.CHANGES_CHANNEL, b"x" * 100_000)
                await asyncio.sleep(0.3)
                await store.jobs.save(job.model_copy(update={"progress": 0.5}))
                return await changes.next(constants.CHANGES_FALLBACK_SECONDS * 0.8)
        finally:
            await store.close()

    assert asyncio.run(scenario()), "the write woke no waiter"


@pytest.mark.redis
def test_a_client_that_leaves_mid_wait_leaves_no_reader_behind(
        registry: Path, redis_url: str, redis_client: redis.Redis, retina_png: bytes) -> None:
    with helpers.serving(registry, KRYPTON_REDIS_URL=redis_url) as url:
        body, boundary = _multipart(retina_png)
        host, port = url.removeprefix("http://").split(":")
        clients = []
        for _ in range(20):  # each waits up to 30 s for a job no worker will run
            connection = socket.create_connection((host, int(port)))
            connection.sendall(
                f"POST /v1/heatmaps HTTP/1.1\r\nHost: {host}\r\nPrefer: wait=30\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            clients.append(connection)
        time.sleep(2.0)  # every job is stored and waited on
        for connection in clients:
            connection.close()
        time.sleep(2.0)  # the waits notice, at their next read
        before = _reads(redis_client)
        time.sleep(3.0)
        reads = _reads(redis_client) - before
    # 20 waiters left running read their jobs about 60 times in 3 s.
    assert reads <= 10, f"{reads} reads of Redis in 3 s after every client had gone"


def _multipart(image: bytes) -> tuple[bytes, str]:
    boundary = "krypton-test-boundary"
    fields = [(b'name="image"; filename="retina.png"\r\nContent-Type: image/png', image),
              (b'name="patch_size"', b"16"), (b'name="stride"', b"16")]
    body = b"".join(f"--{boundary}\r\n".encode() + b"Content-Disposition: form-data; "
                    + head + b"\r\n\r\n" + value + b"\r\n" for head, value in fields)
    return body + f"--{boundary}--\r\n".encode(), boundary
