"""Server-Sent Events of a job: progress, the heatmap so far, and the outcome."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from krypton.models.deployment import Deployment
from tests.service import helpers
from tests.service.conftest import ClientFactory
from tests.service.helpers import FAST, SLOW, ThreadedWorker


def _events(client: Any, url: str, *, limit: int = 10_000) -> list[tuple[str, Any]]:
    """The stream's events as ``(name, data)``, until it ends (or ``limit`` events)."""
    events: list[tuple[str, Any]] = []
    name = None
    with client.stream("GET", url) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                events.append((str(name), json.loads(line.partition(":")[2])))
                if len(events) >= limit:
                    break
    return events


def _stream_of(client: Any, image: bytes, **fields: str) -> list[tuple[str, Any]]:
    response = helpers.submit(client, image, **fields)
    assert response.status_code == 202, response.text
    return _events(client, response.json()["links"]["events"])


def test_events_end_with_the_finished_job(api: TestClient, retina_png: bytes) -> None:
    events = _stream_of(api, retina_png, **FAST)
    name, job = events[-1]
    assert (name, job["status"], job["progress"]) == ("succeeded", "succeeded", 1.0)
    assert "png" in job["links"]


def test_progress_events_never_go_back(api: TestClient, retina_png: bytes) -> None:
    progress = [data["progress"] for name, data in _stream_of(api, retina_png, **SLOW)
                if name == "progress"]
    assert progress == sorted(progress) and progress[-1] == 1.0


def test_partial_events_show_the_rows_done_so_far(api: TestClient, retina_png: bytes) -> None:
    events = _stream_of(api, retina_png, **SLOW)
    partials = [data for name, data in events if name == "partial"]
    assert partials, "a job of seconds sends its heatmap before it finishes"
    side = (helpers.INPUT_SIZE - int(SLOW["patch_size"])) // int(SLOW["stride"]) + 1
    first = partials[0]
    assert first["shape"] == [side, side] and len(first["heatmap"]) == side
    unknown = [sum(value is None for value in row) for row in first["heatmap"]]
    assert 0 < sum(unknown) < side * side
    assert unknown == sorted(unknown), "rows fill from the top"
    assert [name for name, _ in events].index("partial") < len(events) - 1


def test_failed_job_ends_its_stream_with_failed(make_client: ClientFactory,
                                                retina_png: bytes) -> None:
    client = make_client(job_timeout_seconds=0.3)
    name, job = _stream_of(client, retina_png, **SLOW)[-1]
    assert (name, job["error"]["type"]) == ("failed", "urn:krypton:problem:job-deadline")


def test_events_of_an_unknown_job_answer_404(api: TestClient) -> None:
    helpers.assert_problem(api.get("/v1/heatmaps/0123456789abcdef/events"), 404)


def test_a_client_that_leaves_early_leaves_the_service_unharmed(
        api: TestClient, retina_png: bytes) -> None:
    response = helpers.submit(api, retina_png, **SLOW)
    assert len(_events(api, response.json()["links"]["events"], limit=1)) == 1
    job = helpers.wait_for_job(api, response.headers["Location"])
    assert job["status"] == "succeeded"
    assert _events(api, response.json()["links"]["events"])[-1][0] == "succeeded"


@pytest.mark.redis
def test_events_carry_partial_maps_through_redis(
        make_client: ClientFactory, redis_url: str, deployment: Deployment,
        retina_png: bytes) -> None:
    client = make_client(redis_url=redis_url)
    with ThreadedWorker(redis_url, deployment, name="streamer"):
        events = _stream_of(client, retina_png, **SLOW)
    names = [name for name, _ in events]
    assert "partial" in names and names[-1] == "succeeded"
