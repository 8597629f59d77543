"""Heatmap jobs through the HTTP API in embedded mode: submit, poll, results, delete, expiry."""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from krypton.engine import occlusion
from krypton.models import decode_image, patch_value, to_model_input
from krypton.models.deployment import Deployment
from krypton.service import constants
from krypton.service.app import create_app
from krypton.service.config import Settings
from krypton.service.routes.heatmaps import prefer_wait
from tests.service import helpers
from tests.service.helpers import FAST, LABELS, MODEL, RETINA_SIZE

RESULTS = ("heatmap.png", "heatmap.json", "heatmap.npy")


@pytest.fixture(scope="module")
def job(api: TestClient, retina_png: bytes) -> dict[str, Any]:
    """One finished heatmap job (FAST geometry) shared by the read-only tests."""
    return helpers.finished(api, retina_png, **FAST)


def _get(client: TestClient, job: dict[str, Any], result: str, **query: str) -> Any:
    response = client.get(f"/v1/heatmaps/{job['id']}/{result}", params=query)
    assert response.status_code == 200, response.text
    return response


def _npy(client: TestClient, job: dict[str, Any], **query: str) -> np.ndarray:
    array: np.ndarray = np.load(io.BytesIO(_get(client, job, "heatmap.npy", **query).content),
                                allow_pickle=False)
    return array


# ---------------------------------------------------------------- life cycle


def test_submit_heatmap_answers_202_with_location_and_queued_job(
    api: TestClient, retina_png: bytes
) -> None:
    response = helpers.submit(api, retina_png, **FAST)
    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["Location"] == f"/v1/heatmaps/{body['id']}"
    assert body["status"] == "queued"
    base = f"/v1/heatmaps/{body['id']}"
    assert body["links"] == {"self": base, "events": f"{base}/events"}
    helpers.wait_for_job(api, response.headers["Location"])


def test_get_heatmap_of_finished_job_reports_success_and_full_progress(
    job: dict[str, Any]
) -> None:
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"] == 1.0
    assert job["error"] is None


def test_get_heatmap_of_finished_job_reports_prediction_with_deployed_labels(
    job: dict[str, Any]
) -> None:
    prediction = job["prediction"]
    assert prediction["predicted_label"] == LABELS[prediction["predicted_class"]]
    assert prediction["target_class"] == prediction["predicted_class"]
    assert 0.0 < prediction["target_probability"] <= 1.0


def test_get_heatmap_of_finished_job_reports_run_and_timings(job: dict[str, Any]) -> None:
    assert job["run"]["heatmap_shape"] == [4, 4]
    assert job["run"]["positions"] == 16
    assert job["run"]["input_shape"] == [helpers.INPUT_SIZE, helpers.INPUT_SIZE]
    assert job["run"]["mode"] == "exact"
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    assert job["compute_seconds"] >= 0 and job["queue_wait_seconds"] >= 0


def test_get_heatmap_of_finished_job_links_every_result_format(job: dict[str, Any]) -> None:
    base = f"/v1/heatmaps/{job['id']}"
    assert job["links"] == {"self": base, "events": f"{base}/events",
                            "png": f"{base}/heatmap.png",
                            "json": f"{base}/heatmap.json", "npy": f"{base}/heatmap.npy",
                            "overlay_png": f"{base}/heatmap.png?overlay=1"}


def test_job_progress_never_decreases_and_ends_at_one(api: TestClient,
                                                     retina_png: bytes) -> None:
    response = helpers.submit(api, retina_png, patch_size="8", stride="2")
    url = response.headers["Location"]
    seen: list[float] = []

    def done() -> bool:
        document = api.get(url).json()
        seen.append(document["progress"])
        return bool(document["status"] in ("succeeded", "failed"))

    helpers.wait_until(done, what="the job to finish")
    assert seen == sorted(seen)
    assert seen[-1] == 1.0


# ---------------------------------------------------------------- results


def test_heatmap_png_is_a_png_with_one_square_per_cell(api: TestClient,
                                                      job: dict[str, Any]) -> None:
    response = _get(api, job, "heatmap.png")
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG"
    assert image.size == (4 * 8, 4 * 8)


