"""What is deployed (models, datasets), approximate mode, and dataset tuning jobs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from krypton.core.plans import MAX_TUNING_IMAGES
from krypton.models import DatasetStore
from krypton.models.deployment import Deployment
from tests.service import helpers
from tests.service.conftest import ClientFactory
from tests.service.helpers import (
    DEMO_MODEL,
    FAST,
    LABELS,
    MODEL,
    STALE_DATASET,
    TUNED_DATASET,
    TUNED_TAU,
    TUNING_DATASET,
    UNTUNED_DATASET,
)

ALL_DATASETS = sorted([UNTUNED_DATASET, TUNED_DATASET, STALE_DATASET, TUNING_DATASET])


def _models(api: TestClient) -> dict[str, dict[str, Any]]:
    response = api.get("/v1/models")
    assert response.status_code == 200
    return {model["name"]: model for model in response.json()}


# ---------------------------------------------------------------- models


def test_models_lists_every_deployed_model(api: TestClient) -> None:
    assert list(_models(api)) == [MODEL, DEMO_MODEL]


def test_models_reports_labels_input_size_and_normalisation(api: TestClient) -> None:
    model = _models(api)[MODEL]
    assert model["labels"] == list(LABELS)
    assert model["architecture"] == "resnet18"
    assert model["input_size"] == helpers.INPUT_SIZE
    assert model["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert model["std"] == pytest.approx([0.229, 0.224, 0.225])


def test_models_show_each_models_window(api: TestClient) -> None:
    models = _models(api)
    assert models[MODEL]["window"] is None
    assert models[DEMO_MODEL]["window"] == {"center": 40.0, "width": 400.0}


@pytest.mark.parametrize(("name", "random"), [
    pytest.param(MODEL, False, id="checkpoint"),
    pytest.param(DEMO_MODEL, True, id="seeded-random"),
])
def test_models_flags_random_weights(api: TestClient, name: str, random: bool) -> None:
    assert _models(api)[name]["random_weights"] is random


@pytest.mark.parametrize(("name", "datasets"), [
    pytest.param(MODEL, ALL_DATASETS, id="serving"),
    pytest.param(DEMO_MODEL, [], id="none"),
])
def test_models_lists_the_datasets_each_serves(api: TestClient, name: str,
                                               datasets: list[str]) -> None:
    assert _models(api)[name]["datasets"] == datasets


# ---------------------------------------------------------------- datasets


def test_datasets_lists_every_deployed_dataset_by_name(api: TestClient) -> None:
    response = api.get("/v1/datasets")
    assert response.status_code == 200
    assert [dataset["name"] for dataset in response.json()] == ALL_DATASETS


def test_dataset_before_tuning_has_no_config(api: TestClient) -> None:
    document = api.get(f"/v1/datasets/{UNTUNED_DATASET}").json()
    assert document == {"name": UNTUNED_DATASET, "model": MODEL,
                        "description": f"{UNTUNED_DATASET} photos", "tuned": None,
                        "stale": None}


def test_tuned_dataset_shows_its_config(api: TestClient, deployment: Deployment) -> None:
    tuned = api.get(f"/v1/datasets/{TUNED_DATASET}").json()["tuned"]
    assert tuned["tau"] == TUNED_TAU
    assert tuned["checkpoint"] == deployment.model(MODEL).weights_id()
    assert (tuned["patch_size"], tuned["stride"]) == (16, 16)


@pytest.mark.parametrize(("method", "path"), [
    pytest.param("GET", "/v1/datasets/chest-xray", id="get"),
    pytest.param("POST", "/v1/datasets/chest-xray/tuning", id="tune"),
])
def test_unknown_dataset_in_the_path_answers_404(api: TestClient, retina_png: bytes,
                                                 method: str, path: str) -> None:
    files = [("images", (f"{i}.png", retina_png, "image/png")) for i in range(2)]
    response = api.request(method, path, files=files if method == "POST" else None)
    helpers.assert_problem(response, 404)


def test_unknown_dataset_answers_a_problem_naming_the_deployed_ones(api: TestClient) -> None:
    problem = helpers.assert_problem(api.get("/v1/datasets/chest-xray"), 404)
    assert "chest-xray" in problem["detail"] and UNTUNED_DATASET in problem["detail"]


# ---------------------------------------------------------------- approximate mode


@pytest.fixture(scope="module")
def approximate(api: TestClient, retina_png: bytes) -> dict[str, Any]:
    return helpers.finished(api, retina_png, mode="approximate", dataset=TUNED_DATASET)


def test_approximate_job_with_tuned_dataset_succeeds(approximate: dict[str, Any]) -> None:
    assert approximate["status"] == "succeeded", approximate["error"]
    assert approximate["run"]["mode"] == "approximate"


def test_approximate_job_reports_the_tuned_tau_in_run(approximate: dict[str, Any]) -> None:
    assert approximate["run"]["approximation"]["tau"] == TUNED_TAU
    assert approximate["params"]["tau"] == TUNED_TAU


def test_approximate_job_reports_what_its_bisection_refined(approximate: dict[str, Any]) -> None:
    run = approximate["run"]
    assert run["approximation"]["drilldown_tolerance"] == helpers.TUNED_TOLERANCE
    assert run["refined_positions"] is not None and run["refine_rounds"] is not None
    assert run["positions"] <= 16


def test_approximate_job_takes_geometry_and_model_from_the_dataset(
    approximate: dict[str, Any]
) -> None:
    params = approximate["params"]
    assert (params["model"], params["patch_size"], params["stride"]) == (MODEL, 16, 16)
    assert approximate["run"]["heatmap_shape"] == [4, 4]


def _weights_reported(api: TestClient) -> str:
    """The weights id a live worker reports for MODEL, once one has loaded it."""
    def reported() -> str | None:
        workers = api.get("/readyz").json().get("workers") or []
        return next((w["weights"][MODEL] for w in workers if MODEL in w["weights"]), None)
    return helpers.wait_until(reported, what="a worker to report its weights")


def test_approximate_job_with_config_of_another_checkpoint_is_refused_when_submitted(
    api: TestClient, retina_png: bytes, deployment: Deployment
) -> None:
    weights = _weights_reported(api)
    assert weights == deployment.model(MODEL).weights_id()
    response = helpers.submit(api, retina_png, mode="approximate", dataset=STALE_DATASET)
    detail = helpers.assert_problem(response, 422)["detail"]
    assert "0f" * 32 in detail and weights in detail and "tune it again" in detail


def test_a_config_of_another_checkpoint_is_not_shown_as_tuned(api: TestClient) -> None:
    weights = _weights_reported(api)
    dataset = api.get(f"/v1/datasets/{STALE_DATASET}").json()
    assert dataset["tuned"] is None
    assert "0f" * 32 in dataset["stale"] and weights in dataset["stale"]


def test_a_config_of_the_served_checkpoint_is_shown_as_tuned(api: TestClient) -> None:
    _weights_reported(api)
    dataset = api.get(f"/v1/datasets/{TUNED_DATASET}").json()
    assert dataset["tuned"] is not None and dataset["stale"] is None


def test_exact_job_naming_a_dataset_uses_its_model(api: TestClient, retina_png: bytes) -> None:
    job = helpers.finished(api, retina_png, dataset=UNTUNED_DATASET, **FAST)
    assert job["status"] == "succeeded", job["error"]
    assert job["params"]["model"] == MODEL


def test_job_naming_a_tuned_dataset_takes_patch_and_stride_from_its_config(
    api: TestClient, retina_png: bytes
) -> None:
    response = helpers.submit(api, retina_png, dataset=TUNED_DATASET)
    assert response.status_code == 202, response.text
    params = response.json()["params"]
    assert (params["patch_size"], params["stride"], params["mode"]) == (16, 16, "exact")
    helpers.wait_for_job(api, response.headers["Location"])


# ---------------------------------------------------------------- tuning


def _tuning_images(retina_png: bytes, count: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    image = helpers.retina_image()
    variants = [retina_png, helpers.encode(image.rotate(90, expand=True), "PNG"),
                helpers.encode(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"),
                helpers.encode(image.crop((20, 10, 140, 110)), "JPEG")]
    return [("images", (f"sample-{i}.png", variants[i % len(variants)], "image/png"))
            for i in range(count)]


def _post_tuning(api: TestClient, retina_png: bytes, count: int, dataset: str = TUNING_DATASET
                 ) -> Any:
    return api.post(f"/v1/datasets/{dataset}/tuning", files=_tuning_images(retina_png, count),
                    data={"patch_size": "16", "stride": "8", "target_ssim": "0.8"})


@pytest.fixture(scope="module")
def tuning(api: TestClient, retina_png: bytes) -> tuple[Any, dict[str, Any]]:
    """A tuning job on three sample images: the 202 response and the finished job."""
    response = _post_tuning(api, retina_png, 3)
    assert response.status_code == 202, response.text
    return response, helpers.wait_for_job(api, response.headers["Location"])


def test_tuning_answers_202_with_location_of_the_tuning_job(
    tuning: tuple[Any, dict[str, Any]]
) -> None:
    response, _ = tuning
    body = response.json()
    assert response.headers["Location"] == f"/v1/datasets/{TUNING_DATASET}/tuning/{body['id']}"
    assert (body["kind"], body["status"]) == ("tuning", "queued")
    assert body["images"] == 3


def test_tuning_job_succeeds_with_the_tuned_config(tuning: tuple[Any, dict[str, Any]],
                                                   deployment: Deployment) -> None:
    _, job = tuning
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"] == 1.0
    tuned = job["tuned"]
    assert (tuned["dataset"], tuned["model"]) == (TUNING_DATASET, "resnet18")
    assert tuned["checkpoint"] == deployment.model(MODEL).weights_id()
    assert (tuned["patch_size"], tuned["stride"], tuned["target_ssim"]) == (16, 8, 0.8)
    assert 0.0 < tuned["tau"] <= 1.0


def test_tuning_job_writes_the_config_file(tuning: tuple[Any, dict[str, Any]],
                                           datasets_dir: Path) -> None:
    _, job = tuning
    written = json.loads((datasets_dir / f"{TUNING_DATASET}.json").read_text())
    assert written == {key: value for key, value in job["tuned"].items() if key != "met_target"}


def test_tuned_config_is_shown_by_get_dataset(api: TestClient, datasets_dir: Path,
                                              tuning: tuple[Any, dict[str, Any]]) -> None:
    shown = api.get(f"/v1/datasets/{TUNING_DATASET}").json()["tuned"]
    assert shown == DatasetStore(datasets_dir).load(TUNING_DATASET).as_dict()


def test_freshly_tuned_dataset_runs_approximate_jobs(api: TestClient, retina_png: bytes,
                                                     tuning: tuple[Any, dict[str, Any]]) -> None:
    _, job = tuning
    done = helpers.finished(api, retina_png, mode="approximate", dataset=TUNING_DATASET)
    assert done["status"] == "succeeded", done["error"]
    assert done["run"]["approximation"]["tau"] == job["tuned"]["tau"]
    assert done["run"]["heatmap_shape"] == [7, 7]


def test_tuning_job_is_not_visible_under_another_dataset(
    api: TestClient, tuning: tuple[Any, dict[str, Any]]
) -> None:
    _, job = tuning
    response = api.get(f"/v1/datasets/{UNTUNED_DATASET}/tuning/{job['id']}")
    helpers.assert_problem(response, 404)


def test_tuning_job_is_not_a_heatmap_job(api: TestClient,
                                         tuning: tuple[Any, dict[str, Any]]) -> None:
    _, job = tuning
    helpers.assert_problem(api.get(f"/v1/heatmaps/{job['id']}"), 404)


def test_delete_tuning_job_purges_it(api: TestClient, retina_png: bytes) -> None:
    response = _post_tuning(api, retina_png, 2, UNTUNED_DATASET)
    location = response.headers["Location"]
    assert api.delete(location).status_code == 204
    helpers.assert_problem(api.get(location), 404)
    helpers.assert_problem(api.delete(location), 404)


def test_tuning_with_more_than_the_maximum_images_answers_422(api: TestClient,
                                                              retina_png: bytes) -> None:
    response = _post_tuning(api, retina_png, MAX_TUNING_IMAGES + 1, UNTUNED_DATASET)
    helpers.assert_problem(response, 422)


@pytest.mark.parametrize("count", [0, 1])
def test_tuning_with_fewer_than_two_images_answers_422(api: TestClient, retina_png: bytes,
                                                       count: int) -> None:
    helpers.assert_problem(_post_tuning(api, retina_png, count, UNTUNED_DATASET), 422)


@pytest.mark.parametrize("fields", [
    pytest.param({"target_ssim": "0"}, id="ssim-0"),
    pytest.param({"target_ssim": "1.5"}, id="ssim-over-1"),
    pytest.param({"patch_size": "0"}, id="patch-0"),
    pytest.param({"patch_size": "65"}, id="patch-over-input"),
    pytest.param({"stride": "0"}, id="stride-0"),
    pytest.param({"patch_size": "60", "stride": "8"}, id="heatmap-under-3x3"),
    pytest.param({"score": "median"}, id="unknown-score"),
])
def test_tuning_with_bad_parameters_answers_422(api: TestClient, retina_png: bytes,
                                                fields: dict[str, str]) -> None:
    response = api.post(f"/v1/datasets/{UNTUNED_DATASET}/tuning",
                        files=_tuning_images(retina_png, 2), data=fields)
    helpers.assert_problem(response, 422)
    assert api.get(f"/v1/datasets/{UNTUNED_DATASET}").json()["tuned"] is None


def test_tuning_by_the_worst_image_is_queued_with_that_score(api: TestClient,
                                                            retina_png: bytes) -> None:
    response = api.post(f"/v1/datasets/{UNTUNED_DATASET}/tuning",
                        files=_tuning_images(retina_png, 2), data={"score": "min"})
    assert response.status_code == 202, response.text
    assert response.json()["params"]["score"] == "min"
    assert api.delete(response.headers["Location"]).status_code == 204


def test_tuning_with_a_file_that_is_not_an_image_answers_415(api: TestClient,
                                                             retina_png: bytes) -> None:
    files = [*_tuning_images(retina_png, 1), ("images", ("notes.png", b"notes", "image/png"))]
    response = api.post(f"/v1/datasets/{UNTUNED_DATASET}/tuning", files=files)
    helpers.assert_problem(response, 415)


def test_a_broken_config_file_is_named_in_no_answer_and_leaves_the_listing_whole(
        make_client: ClientFactory, datasets_dir: Path, retina_png: bytes) -> None:
    path = datasets_dir / f"{helpers.UNTUNED_DATASET}.json"
    path.write_text('{"dataset": "fundus", "chekpoint": "y"}', encoding="utf-8")
    try:
        client = make_client()
        listing = client.get("/v1/datasets")
        response = helpers.submit(client, retina_png, dataset=helpers.UNTUNED_DATASET,
                                  mode="approximate")
    finally:
        path.unlink()
    assert listing.status_code == 200, listing.text
    assert helpers.assert_problem(response, 500)["type"] == (
        "urn:krypton:problem:dataset-config-unreadable")
    assert str(datasets_dir) not in listing.text + response.text
