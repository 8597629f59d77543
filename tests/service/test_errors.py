"""Bad requests answer 4xx ``application/problem+json``; failures are problems too."""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient

from krypton.engine import InvalidParamsError, UnsupportedModelError
from krypton.models import CheckpointError, ImageDecodeError, UnknownModelError
from krypton.service.problems import (
    InvalidInput,
    JobNotFound,
    PayloadTooLarge,
    QueueUnavailable,
    ResultNotReady,
    UnsupportedMediaType,
    problem_for,
)
from krypton.service.worker import failure
from tests.service import helpers
from tests.service.conftest import ClientFactory
from tests.service.helpers import FAST, MODEL

NOT_AN_IMAGE = b"Patient notes: follow up in six weeks.\n"


def _image(kind: str, retina_png: bytes) -> bytes:
    return {"good": retina_png, "text": NOT_AN_IMAGE, "empty": b"",
            "truncated": retina_png[: len(retina_png) // 2]}[kind]


BadSubmission = tuple[str, dict[str, str], int, str]

BAD_SUBMISSIONS = [
    pytest.param("text", {}, 415, "PNG, JPEG, TIFF or DICOM", id="not-an-image"),
    pytest.param("empty", {}, 422, "empty", id="empty-file"),
    pytest.param("truncated", {}, 422, "truncated", id="truncated-png"),
    pytest.param("good", {"patch_size": "0"}, 422, "patch_size", id="patch-size-0"),
    pytest.param("good", {"patch_size": "65"}, 422, "patch_size",
                 id="patch-larger-than-input"),
    pytest.param("good", {"stride": "0"}, 422, "stride", id="stride-0"),
    pytest.param("good", {"stride": "-4"}, 422, "stride", id="negative-stride"),
    pytest.param("good", {"stride": "1.5"}, 422, "stride", id="non-integer-stride"),
    pytest.param("good", {"stride": "eight"}, 422, "stride", id="text-stride"),
    pytest.param("good", {"model": "alexnet"}, 422, MODEL, id="unknown-model"),
    pytest.param("good", {"dataset": "chest-xray"}, 422, "chest-xray", id="unknown-dataset"),
    pytest.param("good", {"dataset": helpers.UNTUNED_DATASET, "model": helpers.DEMO_MODEL},
                 422, MODEL, id="dataset-of-another-model"),
    pytest.param("good", {"target_class": "3"}, 422, "target_class",
                 id="target-class-past-labels"),
    pytest.param("good", {"target_class": "-1"}, 422, "target_class",
                 id="negative-target-class"),
    pytest.param("good", {"patch_color": "purple"}, 422, "purple", id="unknown-colour"),
    pytest.param("good", {"patch_color": "300,0,0"}, 422, "300", id="rgb-out-of-range"),
    pytest.param("good", {"mode": "bogus"}, 422, "mode", id="unknown-mode"),
    pytest.param("good", {"mode": "approximate"}, 422, "dataset",
                 id="approximate-without-dataset"),
    pytest.param("good", {"mode": "approximate", "dataset": helpers.UNTUNED_DATASET}, 422,
                 "not tuned", id="approximate-untuned-dataset"),
    pytest.param("good", {"mode": "approximate", "dataset": helpers.TUNED_DATASET,
                          "patch_size": "8", "stride": "16"}, 422, "patch_size",
                 id="approximate-other-patch-size"),
]


def _submit(client: TestClient, kind: str, fields: dict[str, str], retina_png: bytes) -> Any:
    return helpers.submit(client, _image(kind, retina_png), filename="retina.png",
                          **{**FAST, **fields})


@pytest.mark.parametrize(("image", "fields", "status", "detail"), BAD_SUBMISSIONS)
def test_submit_bad_request_answers_problem_naming_the_fault(
    api: TestClient, retina_png: bytes, image: str, fields: dict[str, str], status: int,
    detail: str
) -> None:
    problem = helpers.assert_problem(_submit(api, image, fields, retina_png), status)
    assert detail in problem["detail"]
    assert problem["instance"] == "/v1/heatmaps"


def test_submit_bad_request_does_not_echo_the_upload(api: TestClient, retina_png: bytes
                                                    ) -> None:
    response = _submit(api, "text", {}, retina_png)
    assert b"Patient notes" not in response.content


def test_submit_without_image_part_answers_422_naming_it(api: TestClient) -> None:
    response = api.post("/v1/heatmaps", data=FAST)
    problem = helpers.assert_problem(response, 422)
    assert "image" in problem["detail"]


def test_service_still_runs_jobs_after_every_bad_request(api: TestClient,
                                                        retina_png: bytes) -> None:
    cases = [cast(BadSubmission, case.values) for case in BAD_SUBMISSIONS]
    for image, fields, status, _ in cases:
        assert _submit(api, image, fields, retina_png).status_code == status
    assert api.get("/healthz").status_code == 200
    job = helpers.finished(api, retina_png, **FAST)
    assert job["status"] == "succeeded", job["error"]


# ---------------------------------------------------------------- size limits


def test_submit_over_max_upload_bytes_answers_413(make_client: ClientFactory,
                                                  retina_png: bytes) -> None:
    client = make_client(max_upload_bytes=len(retina_png) - 1, embedded_workers=0)
    problem = helpers.assert_problem(helpers.submit(client, retina_png, **FAST), 413)
    assert str(len(retina_png) - 1) in problem["detail"]
    assert client.get("/healthz").status_code == 200


def test_request_body_over_the_limit_answers_413_before_reading_it(
        make_client: ClientFactory) -> None:
    client = make_client(max_upload_bytes=1000, embedded_workers=0)
    oversized = b"\x89PNG\r\n\x1a\n" + bytes(2_000_000)
    problem = helpers.assert_problem(helpers.submit(client, oversized, **FAST), 413)
    assert "request body" in problem["detail"]
    assert client.get("/healthz").status_code == 200


def test_chunked_request_body_over_the_limit_answers_413(make_client: ClientFactory,
                                                        retina_png: bytes) -> None:
    client = make_client(max_upload_bytes=1000, embedded_workers=0)
    boundary = "krypton-test"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"big.png\"\r\nContent-Type: image/png\r\n\r\n").encode() \
        + retina_png + bytes(2_000_000) + f"\r\n--{boundary}--\r\n".encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        for start in range(0, len(body), 65536):
            yield body[start:start + 65536]

    response = client.post("/v1/heatmaps", content=chunks(),
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert "content-length" not in response.request.headers
    problem = helpers.assert_problem(response, 413)
    assert problem["type"].endswith("payload-too-large")
    assert "request body" in problem["detail"]  # cut off while streaming, not after spooling
    assert client.get("/healthz").status_code == 200


def test_submit_over_max_pixels_answers_413(make_client: ClientFactory,
                                            retina_png: bytes) -> None:
    client = make_client(max_pixels=100 * 100, embedded_workers=0)
    problem = helpers.assert_problem(helpers.submit(client, retina_png, **FAST), 413)
    assert "160x120" in problem["detail"]
    assert client.get("/healthz").status_code == 200


def test_submit_at_max_pixels_is_accepted(make_client: ClientFactory) -> None:
    client = make_client(max_pixels=60 * 50, embedded_workers=0)
    small = helpers.encode(helpers.retina_image().resize((60, 50)), "PNG")
    assert helpers.submit(client, small, **FAST).status_code == 202


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_submit_image_whose_header_exceeds_max_pixels_answers_413(
    make_client: ClientFactory
) -> None:
    client = make_client(max_pixels=10_000, embedded_workers=0)
    problem = helpers.assert_problem(helpers.submit(client, _png_header(10_000, 10_000),
                                                    **FAST), 413)
    assert "10000x10000" in problem["detail"]


def test_submit_image_whose_header_exceeds_pillow_bomb_limit_answers_413(
    make_client: ClientFactory
) -> None:
    client = make_client(embedded_workers=0)
    problem = helpers.assert_problem(helpers.submit(client, _png_header(20_000, 20_000),
                                                    **FAST), 413)
    assert "more than the limit of" in problem["detail"]  # the service's, not Pillow's
    assert "DOS" not in problem["detail"]


# ---------------------------------------------------------------- jobs and routes


@pytest.mark.parametrize(("method", "suffix"), [
    pytest.param("GET", "", id="get"),
    pytest.param("DELETE", "", id="delete"),
    pytest.param("GET", "/heatmap.png", id="png"),
    pytest.param("GET", "/heatmap.json", id="json"),
    pytest.param("GET", "/heatmap.npy", id="npy"),
])
def test_unknown_job_answers_404_job_not_found(api: TestClient, method: str,
                                               suffix: str) -> None:
    response = api.request(method, f"/v1/heatmaps/0123456789abcdef{suffix}")
    problem = helpers.assert_problem(response, 404)
    assert problem["type"] == "urn:krypton:problem:job-not-found"
    assert problem["job_id"] == "0123456789abcdef"


@pytest.fixture(scope="module")
def queued(idle_api: TestClient, retina_png: bytes) -> str:
    """A job no worker will take: it stays queued."""
    response = helpers.submit(idle_api, retina_png, **FAST)
    assert response.status_code == 202
    job_id: str = response.json()["id"]
    return job_id


def test_queued_job_reports_queued_and_zero_progress(idle_api: TestClient, queued: str) -> None:
    document = idle_api.get(f"/v1/heatmaps/{queued}").json()
    assert (document["status"], document["progress"]) == ("queued", 0.0)
    assert document["links"] == {"self": f"/v1/heatmaps/{queued}",
                                 "events": f"/v1/heatmaps/{queued}/events"}


@pytest.mark.parametrize("result", ["heatmap.png", "heatmap.json", "heatmap.npy"])
def test_result_of_unfinished_job_answers_409(idle_api: TestClient, queued: str,
                                              result: str) -> None:
    problem = helpers.assert_problem(idle_api.get(f"/v1/heatmaps/{queued}/{result}"), 409)
    assert problem["type"] == "urn:krypton:problem:result-not-ready"
    assert "queued" in problem["detail"]


def test_result_in_unsupported_format_answers_404_problem(api: TestClient) -> None:
    problem = helpers.assert_problem(api.get("/v1/heatmaps/0123456789abcdef/heatmap.gif"), 404)
    assert problem["instance"] == "/v1/heatmaps/0123456789abcdef/heatmap.gif"


@pytest.mark.parametrize("view", ["logits", "DROP", ""])
def test_result_with_unknown_view_answers_422(api: TestClient, retina_png: bytes,
                                              view: str) -> None:
    job = helpers.finished(api, retina_png, **FAST)
    problem = helpers.assert_problem(
        api.get(f"/v1/heatmaps/{job['id']}/heatmap.json", params={"view": view}), 422)
    assert "view" in problem["detail"]


def test_wrong_method_answers_405_problem(api: TestClient) -> None:
    helpers.assert_problem(api.put("/v1/heatmaps"), 405)


def test_predict_with_unknown_model_answers_422_naming_deployed_models(
    api: TestClient, retina_png: bytes
) -> None:
    response = api.post("/v1/predict", files={"image": ("r.png", retina_png, "image/png")},
                        data={"model": "alexnet"})
    problem = helpers.assert_problem(response, 422)
    assert MODEL in problem["detail"] and helpers.DEMO_MODEL in problem["detail"]


def test_predict_of_not_an_image_answers_415(api: TestClient) -> None:
    response = api.post("/v1/predict", files={"image": ("r.png", NOT_AN_IMAGE, "image/png")})
    helpers.assert_problem(response, 415)


# ---------------------------------------------------------------- failed jobs


@pytest.fixture
def broken_checkpoint_client(make_client: ClientFactory, tmp_path: Path,
                             registry: Path) -> TestClient:
    """A deployment whose checkpoint file is not a checkpoint: jobs fail in the worker."""
    return make_client(registry=helpers.write_broken_registry(tmp_path, registry))


def test_job_whose_model_cannot_load_fails_with_a_500_problem(
    broken_checkpoint_client: TestClient, retina_png: bytes
) -> None:
    job = helpers.finished(broken_checkpoint_client, retina_png, **FAST)
    assert job["status"] == "failed"
    assert job["error"]["type"] == "urn:krypton:problem:model-unavailable"
    assert job["error"]["status"] == 500
    assert job["error"]["job_id"] == job["id"]


def test_result_of_failed_job_answers_409(broken_checkpoint_client: TestClient,
                                          retina_png: bytes) -> None:
    job = helpers.finished(broken_checkpoint_client, retina_png, **FAST)
    response = broken_checkpoint_client.get(f"/v1/heatmaps/{job['id']}/heatmap.npy")
    assert "failed" in helpers.assert_problem(response, 409)["detail"]


# ---------------------------------------------------------------- mapping


@pytest.mark.parametrize(("error", "status", "slug"), [
    pytest.param(InvalidInput("bad"), 422, "invalid-input", id="invalid-input"),
    pytest.param(UnsupportedMediaType("gif"), 415, "unsupported-media-type", id="media-type"),
    pytest.param(PayloadTooLarge("big"), 413, "payload-too-large", id="too-large"),
    pytest.param(JobNotFound("gone"), 404, "job-not-found", id="not-found"),
    pytest.param(ResultNotReady("soon"), 409, "result-not-ready", id="not-ready"),
    pytest.param(QueueUnavailable("down"), 503, "queue-unavailable", id="queue-down"),
    pytest.param(UnknownModelError("alexnet", ["resnet18"]), 422, "invalid-input",
                 id="unknown-model"),
    pytest.param(ImageDecodeError("truncated"), 422, "invalid-input", id="decode-error"),
    pytest.param(CheckpointError("bad file"), 500, "model-unavailable", id="checkpoint"),
    pytest.param(RuntimeError("CUDA out of memory"), 500, "internal-error", id="unexpected"),
])
def test_problem_for_maps_each_error_to_status_and_stable_type(error: Exception, status: int,
                                                               slug: str) -> None:
    document = problem_for(error)
    assert (document["status"], document["type"]) == (status, f"urn:krypton:problem:{slug}")


@pytest.mark.parametrize(("error", "status", "slug"), [
    pytest.param(InvalidParamsError("stride"), 422, "invalid-input", id="engine-params"),
    pytest.param(UnsupportedModelError("fx"), 422, "invalid-input", id="engine-model"),
    pytest.param(ImageDecodeError("truncated"), 422, "invalid-input", id="decode-error"),
    pytest.param(RuntimeError("CUDA out of memory"), 500, "internal-error", id="unexpected"),
])
def test_job_failure_maps_engine_errors_too(error: Exception, status: int, slug: str) -> None:
    document = failure(error)
    assert (document["status"], document["type"]) == (status, f"urn:krypton:problem:{slug}")


def test_problem_for_unexpected_error_hides_its_message() -> None:
    document = problem_for(RuntimeError("/secret/path/patient-123.png"))
    assert "patient-123" not in document["detail"]


def test_problem_for_service_error_carries_its_job_id() -> None:
    assert problem_for(JobNotFound("gone", job_id="abc"))["job_id"] == "abc"


def test_problem_for_client_error_keeps_the_message() -> None:
    assert problem_for(InvalidInput("stride must be at least 1"))["detail"] == (
        "stride must be at least 1")


def test_unknown_route_answers_404_problem(api: TestClient) -> None:
    helpers.assert_problem(api.get("/v2/heatmaps"), 404)



# ---------------------------------------------------------------- hostile values


def test_a_prefer_wait_of_5000_digits_waits_the_cap_not_a_500(
        api: TestClient, retina_png: bytes) -> None:
    response = helpers.submit(api, retina_png, prefer="wait=" + "9" * 5000, **FAST)
    assert response.status_code == 200, response.text  # waited: the job finished


def test_a_100_kb_parameter_is_not_echoed_back_whole(api: TestClient,
                                                    retina_png: bytes) -> None:
    response = helpers.submit(api, retina_png, model="m" * 100_000, **FAST)
    document = helpers.assert_problem(response, 422)
    assert len(response.content) < 4000 and "more characters" in document["detail"]


@pytest.mark.parametrize("path", ["/v1/heatmaps/" + "a" * 10_000,
                                  "/v1/heatmaps/x/heatmap.png?size=" + "9" * 5000])
def test_a_request_target_longer_than_any_routes_is_refused_short(api: TestClient,
                                                                   path: str) -> None:
    response = api.get(path)
    problem = helpers.assert_problem(response, 414)
    assert len(response.content) < 2000, problem


def test_a_job_id_is_quoted_short_in_a_problem(api: TestClient) -> None:
    problem = helpers.assert_problem(api.get("/v1/heatmaps/" + "b" * 1000), 404)
    assert len(problem["job_id"]) < 100


def test_an_embedded_service_that_can_load_no_model_is_not_ready(
        make_client: ClientFactory, tmp_path: Path) -> None:
    (tmp_path / "only.pt").write_bytes(b"not a checkpoint")
    registry = tmp_path / "registry.toml"
    registry.write_text('[[models]]\nname = "only"\narchitecture = "resnet18"\n'
                        'labels = ["a", "b"]\ncheckpoint = "only.pt"\n', encoding="utf-8")
    client = make_client(registry=registry, preload_models=True)
    deadline = time.monotonic() + 60
    while (ready := client.get("/readyz")).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ready.status_code == 503, ready.text
    assert ready.json()["live_workers"] == 0


def test_a_multipart_body_without_a_boundary_is_a_problem_naming_what_to_send(
        api: TestClient) -> None:
    response = api.post("/v1/heatmaps", content=b"abc",
                        headers={"Content-Type": "multipart/form-data"})
    document = helpers.assert_problem(response, 400)
    assert document["type"] == "urn:krypton:problem:malformed-body"
    assert document["title"] != document["detail"]
    assert "boundary" in document["detail"] and "-F image=@" in document["detail"]


def test_an_image_sent_as_a_text_field_is_told_to_be_a_file_part(api: TestClient) -> None:
    response = api.post("/v1/heatmaps", data={"image": "hello"},
                        files={"stride": (None, "32")})
    document = helpers.assert_problem(response, 422)
    assert "must be a file part" in document["detail"]
    assert "UploadFile" not in document["detail"] and "class" not in document["detail"]


def test_a_json_body_that_cannot_be_parsed_is_told_to_be_json(api: TestClient) -> None:
    response = api.post("/v1/pacs/pacs/heatmaps", content=b'{"study_uid": "\xff\xfe"}',
                        headers={"Content-Type": "application/json"})
    document = helpers.assert_problem(response, 400)
    assert document["type"] == "urn:krypton:problem:malformed-body"
    assert "JSON" in document["detail"] and "multipart" not in document["detail"]


def test_tuning_images_sent_as_text_fields_are_told_to_be_file_parts(api: TestClient) -> None:
    response = api.post(f"/v1/datasets/{helpers.TUNING_DATASET}/tuning",
                        data={"images": "hello"}, files={"stride": (None, "32")})
    assert "-F images=@FILE" in helpers.assert_problem(response, 422)["detail"]
