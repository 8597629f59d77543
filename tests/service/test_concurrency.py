"""Hundreds of clients at once against a real ``krypton serve`` on Redis.

A healthy Redis must never be reported as unreachable because many requests
arrived together, a limit must hold however many submissions race for it,
and every event stream must end with a terminal event.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx_sse
import pytest

from krypton.models.deployment import Deployment
from tests.service import helpers
from tests.service.helpers import FAST, ThreadedWorker

pytestmark = pytest.mark.redis

CLIENTS = 500
GENEROUS = {"KRYPTON_RATE_LIMIT_PER_MINUTE": "100000", "KRYPTON_MAX_QUEUE_LENGTH": "100000",
            "KRYPTON_MAX_JOBS_PER_KEY": "100000"}
TERMINAL = {"succeeded", "failed", "error"}


@pytest.fixture
def api(registry: Path, redis_url: str, tmp_path: Path) -> Iterator[str]:
    """``krypton serve`` in Redis mode, limits out of the way; no worker yet."""
    with helpers.serving(registry, log=tmp_path / "serve.log", KRYPTON_REDIS_URL=redis_url,
                         **GENEROUS) as url:
        yield url


def _client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=180,
                             limits=httpx.Limits(max_connections=CLIENTS + 10))


async def _submit(client: httpx.AsyncClient, image: bytes) -> int:
    response = await client.post("/v1/heatmaps", files={"image": ("r.png", image, "image/png")},
                                 data=FAST)
    return response.status_code


def test_hundreds_of_simultaneous_submissions_get_no_false_503(api: str,
                                                               retina_png: bytes) -> None:
    async def scenario() -> Counter[int]:
        async with _client(api) as client:
            statuses = await asyncio.gather(*(_submit(client, retina_png)
                                              for _ in range(CLIENTS)))
        return Counter(statuses)

    assert asyncio.run(scenario()) == {202: CLIENTS}


def test_hundreds_of_event_streams_on_one_job_each_end_with_its_outcome(
        api: str, redis_url: str, deployment: Deployment, retina_png: bytes) -> None:
    async def follow(client: httpx.AsyncClient, url: str, opened: asyncio.Event) -> str:
        last = "none"
        async with httpx_sse.aconnect_sse(client, "GET", url) as source:
            opened.set()
            async for event in source.aiter_sse():
                last = event.event
                if last in TERMINAL:
                    break
        return last

    async def scenario() -> Counter[str]:
        async with _client(api) as client:
            submitted = await client.post(
                "/v1/heatmaps", files={"image": ("r.png", retina_png, "image/png")}, data=FAST)
            assert submitted.status_code == 202, submitted.text
            events = submitted.json()["links"]["events"]
            opened = [asyncio.Event() for _ in range(CLIENTS)]
            streams = [asyncio.create_task(follow(client, events, o)) for o in opened]
            await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 120)
            with ThreadedWorker(redis_url, deployment, name="sse-worker"):
                outcomes = await asyncio.wait_for(asyncio.gather(*streams), 180)
        return Counter(outcomes)

    assert asyncio.run(scenario()) == {"succeeded": CLIENTS}


def test_queue_length_limit_holds_against_simultaneous_submissions(
        registry: Path, redis_url: str, tmp_path: Path, retina_png: bytes) -> None:
    limits = GENEROUS | {"KRYPTON_MAX_QUEUE_LENGTH": "20"}
    with helpers.serving(registry, log=tmp_path / "serve.log", KRYPTON_REDIS_URL=redis_url,
                         **limits) as url:
        async def scenario() -> Counter[int]:
            async with _client(url) as client:
                return Counter(await asyncio.gather(*(_submit(client, retina_png)
                                                      for _ in range(60))))

        statuses = asyncio.run(scenario())
    assert statuses == {202: 20, 503: 40}