def test_heatmap_png_overlay_has_the_original_image_size(api: TestClient,
                                                        job: dict[str, Any]) -> None:
    response = _get(api, job, "heatmap.png", overlay="1")
    assert response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == RETINA_SIZE


def test_heatmap_json_holds_the_array_with_shape_and_range(api: TestClient,
                                                          job: dict[str, Any]) -> None:
    document = _get(api, job, "heatmap.json").json()
    heatmap = np.asarray(document["heatmap"])
    assert heatmap.shape == (4, 4)
    assert document["shape"] == [4, 4]
    assert document["min"] == pytest.approx(heatmap.min())
    assert document["max"] == pytest.approx(heatmap.max())


def test_heatmap_json_holds_params_and_prediction_of_the_job(api: TestClient,
                                                            job: dict[str, Any]) -> None:
    document = _get(api, job, "heatmap.json").json()
    assert document["id"] == job["id"]
    assert document["view"] == "probability"
    assert document["params"]["patch_size"] == 16 and document["params"]["stride"] == 16
    assert document["params"]["model"] == MODEL
    assert document["prediction"] == job["prediction"]


def test_heatmap_npy_loads_and_equals_the_json_array(api: TestClient,
                                                    job: dict[str, Any]) -> None:
    response = _get(api, job, "heatmap.npy")
    assert response.headers["content-type"] == "application/octet-stream"
    array = np.load(io.BytesIO(response.content), allow_pickle=False)
    document = _get(api, job, "heatmap.json").json()
    assert array.dtype == np.float32
    np.testing.assert_allclose(array, document["heatmap"], atol=1e-6)


@pytest.mark.parametrize("result", ["heatmap.json", "heatmap.npy"])
def test_heatmap_drop_view_is_target_probability_minus_probability(
    api: TestClient, job: dict[str, Any], result: str
) -> None:
    def values(view: str) -> np.ndarray:
        response = _get(api, job, result, view=view)
        if result == "heatmap.json":
            return np.asarray(response.json()["heatmap"])
        array: np.ndarray = np.load(io.BytesIO(response.content))
        return array

    target = job["prediction"]["target_probability"]
    np.testing.assert_allclose(values("drop"), target - values("probability"), atol=1e-6)


def test_heatmap_png_views_are_drawn_differently(api: TestClient, job: dict[str, Any]) -> None:
    drop = _get(api, job, "heatmap.png", view="drop").content
    probability = _get(api, job, "heatmap.png", view="probability").content
    assert drop != probability


@pytest.mark.parametrize(("patch_size", "stride", "side"), [
    pytest.param(16, 16, 4, id="p16-s16"),
    pytest.param(16, 8, 7, id="p16-s8"),
    pytest.param(24, 10, 5, id="p24-s10-uneven"),
    pytest.param(64, 1, 1, id="patch-is-the-input"),
])
def test_heatmap_has_one_cell_per_patch_position(api: TestClient, retina_png: bytes,
                                                 patch_size: int, stride: int,
                                                 side: int) -> None:
    job = helpers.finished(api, retina_png, patch_size=str(patch_size), stride=str(stride))
    assert job["status"] == "succeeded", job["error"]
    assert _npy(api, job).shape == (side, side)
    assert side == (helpers.INPUT_SIZE - patch_size) // stride + 1


# ---------------------------------------------------------------- exactness


@pytest.fixture(scope="module")
def network(deployment: Deployment) -> torch.nn.Module:
    return helpers.build_deployed(deployment, MODEL)


