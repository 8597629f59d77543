"""Waiting on a job costs no loop of reads: the store says when the job changed.

``Prefer: wait``, ``/v1/predict`` and event streams wait on the store's
notice of each write (Redis pub/sub), reading the job again only then, or
once a second at most when no notice comes (a notice can be lost). Counted
here with Redis's own command statistics, against a real server.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
import redis
from fastapi.testclient import TestClient

from krypton.models.deployment import Deployment
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
