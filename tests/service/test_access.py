"""API keys: who may call, whose jobs they see, and when the service may run open."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from krypton.cli import app as cli
from krypton.service.auth import KeyStore, access_mode, is_loopback
from tests.service import helpers
from tests.service.conftest import ClientFactory
from tests.service.helpers import FAST


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A keys file with two heatmaps keys and an admin key; the file and the tokens."""
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    store = KeyStore(path)
    tokens = {name: store.add(name, scope) for name, scope in (
        ("alice", "heatmaps"), ("bob", "heatmaps"), ("ops", "admin"))}
    return path, tokens


@pytest.fixture
def keyed(make_client: ClientFactory, keys: tuple[Path, dict[str, str]]) -> TestClient:
    return make_client(keys_file=keys[0])


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _submit(client: TestClient, image: bytes, token: str) -> dict[str, Any]:
    response = client.post("/v1/heatmaps", files={"image": ("r.png", image, "image/png")},
                           data=FAST, headers=_as(token))
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


# ---------------------------------------------------------------- keys


@pytest.mark.parametrize("headers", [
    pytest.param({}, id="no-key"),
    pytest.param({"Authorization": "Bearer kr_not-a-key"}, id="unknown-key"),
    pytest.param({"Authorization": "Basic dXNlcjpwdw=="}, id="other-scheme"),
])
@pytest.mark.parametrize("route", ["/v1/models", "/v1/datasets", "/v1/heatmaps/abc"])
def test_request_without_a_valid_key_answers_401_asking_for_a_bearer_key(
        keyed: TestClient, headers: dict[str, str], route: str) -> None:
    response = keyed.get(route, headers=headers)
    problem = helpers.assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in problem["detail"]


def test_submission_without_a_key_answers_401(keyed: TestClient, retina_png: bytes) -> None:
    response = keyed.post("/v1/heatmaps", files={"image": ("r.png", retina_png, "image/png")},
                          data=FAST)
    helpers.assert_problem(response, 401)


def test_healthz_needs_no_key(keyed: TestClient) -> None:
    assert keyed.get("/healthz").status_code == 200


@pytest.mark.parametrize(("key", "status"), [(None, 401), ("alice", 403), ("ops", 200)])
def test_metrics_answer_an_admin_key_only(keyed: TestClient, keys: tuple[Path, dict[str, str]],
                                          key: str | None, status: int) -> None:
    response = keyed.get("/metrics", headers=_as(keys[1][key]) if key else {})
    assert response.status_code == status


def test_a_key_reads_its_own_job(keyed: TestClient, keys: tuple[Path, dict[str, str]],
                                 retina_png: bytes) -> None:
    job = _submit(keyed, retina_png, keys[1]["alice"])
    done = helpers.wait_for_job(_Authorized(keyed, keys[1]["alice"]), f"/v1/heatmaps/{job['id']}")
    assert done["status"] == "succeeded", done["error"]
    png = keyed.get(f"/v1/heatmaps/{job['id']}/heatmap.png", headers=_as(keys[1]["alice"]))
    assert png.status_code == 200


@pytest.mark.parametrize("suffix", ["", "/heatmap.png", "/heatmap.json", "/heatmap.npy"])
def test_another_key_is_told_the_job_does_not_exist(
        keyed: TestClient, keys: tuple[Path, dict[str, str]], retina_png: bytes,
        suffix: str) -> None:
    job = _submit(keyed, retina_png, keys[1]["alice"])
    response = keyed.get(f"/v1/heatmaps/{job['id']}{suffix}", headers=_as(keys[1]["bob"]))
    helpers.assert_problem(response, 404)


def test_another_key_cannot_delete_the_job(keyed: TestClient, keys: tuple[Path, dict[str, str]],
                                           retina_png: bytes) -> None:
    job = _submit(keyed, retina_png, keys[1]["alice"])
    helpers.assert_problem(keyed.delete(f"/v1/heatmaps/{job['id']}",
                                        headers=_as(keys[1]["bob"])), 404)
    assert keyed.get(f"/v1/heatmaps/{job['id']}", headers=_as(keys[1]["alice"])
                     ).status_code == 200


def test_admin_key_reads_every_job(keyed: TestClient, keys: tuple[Path, dict[str, str]],
                                   retina_png: bytes) -> None:
    job = _submit(keyed, retina_png, keys[1]["alice"])
    assert keyed.get(f"/v1/heatmaps/{job['id']}", headers=_as(keys[1]["ops"])
                     ).status_code == 200


