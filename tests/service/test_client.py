"""``krypton.client`` against a real ``krypton serve``: the calls an integrator makes."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from krypton.client import AsyncClient, Client, KryptonError
from krypton.service.auth import KeyStore
from tests import dicom_files
from tests.service import helpers

FAST = {"patch_size": 16, "stride": 16}


@pytest.fixture(scope="module")
def service(registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A keyed ``krypton serve``, and a key it accepts."""
    store = KeyStore(tmp_path_factory.mktemp("client") / "keys.json")
    key = store.add("integrator", "heatmaps")
    with helpers.serving(registry, KRYPTON_KEYS_FILE=str(store.path)) as url:
        yield url, key


@pytest.fixture
def client(service: tuple[str, str]) -> Iterator[Client]:
    with Client(service[0], api_key=service[1]) as krypton:
        yield krypton


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "retina.png"
    helpers.retina_image().save(path)
    return path


def test_submit_then_wait_gives_the_finished_job(client: Client, image: Path) -> None:
    job = client.wait(client.submit(image, model=helpers.MODEL, **FAST))
    assert job["status"] == "succeeded" and job["prediction"]["predicted_label"]


def test_submit_with_wait_may_answer_finished(client: Client, image: Path) -> None:
    assert client.submit(image, wait=30, **FAST)["status"] == "succeeded"


@pytest.mark.parametrize("fmt", ["png", "json", "npy", "overlay.png"])
def test_results_come_in_every_format(client: Client, image: Path, fmt: str) -> None:
    job = client.wait(client.submit(image, **FAST))
    data = client.heatmap(job, fmt)  # type: ignore[arg-type]
    if fmt == "json":
        assert json.loads(data)["shape"] == [4, 4]
    elif fmt == "npy":
        assert np.load(io.BytesIO(data)).shape == (4, 4)
    else:
        assert data.startswith(b"\x89PNG")


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.mark.parametrize("query", [{}, {"alpha": 0.2, "size": 64}, {"view": "probability"}])
def test_overlay_is_the_services_overlay(client: Client, service: tuple[str, str], image: Path,
                                         query: dict[str, Any]) -> None:
    job = client.wait(client.submit(image, **FAST))
    served = httpx.get(f"{service[0]}/v1/heatmaps/{job['id']}/heatmap.png",
                       params={"overlay": 1, **query},
                       headers={"Authorization": f"Bearer {service[1]}"}, timeout=60)
    assert served.status_code == 200
    mine = _pixels(client.heatmap(job["id"], "overlay.png", **query))
    assert mine.shape == _pixels(served.content).shape
    assert np.array_equal(mine, _pixels(served.content))


def test_a_result_the_job_does_not_offer_raises(client: Client, image: Path) -> None:
    job = client.wait(client.submit(image, **FAST))
    with pytest.raises(KryptonError) as raised:
        client.heatmap(job, "dcm")
    assert raised.value.status == 409
    assert "overlay.png" in raised.value.problem["detail"]  # the names heatmap() takes


def test_a_format_the_client_does_not_know_raises_before_asking(client: Client,
                                                                image: Path) -> None:
    job = client.wait(client.submit(image, **FAST))
    with pytest.raises(ValueError, match="overlay.png"):
        client.heatmap(job, "gif")  # type: ignore[arg-type]


def test_dicom_input_gives_dicom_results(client: Client) -> None:
    data = dicom_files.build(dicom_files.example_pixels(), "RGB")
    job = client.wait(client.submit(data, **FAST))
    assert client.heatmap(job, "dcm")[128:132] == b"DICM"
    assert client.heatmap(job, "overlay.dcm")[128:132] == b"DICM"


def test_events_follow_the_job_to_its_end(client: Client, image: Path) -> None:
    job = client.submit(image, **FAST)
    names = [name for name, _ in client.events(job)]
    assert names[0] == "progress" and names[-1] == "succeeded"


def test_predict_names_the_class(client: Client, image: Path) -> None:
    answer = client.predict(image)
    assert answer["prediction"]["label"] in helpers.LABELS


def test_models_and_datasets_are_listed(client: Client) -> None:
    assert helpers.MODEL in {model["name"] for model in client.models()}
    assert helpers.TUNED_DATASET in {dataset["name"] for dataset in client.datasets()}


def test_delete_purges_the_job(client: Client, image: Path) -> None:
    job = client.wait(client.submit(image, **FAST))
    client.delete(job)
    with pytest.raises(KryptonError) as raised:
        client.job(job)
    assert raised.value.status == 404


def test_error_answers_raise_with_the_problem_document(client: Client, image: Path) -> None:
    with pytest.raises(KryptonError) as raised:
        client.submit(image, stride=0)
    assert raised.value.status == 422
    assert raised.value.type == "urn:krypton:problem:invalid-input"
    assert "stride" in raised.value.problem["detail"]


def test_a_client_without_the_key_is_refused(service: tuple[str, str]) -> None:
    with Client(service[0]) as anonymous, pytest.raises(KryptonError) as raised:
        anonymous.models()
    assert raised.value.status == 401


def test_async_client_does_what_the_sync_one_does(service: tuple[str, str],
                                                  image: Path) -> None:
    async def scenario() -> tuple[str, bytes, list[str]]:
        async with AsyncClient(service[0], api_key=service[1]) as krypton:
            job = await krypton.wait(await krypton.submit(image, **FAST))
            png = await krypton.heatmap(job, "png")
            names = [name async for name, _ in krypton.events(job)]
            await krypton.delete(job)
            return job["status"], png, names

    status, png, names = asyncio.run(scenario())
    assert status == "succeeded" and png.startswith(b"\x89PNG") and names[-1] == "succeeded"