@pytest.mark.parametrize("fields", [
    pytest.param({**FAST}, id="defaults"),
    pytest.param({"patch_size": "16", "stride": "8", "target_class": "1",
                  "patch_color": "black"}, id="target-1-black-s8"),
    pytest.param({"patch_size": "12", "stride": "13", "patch_color": "40,200,90"},
                 id="rgb-colour-uneven"),
    pytest.param({**FAST, "mode": "naive"}, id="naive"),
])
def test_heatmap_equals_the_engine_on_the_same_input(
    api: TestClient, deployment: Deployment, network: torch.nn.Module, retina_png: bytes,
    fields: dict[str, str]
) -> None:
    job = helpers.finished(api, retina_png, **fields)
    assert job["status"] == "succeeded", job["error"]
    preprocessing = deployment.model(MODEL).preprocessing
    expected = occlusion(
        network, to_model_input(decode_image(retina_png), preprocessing),
        int(fields["patch_size"]), int(fields["stride"]),
        patch_value=patch_value(fields.get("patch_color", "gray"), preprocessing),
        target=int(fields["target_class"]) if "target_class" in fields else None,
        mode=fields.get("mode", "exact"))
    np.testing.assert_allclose(_npy(api, job), expected.heatmap, atol=1e-5, rtol=0)
    assert job["prediction"]["target_class"] == expected.target
    assert job["prediction"]["target_probability"] == pytest.approx(
        expected.target_probability, abs=1e-5)
    assert job["prediction"]["predicted_class"] == expected.predicted_class


def test_heatmap_of_a_calibrated_model_is_not_flat(api: TestClient, job: dict[str, Any]) -> None:
    # Guards the exactness test above: a flat map would match any broken service.
    heatmap = _npy(api, job)
    assert heatmap.max() - heatmap.min() > 0.01


# ---------------------------------------------------------------- Prefer: wait


def test_submit_with_prefer_wait_answers_200_with_the_finished_job(
    api: TestClient, retina_png: bytes
) -> None:
    response = helpers.submit(api, retina_png, prefer="wait=30", **FAST)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded"
    assert response.headers["Location"] == f"/v1/heatmaps/{response.json()['id']}"


def test_submit_with_prefer_wait_on_a_job_that_does_not_finish_answers_202(
    idle_api: TestClient, retina_png: bytes
) -> None:
    started = time.monotonic()
    response = helpers.submit(idle_api, retina_png, prefer="wait=1", **FAST)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    assert time.monotonic() - started >= 0.9


def test_submit_with_prefer_wait_longer_than_the_cap_waits_only_the_cap(
    idle_api: TestClient, retina_png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "MAX_WAIT_SECONDS", 1)
    started = time.monotonic()
    response = helpers.submit(idle_api, retina_png, prefer="wait=4", **FAST)
    assert response.status_code == 202
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize(("header", "seconds"), [
    pytest.param(None, 0, id="absent"),
    pytest.param("wait=5", 5, id="wait"),
    pytest.param("respond-async, wait=10", 10, id="with-respond-async"),
    pytest.param("WAIT = 7", 7, id="case-and-spaces"),
    pytest.param("wait=60", 60, id="at-cap"),
    pytest.param("wait=3600", 60, id="capped-at-60"),
    pytest.param("wait=99999999999999999999", 60, id="twenty-digits-capped"),
    pytest.param('wait="5"', 5, id="quoted"),
    pytest.param("wait=0000000005", 5, id="leading-zeros"),
    pytest.param('wait="5', 0, id="unbalanced-quote"),
    pytest.param("handling=lenient", 0, id="other-preference"),
    pytest.param("wait=1e9", 0, id="not-a-whole-number"),
    pytest.param("wait=2.5", 0, id="fraction"),
    pytest.param("wait=5; foo=bar", 5, id="with-parameter"),
])
def test_prefer_wait_reads_seconds_capped_at_60(header: str | None, seconds: int) -> None:
    assert constants.MAX_WAIT_SECONDS == 60
    assert prefer_wait(header) == seconds


# ---------------------------------------------------------------- uploads


@pytest.mark.parametrize("image", [
    pytest.param("retina_png", id="png"),
    pytest.param("retina_jpeg", id="jpeg"),
    pytest.param("retina_tiff", id="tiff-8-bit-rgb"),
    pytest.param("grayscale_tiff16", id="tiff-16-bit-gray"),
])
def test_submit_supported_image_format_succeeds(api: TestClient, request: pytest.FixtureRequest,
                                                image: str) -> None:
    data: bytes = request.getfixturevalue(image)
    response = helpers.submit(api, data, filename="upload.bin", prefer="wait=30", **FAST)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded", response.json()["error"]