def test_tuning_needs_an_admin_key(keyed: TestClient, keys: tuple[Path, dict[str, str]],
                                   retina_png: bytes) -> None:
    files = [("images", (f"{i}.png", retina_png, "image/png")) for i in range(2)]
    response = keyed.post(f"/v1/datasets/{helpers.TUNING_DATASET}/tuning", files=files,
                          headers=_as(keys[1]["alice"]))
    assert "admin" in helpers.assert_problem(response, 403)["detail"]


def test_readyz_shows_worker_details_to_an_admin_key_only(
        keyed: TestClient, keys: tuple[Path, dict[str, str]]) -> None:
    def ready(headers: dict[str, str]) -> dict[str, Any] | None:
        response = keyed.get("/readyz", headers=headers)
        document: dict[str, Any] = response.json()
        return document if response.status_code == 200 else None

    anonymous = helpers.wait_until(lambda: ready({}), what="/readyz to answer 200")
    assert anonymous["live_workers"] == 1 and anonymous["workers"] is None
    admin = ready(_as(keys[1]["ops"]))
    assert admin is not None and admin["workers"][0]["name"] == "embedded-0"
    assert ready(_as(keys[1]["alice"]))["workers"] is None  # type: ignore[index]


def test_a_revoked_key_is_refused_without_a_restart(
        make_client: ClientFactory, tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    token = store.add("temp", "heatmaps")
    store.add("keeper", "admin")
    client = make_client(keys_file=store.path, embedded_workers=0)
    assert client.get("/v1/models", headers=_as(token)).status_code == 200
    store.revoke("temp")
    problem = helpers.assert_problem(client.get("/v1/models", headers=_as(token)), 401)
    assert "unknown or revoked" in problem["detail"]


def test_keys_file_holds_hashes_not_keys(keys: tuple[Path, dict[str, str]]) -> None:
    text = keys[0].read_text()
    assert all(token not in text for token in keys[1].values())
    assert keys[0].stat().st_mode & 0o077 == 0, "readable by its owner only"


def test_keys_file_with_an_unknown_field_is_refused_naming_file_key_and_field(
        tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    KeyStore(path).add("alice", "heatmaps")
    document = json.loads(path.read_text())
    document["keys"][0]["comment"] = "ward 4"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError) as raised:
        KeyStore(path).keys()
    message = str(raised.value)
    assert str(path) in message and "key 'alice'" in message and "'comment'" in message


def test_app_with_a_missing_keys_file_does_not_start(make_client: ClientFactory,
                                                     tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="krypton keys add"):
        make_client(keys_file=tmp_path / "absent.json")


class _Authorized:
    """A client that sends one key with every GET (for the polling helpers)."""

    def __init__(self, client: TestClient, token: str) -> None:
        self.client, self.token = client, token

    def get(self, url: str) -> Any:
        return self.client.get(url, headers=_as(self.token))


# ---------------------------------------------------------------- protected mode


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
    ("10.1.2.3", False), ("example.org", False),
])
def test_loopback_is_recognised(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_service_runs_open_on_loopback_without_keys_and_says_so() -> None:
    assert access_mode("127.0.0.1", None, None).startswith("open")


def test_service_refuses_to_listen_beyond_loopback_without_keys() -> None:
    with pytest.raises(PermissionError, match="krypton keys add"):
        access_mode("0.0.0.0", None, None)


@pytest.mark.parametrize(("keys_file", "auth"), [
    pytest.param(Path("keys.json"), None, id="with-keys"),
    pytest.param(None, "none", id="gateway-authenticates"),
])
def test_service_listens_beyond_loopback_with_keys_or_a_stated_gateway(
        keys_file: Path | None, auth: str | None) -> None:
    access_mode("0.0.0.0", keys_file, auth)


def test_serve_beyond_loopback_without_keys_exits_with_how_to_add_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from krypton.service.config import get_settings

    get_settings.cache_clear()
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"])
    get_settings.cache_clear()
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0" in result.output
    assert "krypton keys add" in result.output


def test_keys_command_adds_lists_and_revokes(tmp_path: Path) -> None:
    runner, file = CliRunner(), str(tmp_path / "keys.json")
    added = runner.invoke(cli, ["keys", "add", "cdss", "--scope", "admin", "--file", file])
    assert added.exit_code == 0, added.output
    token = added.stdout.strip().splitlines()[-1]
    assert KeyStore(file).find(token) is not None
    listed = runner.invoke(cli, ["keys", "list", "--file", file])
    assert "cdss" in listed.output and "admin" in listed.output and token not in listed.output
    assert runner.invoke(cli, ["keys", "revoke", "cdss", "--file", file]).exit_code == 0
    assert KeyStore(file).find(token) is None


# ---------------------------------------------------------------- keys revoked


def test_a_key_revoked_and_added_again_under_its_name_sees_none_of_the_old_keys_jobs(
        make_client: ClientFactory, tmp_path: Path, retina_png: bytes) -> None:
    store = KeyStore(tmp_path / "keys.json")
    first = store.add("clinic", "heatmaps")
    client = make_client(keys_file=store.path, embedded_workers=0)
    job = _submit(client, retina_png, first)
    store.revoke("clinic")
    second = store.add("clinic", "heatmaps")
    helpers.assert_problem(client.get(job["links"]["self"], headers=_as(second)), 404)


def _stream_broken_at_first_progress(make_client: ClientFactory, tmp_path: Path,
                                     retina_png: bytes, harm: Callable[[KeyStore], object]
                                     ) -> tuple[list[str], str]:
    """The event names of a queued job's stream whose keys ``harm`` changes once it has
    sent its first progress event, and the data line of its error event."""
    store = KeyStore(tmp_path / "keys.json")
    token = store.add("viewer", "heatmaps")
    client = make_client(keys_file=store.path, embedded_workers=0)  # the job stays queued
    job = _submit(client, retina_png, token)
    events, error = [], ""
    with client.stream("GET", job["links"]["events"], headers=_as(token)) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                events.append(line.split(":", 1)[1].strip())
                if events == ["progress"]:
                    harm(store)
            if line.startswith("data:") and events[-1] == "error":
                error = line
    return events, error


def test_an_event_stream_ends_with_a_401_event_once_its_key_is_revoked(
        make_client: ClientFactory, tmp_path: Path, retina_png: bytes) -> None:
    events, error = _stream_broken_at_first_progress(
        make_client, tmp_path, retina_png, lambda store: store.revoke("viewer"))
    assert events == ["progress", "error"]
    assert '"status":401' in error.replace(" ", "")


def test_an_event_stream_ends_with_a_503_event_once_its_keys_file_is_moved_away(
        make_client: ClientFactory, tmp_path: Path, retina_png: bytes) -> None:
    events, error = _stream_broken_at_first_progress(
        make_client, tmp_path, retina_png,
        lambda store: store.path.rename(tmp_path / "keys.moved"))
    assert events == ["progress", "error"]
    assert "keys-unavailable" in error


def test_a_keys_file_moved_away_while_serving_refuses_every_key_with_503_and_says_so(
        make_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys = KeyStore(tmp_path / "keys.json")
    token = keys.add("alice", "admin")
    client = make_client(keys_file=keys.path)
    keys.path.rename(tmp_path / "keys.moved")  # an operator's slip, while it runs
    with caplog.at_level(logging.WARNING):
        response = client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
    assert helpers.assert_problem(response, 503)["type"] == (
        "urn:krypton:problem:keys-unavailable")
    assert "keys.json" in caplog.text and "missing" in caplog.text


def test_a_keys_file_broken_while_serving_refuses_every_key_with_503_and_logs_no_hash(
        make_client: ClientFactory, tmp_path: Path, retina_png: bytes,
        caplog: pytest.LogCaptureFixture) -> None:
    keys = KeyStore(tmp_path / "keys.json")
    token = keys.add("alice", "heatmaps")
    client = make_client(keys_file=keys.path)
    document = json.loads(keys.path.read_text())
    digest = document["keys"][0]["sha256"]
    document["keys"][0]["sha256"] = digest.upper()  # an operator's slip, while it runs
    keys.path.write_text(json.dumps(document))
    headers = {"Authorization": f"Bearer {token}"}
    with caplog.at_level(logging.DEBUG):
        read = client.get("/v1/models", headers=headers)
        sent = client.post("/v1/heatmaps", headers=headers,
                           files={"image": ("r.png", retina_png, "image/png")})
    for response in (read, sent):
        assert helpers.assert_problem(response, 503)["type"] == (
            "urn:krypton:problem:keys-unavailable")
    assert digest[:16].upper() not in caplog.text and digest[:16] not in caplog.text
