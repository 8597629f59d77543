"""Synchronous classification: ``POST /v1/predict``."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from krypton.models import decode_image, to_model_input
from krypton.models.deployment import Deployment
from krypton.service import constants
from tests.service import helpers
from tests.service.helpers import DEMO_MODEL, LABELS, MODEL


def _predict(client: TestClient, image: bytes, **fields: str) -> Any:
    return client.post("/v1/predict", files={"image": ("retina.png", image, "image/png")},
                       data=fields)


@pytest.fixture(scope="module")
def prediction(api: TestClient, retina_png: bytes) -> dict[str, Any]:
    response = _predict(api, retina_png)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


@pytest.fixture(scope="module")
def softmax(deployment: Deployment, retina_png: bytes) -> list[float]:
    deployed = deployment.model(MODEL)
    tensor = to_model_input(decode_image(retina_png), deployed.preprocessing)
    with torch.no_grad():
        network = helpers.build_deployed(deployment, MODEL)
        return torch.softmax(network(tensor.unsqueeze(0)), dim=1)[0].tolist()


def test_predict_defaults_to_the_first_deployed_model(prediction: dict[str, Any]) -> None:
    assert prediction["model"] == MODEL
    assert prediction["random_weights"] is False


def test_predict_probabilities_sum_to_one(prediction: dict[str, Any]) -> None:
    assert sum(p["probability"] for p in prediction["probabilities"]) == pytest.approx(1.0)


def test_predict_ranks_every_label_most_probable_first(prediction: dict[str, Any]) -> None:
    ranked = prediction["probabilities"]
    assert sorted(p["label"] for p in ranked) == sorted(LABELS)
    assert [p["probability"] for p in ranked] == sorted((p["probability"] for p in ranked),
                                                        reverse=True)
    assert prediction["prediction"] == ranked[0]


def test_predict_labels_match_class_indices(prediction: dict[str, Any]) -> None:
    assert all(LABELS[p["class_index"]] == p["label"] for p in prediction["probabilities"])


def test_predict_equals_the_softmax_of_the_model(prediction: dict[str, Any],
                                                 softmax: list[float]) -> None:
    served = {p["class_index"]: p["probability"] for p in prediction["probabilities"]}
    assert [served[i] for i in range(len(LABELS))] == pytest.approx(softmax, abs=1e-5)


def test_predict_with_named_model_uses_it(api: TestClient, retina_png: bytes) -> None:
    response = _predict(api, retina_png, model=DEMO_MODEL)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == DEMO_MODEL
    assert response.json()["random_weights"] is True
    assert len(response.json()["probabilities"]) == 2


def test_predict_without_workers_answers_503_after_the_wait(
    idle_api: TestClient, retina_png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "MAX_WAIT_SECONDS", 1)
    problem = helpers.assert_problem(_predict(idle_api, retina_png), 503)
    assert problem["type"] == "urn:krypton:problem:queue-unavailable"
