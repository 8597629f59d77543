"""A real Orthanc PACS with its DICOMweb plugin, as a process on free loopback ports.

``orthanc_server`` is one Orthanc for the whole run; ``orthanc`` is the same one,
running and emptied before the test. ``make_orthanc`` starts extra ones with
their own configuration (forwarding, say). ``krypton`` is a running service
with that Orthanc as its PACS. Without the ``Orthanc`` binary the
tests are skipped; the project's test command (.ci/run) installs it with
``orthanc-dicomweb``. What these tests found out is in docs/pacs-notes.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from krypton.benchmarks.orthanc import PLUGIN, Orthanc, orthanc_binary
from tests.pacs.helpers import pacs_registry
from tests.service import helpers

__all__ = ["Orthanc"]

def _binary_or_skip() -> str:
    binary = orthanc_binary()
    if binary is None:
        pytest.skip("Orthanc is not installed (`apt-get install orthanc orthanc-dicomweb`; "
                    "the project's test command .ci/run does)")
    if not PLUGIN.exists():
        pytest.fail(f"Orthanc is installed but not its DICOMweb plugin ({PLUGIN}): "
                    "`apt-get install orthanc-dicomweb`", pytrace=False)
    return binary


@pytest.fixture(scope="session")
def orthanc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One Orthanc for the run, in a throwaway folder; stopped at the end."""
    server = Orthanc(_binary_or_skip(), tmp_path_factory.mktemp("orthanc"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def orthanc(orthanc_server: Orthanc) -> Orthanc:
    """The run's Orthanc, running (a test before may have stopped it) and emptied."""
    orthanc_server.start()
    orthanc_server.empty()
    return orthanc_server


@pytest.fixture
def make_orthanc(tmp_path_factory: pytest.TempPathFactory,
                 ) -> Iterator[Callable[[dict[str, Any]], Orthanc]]:
    """Start further Orthancs with settings merged over the default; killed after the test."""
    binary = _binary_or_skip()
    made: list[Orthanc] = []

    def make(extra_config: dict[str, Any]) -> Orthanc:
        server = Orthanc(binary, tmp_path_factory.mktemp("orthanc-extra"), extra_config)
        made.append(server)
        server.start()
        return server

    yield make
    for server in made:
        server.stop(kill=True)


@pytest.fixture(scope="session")
def krypton_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the ``krypton`` service keeps its registry and its log, ``serve.log``."""
    return tmp_path_factory.mktemp("krypton-pacs")


@pytest.fixture(scope="session")
def krypton(orthanc_server: Orthanc, krypton_folder: Path) -> Iterator[httpx.Client]:
    """``krypton serve`` (embedded, running open on loopback) with the run's Orthanc as its
    PACS ``orthanc``; a failed delivery is retried 3 times, 0.2 s apart at first, each
    request given 2 s."""
    folder = krypton_folder
    with helpers.serving(pacs_registry(folder, orthanc_server), log=folder / "serve.log",
                         KRYPTON_DELIVERY_ATTEMPTS="3",
                         KRYPTON_DELIVERY_BACKOFF_SECONDS="0.2",
                         KRYPTON_PACS_TIMEOUT_SECONDS="2") as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        yield client