def test_submit_16_bit_tiff_explains_the_full_range_image(
    api: TestClient, deployment: Deployment, network: torch.nn.Module,
    grayscale_tiff16: bytes
) -> None:
    job = helpers.finished(api, grayscale_tiff16, **FAST)
    preprocessing = deployment.model(MODEL).preprocessing
    expected = occlusion(network, to_model_input(decode_image(grayscale_tiff16), preprocessing),
                         16, 16, patch_value=patch_value("gray", preprocessing))
    np.testing.assert_allclose(_npy(api, job), expected.heatmap, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- delete


@pytest.fixture
def deleted(api: TestClient, retina_png: bytes) -> dict[str, Any]:
    job = helpers.finished(api, retina_png, **FAST)
    assert api.delete(f"/v1/heatmaps/{job['id']}").status_code == 204
    return job


def test_delete_heatmap_answers_204_without_body(api: TestClient, retina_png: bytes) -> None:
    job = helpers.finished(api, retina_png, **FAST)
    response = api.delete(f"/v1/heatmaps/{job['id']}")
    assert response.status_code == 204
    assert response.content == b""


@pytest.mark.parametrize("suffix", ["", *(f"/{r}" for r in RESULTS)])
def test_deleted_job_and_results_answer_404(api: TestClient, deleted: dict[str, Any],
                                            suffix: str) -> None:
    problem = helpers.assert_problem(api.get(f"/v1/heatmaps/{deleted['id']}{suffix}"), 404)
    assert problem["type"] == "urn:krypton:problem:job-not-found"


def test_delete_of_a_deleted_job_answers_404(api: TestClient, deleted: dict[str, Any]) -> None:
    helpers.assert_problem(api.delete(f"/v1/heatmaps/{deleted['id']}"), 404)


def test_delete_of_a_queued_job_purges_it_before_it_runs(idle_api: TestClient,
                                                        retina_png: bytes) -> None:
    job_id = helpers.submit(idle_api, retina_png, **FAST).json()["id"]
    assert idle_api.delete(f"/v1/heatmaps/{job_id}").status_code == 204
    helpers.assert_problem(idle_api.get(f"/v1/heatmaps/{job_id}"), 404)


# ---------------------------------------------------------------- expiry

TTL_SECONDS = 3


@pytest.fixture(scope="module")
def expired(make_settings: Callable[..., Settings], retina_png: bytes
            ) -> Iterator[tuple[TestClient, dict[str, Any]]]:
    """A job that succeeded, served all its results, then outlived ``result_ttl_seconds``."""
    settings = make_settings(result_ttl_seconds=TTL_SECONDS)
    with TestClient(create_app(settings)) as client:
        helpers.finished(client, retina_png, **FAST)  # loads the model: the next job is quick
        job = helpers.finished(client, retina_png, **FAST)
        assert job["status"] == "succeeded", job["error"]
        for result in RESULTS:
            assert client.get(f"/v1/heatmaps/{job['id']}/{result}").status_code == 200
        helpers.wait_until(lambda: client.get(f"/v1/heatmaps/{job['id']}").status_code == 404,
                           timeout=TTL_SECONDS + 10, interval=0.1, what="the job to expire")
        yield client, job


def test_job_expires_after_the_result_ttl(expired: tuple[TestClient, dict[str, Any]]) -> None:
    client, job = expired
    problem = helpers.assert_problem(client.get(f"/v1/heatmaps/{job['id']}"), 404)
    assert problem["job_id"] == job["id"]


def test_job_expires_at_is_created_plus_the_ttl(expired: tuple[TestClient, dict[str, Any]]
                                               ) -> None:
    _, job = expired
    created, expires = (dt.datetime.fromisoformat(job[key]) for key in ("created_at",
                                                                         "expires_at"))
    assert abs((expires - created).total_seconds() - TTL_SECONDS) < 1.0


@pytest.mark.parametrize("result", RESULTS)
def test_results_expire_with_their_job(expired: tuple[TestClient, dict[str, Any]],
                                       result: str) -> None:
    client, job = expired
    helpers.assert_problem(client.get(f"/v1/heatmaps/{job['id']}/{result}"), 404)


def test_heatmap_json_is_valid_json_with_finite_values(api: TestClient,
                                                      job: dict[str, Any]) -> None:
    text = _get(api, job, "heatmap.json").text
    document = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert np.isfinite(np.asarray(document["heatmap"])).all()
