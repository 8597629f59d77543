"""Fixtures for the service: a small deployment, images, apps, and a private Redis server.

Every app is built with ``create_app(Settings(...))`` on a registry written to a
temporary folder (ResNet18 at 64 px, three labels), so a heatmap job takes a
fraction of a second. ``TestClient`` is used as a context manager so the
lifespan runs the embedded worker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from krypton.models.deployment import Deployment, load_deployment
from krypton.service.app import create_app
from krypton.service.config import Settings
from tests.service import helpers

ClientFactory = Callable[..., TestClient]


@pytest.fixture(scope="session", autouse=True)
def _no_krypton_environment() -> Iterator[None]:
    """Settings read ``KRYPTON_*`` and ``REDIS_URL``: a developer's shell must not leak in."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("KRYPTON_") or name == "REDIS_URL":
                patch.delenv(name)
        yield


# ---------------------------------------------------------------- deployment


@pytest.fixture(scope="session")
def service_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service")


@pytest.fixture(scope="session")
def datasets_dir(service_root: Path) -> Path:
    return service_root / "datasets"


@pytest.fixture(scope="session")
def registry(service_root: Path, datasets_dir: Path) -> Path:
    return helpers.write_registry(service_root, datasets_dir=datasets_dir)


@pytest.fixture(scope="session")
def deployment(registry: Path) -> Deployment:
    """The registry as loaded, with the tuned and the stale dataset configs written."""
    loaded = load_deployment(registry)
    weights = loaded.model(helpers.MODEL).weights_id()
    helpers.write_dataset_config(loaded, helpers.TUNED_DATASET, checkpoint=weights)
    helpers.write_dataset_config(loaded, helpers.STALE_DATASET, checkpoint="0f" * 32)
    return loaded


# ---------------------------------------------------------------- images


@pytest.fixture(scope="session")
def retina_png() -> bytes:
    return helpers.encode(helpers.retina_image(), "PNG")


@pytest.fixture(scope="session")
def retina_jpeg() -> bytes:
    return helpers.encode(helpers.retina_image(), "JPEG", quality=90)


@pytest.fixture(scope="session")
def retina_tiff() -> bytes:
    return helpers.encode(helpers.retina_image(), "TIFF")


@pytest.fixture(scope="session")
def grayscale_tiff16() -> bytes:
    return helpers.encode(helpers.microaneurysms_16bit(), "TIFF")


# ---------------------------------------------------------------- apps


@pytest.fixture(scope="session")
def make_settings(registry: Path, datasets_dir: Path, deployment: Deployment
                  ) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return Settings(**{"registry": registry, "datasets_dir": datasets_dir, **overrides})

    return make


@pytest.fixture
def make_client(make_settings: Callable[..., Settings]) -> Iterator[ClientFactory]:
    """Start an app with ``Settings`` overrides; every app is shut down after the test."""
    with contextlib.ExitStack() as stack:
        def make(*, raise_server_exceptions: bool = True, **overrides: Any) -> TestClient:
            app = create_app(make_settings(**overrides))
            return stack.enter_context(
                TestClient(app, raise_server_exceptions=raise_server_exceptions))

        yield make


@pytest.fixture(scope="session")
def api(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    """The embedded service (in-memory queue, one in-process worker), shared by tests."""
    with TestClient(create_app(make_settings())) as client:
        yield client


@pytest.fixture(scope="session")
def idle_api(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    """An embedded service with no worker: jobs stay queued."""
    with TestClient(create_app(make_settings(embedded_workers=0))) as client:
        yield client


# ---------------------------------------------------------------- redis


@pytest.fixture
def unused_port() -> int:
    """A local TCP port nothing listens on (for an unreachable Redis)."""
    return helpers.free_port()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private ``redis-server`` on a free port; its URL. Fails (never skips) without one."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on PATH: install it (e.g. `apt-get install "
                    "redis-server`; the project's test command .ci/run does) to run the "
                    "Redis-mode service tests", pytrace=False)
    folder = tmp_path_factory.mktemp("redis")
    port = helpers.free_port()
    process = start_redis(binary, folder, port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_redis(process)


def start_redis(binary: str, folder: Path, port: int, *,
                persistent: bool = False) -> subprocess.Popen[bytes]:
    """``redis-server`` on ``port``, once it answers PING (the test fails if it never does).

    ``persistent`` runs it as the README does, with its append-only file in
    ``folder``, so a restart on the same folder finds everything it acknowledged.
    """
    log = (folder / "redis.log").open("ab")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes" if persistent else "no",
         "--dir", str(folder)],
        stdout=log, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                pytest.fail(f"redis-server exited with {process.returncode}: "
                            f"{(folder / 'redis.log').read_text(errors='replace')}",
                            pytrace=False)
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    return process
            if time.monotonic() > deadline:
                pytest.fail("redis-server did not answer PING within 20 s", pytrace=False)
            time.sleep(0.02)
    finally:
        client.close()
        log.close()


def stop_redis(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@pytest.fixture
def redis_client(redis_server: str) -> Iterator[redis.Redis]:
    """A client of the private server, emptied before the test."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def redis_url(redis_server: str, redis_client: redis.Redis) -> str:
    """The private server's URL, after FLUSHALL."""
    return redis_server
