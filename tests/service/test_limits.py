"""Limits a careless or hostile client meets: rate, queue length, work, time, memory."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from krypton.render import UNTRAINED_WARNING
from krypton.service.app import create_app
from krypton.service.auth import KeyStore
from krypton.service.config import Settings
from krypton.service.store.memory import InMemoryQueue
from tests.service import helpers
from tests.service.conftest import ClientFactory
from tests.service.helpers import FAST, SLOW

ROOT = Path(__file__).resolve().parents[2]


def _big_png(side: int) -> bytes:
    """A photograph-sized PNG that compresses to almost nothing (a decompression bomb's shape)."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 40, 30)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_submissions_beyond_the_rate_limit_answer_429_with_retry_after(
        make_client: ClientFactory, retina_png: bytes) -> None:
    client = make_client(rate_limit_per_minute=2, embedded_workers=0)
    for _ in range(2):
        assert helpers.submit(client, retina_png, **FAST).status_code == 202
    response = helpers.submit(client, retina_png, **FAST)
    helpers.assert_problem(response, 429)
    assert 1 <= int(response.headers["Retry-After"]) <= 60


def test_rate_limit_counts_the_last_minute_across_a_calendar_minute_boundary(
        make_settings: Callable[..., Settings], retina_png: bytes) -> None:
    clock = helpers.FakeClock(start=60 * 1000 - 0.5)  # half a second before a minute ends
    queue = InMemoryQueue(ttl_seconds=600, clock=clock)
    app = create_app(make_settings(rate_limit_per_minute=3, embedded_workers=0),
                     store=helpers.store_around(queue))
    with TestClient(app) as client:
        statuses = [helpers.submit(client, retina_png, **FAST).status_code for _ in range(3)]
        clock.advance(1.0)  # into the next calendar minute, still within the last minute
        statuses.append(helpers.submit(client, retina_png, **FAST).status_code)
    assert statuses == [202, 202, 202, 429]


