"""The exported OpenAPI document is what the app serves."""

from __future__ import annotations

import json
from pathlib import Path

from krypton.service.app import create_app
from krypton.service.auth import KeyStore
from krypton.service.config import Settings

EXPORTED = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"


def _keyed_settings(folder: Path) -> Settings:
    store = KeyStore(folder / "keys.json")
    store.add("reader", "heatmaps")
    return Settings(keys_file=store.path)


def test_openapi_export_matches_the_document_a_service_with_keys_serves(tmp_path: Path) -> None:
    served = create_app(_keyed_settings(tmp_path)).openapi()
    exported = json.loads(EXPORTED.read_text(encoding="utf-8"))
    assert exported == served, "openapi/openapi.json is stale: run `krypton openapi`"


def _secured(document: dict[str, object]) -> set[str]:
    paths: dict[str, dict[str, dict[str, object]]] = document["paths"]  # type: ignore[assignment]
    return {f"{method} {path}" for path, operations in paths.items()
            for method, operation in operations.items() if operation.get("security")}


def test_a_service_with_keys_declares_bearer_authentication(tmp_path: Path) -> None:
    document = create_app(_keyed_settings(tmp_path)).openapi()
    assert "post /v1/heatmaps" in _secured(document)
    assert "get /healthz" not in _secured(document)


def test_a_service_running_open_declares_no_authentication() -> None:
    document = create_app(Settings()).openapi()
    assert _secured(document) == set()
    assert "securitySchemes" not in document.get("components", {})


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
