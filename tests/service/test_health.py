"""Liveness, readiness and Prometheus metrics in embedded mode."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.service import helpers
from tests.service.conftest import ClientFactory
from tests.service.helpers import FAST


def _ready(client: TestClient) -> dict[str, Any] | None:
    response = client.get("/readyz")
    document: dict[str, Any] = response.json()
    return document if response.status_code == 200 else None


def test_healthz_answers_ok(api: TestClient) -> None:
    response = api.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_healthz_answers_ok_without_workers(idle_api: TestClient) -> None:
    assert idle_api.get("/healthz").status_code == 200


def test_readyz_with_embedded_worker_answers_200_listing_it(api: TestClient) -> None:
    report = helpers.wait_until(lambda: _ready(api), timeout=10, what="/readyz to answer 200")
    assert (report["status"], report["queue"], report["queue_ok"]) == ("ready", "memory", True)
    assert [worker["name"] for worker in report["workers"]] == ["embedded-0"]
    assert report["workers"][0]["device"] == "cpu"


@pytest.mark.parametrize("workers", [2, 3])
def test_readyz_lists_every_embedded_worker(make_client: ClientFactory, workers: int) -> None:
    client = make_client(embedded_workers=workers)

    def all_beating() -> dict[str, Any] | None:
        report = _ready(client)
        return report if report and len(report["workers"]) == workers else None

    report = helpers.wait_until(all_beating, timeout=10, what=f"{workers} workers to beat")
    assert [w["name"] for w in report["workers"]] == [f"embedded-{i}" for i in range(workers)]


def test_readyz_without_workers_answers_503(idle_api: TestClient) -> None:
    response = idle_api.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "not ready", "queue": "memory", "queue_ok": True,
                               "claimable": True, "live_workers": 0, "workers": []}
    assert response.headers["Retry-After"].isdigit()


@pytest.fixture(scope="module")
def metrics(api: TestClient, retina_png: bytes) -> str:
    """The metrics page after a job was submitted, polled and one unknown job asked for."""
    job = helpers.finished(api, retina_png, **FAST)
    api.get(f"/v1/heatmaps/{job['id']}/heatmap.png")
    api.get("/v1/heatmaps/0123456789abcdef")
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text: str = response.text
    return text


def test_metrics_counts_requests_by_method_route_and_status(metrics: str) -> None:
    assert "# TYPE krypton_http_requests_total counter" in metrics
    assert ('krypton_http_requests_total{method="POST",route="/v1/heatmaps",status="202"}'
            in metrics)


def test_metrics_labels_routes_by_template_not_by_job_id(metrics: str) -> None:
    assert 'route="/v1/heatmaps/{job_id}",status="200"' in metrics
    assert 'route="/v1/heatmaps/{job_id}",status="404"' in metrics
    assert 'route="/v1/heatmaps/{job_id}/heatmap.png"' in metrics
    assert "0123456789abcdef" not in metrics


def test_metrics_records_request_latency(metrics: str) -> None:
    assert "# TYPE krypton_http_request_seconds histogram" in metrics
    assert 'krypton_http_request_seconds_count{method="POST",route="/v1/heatmaps"}' in metrics


def test_metrics_count_made_up_methods_under_one_label(api: TestClient) -> None:
    for method in ("BREW", "PROPFIND", "XYZZY"):
        api.request(method, "/healthz")
    text = api.get("/metrics").text
    assert 'method="other"' in text
    assert not any(f'method="{m}"' in text for m in ("BREW", "PROPFIND", "XYZZY"))