def test_jobs_beyond_one_keys_quota_answer_429_and_others_are_served(
        make_client: ClientFactory, retina_png: bytes, tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.json")
    busy, other = (keys.add(name, "heatmaps") for name in ("busy", "other"))
    client = make_client(max_jobs_per_key=2, embedded_workers=0, keys_file=keys.path)

    def submit(token: str) -> Any:
        return client.post("/v1/heatmaps", files={"image": ("r.png", retina_png, "image/png")},
                           data=FAST, headers={"Authorization": f"Bearer {token}"})

    assert [submit(busy).status_code for _ in range(2)] == [202, 202]
    refused = submit(busy)
    assert helpers.assert_problem(refused, 429)["type"] == "urn:krypton:problem:quota-exceeded"
    assert int(refused.headers["Retry-After"]) > 0
    assert submit(other).status_code == 202


def test_an_upload_past_the_keys_byte_quota_answers_429_naming_the_bytes(
        make_client: ClientFactory, retina_png: bytes) -> None:
    client = make_client(max_bytes_per_key=len(retina_png) + 1, embedded_workers=0)
    assert helpers.submit(client, retina_png, **FAST).status_code == 202
    detail = helpers.assert_problem(helpers.submit(client, retina_png, **FAST), 429)["detail"]
    assert f"quota of {len(retina_png) + 1}" in detail


def test_submission_to_a_full_queue_answers_503_with_retry_after(
        make_client: ClientFactory, retina_png: bytes) -> None:
    client = make_client(max_queue_length=2, embedded_workers=0)
    for _ in range(2):
        assert helpers.submit(client, retina_png, **FAST).status_code == 202
    response = helpers.submit(client, retina_png, **FAST)
    assert "2 jobs" in helpers.assert_problem(response, 503)["detail"]
    assert int(response.headers["Retry-After"]) > 0


def test_heatmap_booking_more_work_than_allowed_is_refused_with_the_stride_that_fits(
        make_client: ClientFactory, retina_png: bytes) -> None:
    # ResNet18 at 64 px costs about 0.15 GFLOP an inference; patch 1 stride 1 is 4096 of them.
    client = make_client(max_job_gflop=100.0, embedded_workers=0)
    response = helpers.submit(client, retina_png, patch_size="1", stride="1")
    detail = helpers.assert_problem(response, 422)["detail"]
    assert "limit of 100 GFLOP" in detail and "stride of at least" in detail
    stride = int(detail.split("stride of at least ")[1].split(",")[0])
    assert helpers.submit(client, retina_png, patch_size="1", stride=str(stride)
                          ).status_code == 202


def test_tuning_booking_more_work_than_allowed_is_refused(make_client: ClientFactory,
                                                         retina_png: bytes) -> None:
    client = make_client(max_job_gflop=100.0, embedded_workers=0)
    images = [("images", (f"sample-{i}.png", retina_png, "image/png")) for i in range(2)]
    response = client.post(f"/v1/datasets/{helpers.UNTUNED_DATASET}/tuning", files=images,
                           data={"patch_size": "1", "stride": "1"})
    assert "limit of 100 GFLOP" in helpers.assert_problem(response, 422)["detail"]


def test_job_running_past_its_deadline_fails_and_frees_the_worker(
        make_client: ClientFactory, retina_png: bytes) -> None:
    # No preloading: loading the other models beside the second job would take its 0.3 s.
    client = make_client(job_timeout_seconds=0.3, preload_models=False)
    job = helpers.finished(client, retina_png, **SLOW)
    assert job["status"] == "failed"
    assert (job["error"]["status"], job["error"]["type"]) == (
        504, "urn:krypton:problem:job-deadline")
    second = helpers.finished(client, retina_png, **FAST)
    assert second["status"] == "succeeded", second["error"]


def test_method_not_allowed_lists_every_method_of_the_path(api: TestClient) -> None:
    response = api.put("/v1/heatmaps/0123")
    helpers.assert_problem(response, 405)
    assert set(response.headers["Allow"].split(", ")) == {"GET", "DELETE"}


def test_empty_patch_colour_is_refused(api: TestClient, retina_png: bytes) -> None:
    response = helpers.submit(api, retina_png, patch_color="", **FAST)
    assert "patch_color" in helpers.assert_problem(response, 422)["detail"]


def test_a_form_field_sent_twice_is_refused_not_read_as_its_last_value(
        api: TestClient, retina_png: bytes) -> None:
    response = api.post("/v1/heatmaps", files={"image": ("retina.png", retina_png, "image/png")},
                        data={"model": [helpers.MODEL, helpers.DEMO_MODEL], **FAST})
    assert "model" in helpers.assert_problem(response, 422)["detail"]


def test_a_form_field_the_route_does_not_take_is_refused_naming_it(
        api: TestClient, retina_png: bytes) -> None:
    response = helpers.submit(api, retina_png, tau="0.1", **FAST)  # a knob of the CLI's
    detail = helpers.assert_problem(response, 422)["detail"]
    assert "tau" in detail and "patch_size" in detail  # the field, and what is taken


def test_a_prediction_refuses_a_form_field_it_does_not_take(api: TestClient,
                                                            retina_png: bytes) -> None:
    response = api.post("/v1/predict", files={"image": ("r.png", retina_png, "image/png")},
                        data={"top_k": "-1"})
    assert "top_k" in helpers.assert_problem(response, 422)["detail"]


def test_unreadable_image_detail_names_no_internal_object(api: TestClient) -> None:
    garbage = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    detail = helpers.assert_problem(helpers.submit(api, garbage, **FAST), 422)["detail"]
    assert "object at 0x" not in detail and "BytesIO" not in detail


# ---------------------------------------------------------------- untrained models


@pytest.fixture(scope="module")
def untrained_job(api: TestClient, retina_png: bytes) -> dict[str, Any]:
    job = helpers.finished(api, retina_png, model=helpers.DEMO_MODEL, **FAST)
    assert job["status"] == "succeeded", job["error"]
    return job


def test_job_of_an_untrained_model_says_so(untrained_job: dict[str, Any]) -> None:
    assert untrained_job["random_weights"] is True


def test_json_result_of_an_untrained_model_says_so(api: TestClient,
                                                   untrained_job: dict[str, Any]) -> None:
    document = api.get(untrained_job["links"]["json"]).json()
    assert document["random_weights"] is True


@pytest.mark.parametrize("overlay", ["0", "1"])
def test_png_of_an_untrained_model_carries_the_warning(
        api: TestClient, untrained_job: dict[str, Any], overlay: str) -> None:
    response = api.get(untrained_job["links"]["png"], params={"overlay": overlay})
    picture = Image.open(io.BytesIO(response.content))
    assert picture.text["Warning"] == UNTRAINED_WARNING  # type: ignore[attr-defined]
    assert picture.getpixel((1, 1)) == (180, 0, 0), "a red warning band across the top"


def test_png_of_a_trained_model_carries_no_warning(api: TestClient, retina_png: bytes) -> None:
    job = helpers.finished(api, retina_png, **FAST)
    picture = Image.open(io.BytesIO(api.get(job["links"]["png"]).content))
    assert "Warning" not in picture.text  # type: ignore[attr-defined]
    assert job["random_weights"] is False
