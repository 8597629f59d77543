"""The exported OpenAPI document is what the app serves."""

from __future__ import annotations

import json
from pathlib import Path

from krypton.service.app import create_app
from krypton.service.config import Settings

EXPORTED = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"


def test_openapi_export_matches_the_served_document() -> None:
    served = create_app(Settings()).openapi()
    exported = json.loads(EXPORTED.read_text(encoding="utf-8"))
    assert exported == served, "openapi/openapi.json is stale: run `krypton openapi`"


def test_openapi_lists_every_route_of_the_http_surface() -> None:
    paths = json.loads(EXPORTED.read_text(encoding="utf-8"))["paths"]
    expected = {
        "/v1/heatmaps": {"post"},
        "/v1/heatmaps/{job_id}": {"get", "delete"},
        "/v1/heatmaps/{job_id}/heatmap.png": {"get"},
        "/v1/heatmaps/{job_id}/heatmap.json": {"get"},
        "/v1/heatmaps/{job_id}/heatmap.npy": {"get"},
        "/v1/predict": {"post"},
        "/v1/models": {"get"},
        "/v1/datasets": {"get"},
        "/v1/datasets/{name}": {"get"},
        "/v1/datasets/{name}/tuning": {"post"},
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/metrics": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths.get(path, {})), path
