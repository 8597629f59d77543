"""A real Orthanc PACS with its DICOMweb plugin, as a process on free loopback ports.

The PACS tests (``tests/pacs``) and the PACS round-trip benchmark run the same
Orthanc: Debian's ``orthanc`` and ``orthanc-dicomweb`` packages, a generated
configuration in a throwaway folder, and a client without retries. What it
does over DICOMweb is in docs/pacs-notes.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import requests
from dicomweb_client import DICOMwebClient

__all__ = ["PLUGIN", "Orthanc", "free_port", "orthanc_binary"]


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
"""Where Debian's ``orthanc-dicomweb`` puts the plugin (a link to the versioned file)."""

STARTUP_LIMIT_S = 30.0


def orthanc_binary() -> str | None:
    """The ``Orthanc`` executable: Debian installs it in /usr/sbin, off some users' PATH."""
    found = shutil.which("Orthanc")
    if found is None and os.access("/usr/sbin/Orthanc", os.X_OK):
        found = "/usr/sbin/Orthanc"
    return found


class Orthanc:
    """One Orthanc process over a folder: its generated config, log and storage.

    ``stop()`` and ``start()`` keep the ports and the storage, so a test can take
    the PACS away mid-way and bring it back with its data.
    """

    def __init__(self, binary: str, folder: Path, extra_config: dict[str, Any] | None = None,
                 ) -> None:
        self.binary = binary
        self.folder = folder
        self.storage = folder / "storage"
        self.config_path = folder / "orthanc.json"
        self.log_path = folder / "orthanc.log"
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.config: dict[str, Any] = {
            "Name": "krypton-tests",
            "StorageDirectory": str(self.storage),
            "IndexDirectory": str(self.storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            # Orthanc has no bind address: it listens on every interface, and this
            # refuses HTTP clients other than the loopback.
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [str(PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        for key, value in (extra_config or {}).items():
            if isinstance(value, dict) and isinstance(self.config.get(key), dict):
                self.config[key] = {**self.config[key], **value}
            else:
                self.config[key] = value
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.process: subprocess.Popen[bytes] | None = None
        self.started_in_s: float | None = None
        """Seconds from launching the process to its first answer to ``GET /system``."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, **options: Any) -> DICOMwebClient:
        """A DICOMweb client of this Orthanc that fails at once: no retries.

        dicomweb-client's default retries every failed request, a refused
        connection included, 5 times over about 30 s before raising.
        """
        client = DICOMwebClient(self.dicomweb_url, **options)
        client.set_http_retry_params(retry=False)
        return client

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        """Launch Orthanc and return once ``GET /system`` answers; fails the test if not."""
        if self.running:
            return
        self.storage.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([self.binary, str(self.config_path)],
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = began + STARTUP_LIMIT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode} while "
                                   f"starting:\n{self.log()[-4000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/system", timeout=1).ok:
                    self.started_in_s = time.monotonic() - began
                    return
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise RuntimeError(f"Orthanc did not answer GET /system within "
                                   f"{STARTUP_LIMIT_S:.0f} s:\n{self.log()[-4000:]}")
            time.sleep(0.02)

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM, and wait (about 3 s here); or ``kill``: SIGKILL, a crash, at once."""
        if self.process is None:
            return
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def freeze(self) -> None:
        """SIGSTOP: the ports still accept connections, nothing answers (a hung PACS)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def rest(self, method: str, path: str, **options: Any) -> requests.Response:
        """A call on Orthanc's own REST API (not DICOMweb), raising on an error status."""
        response = requests.request(method, f"{self.url}{path}", timeout=10, **options)
        response.raise_for_status()
        return response

    def empty(self) -> None:
        """Delete every patient, hence every study, series and instance."""
        for patient in self.rest("GET", "/patients").json():
            self.rest("DELETE", f"/patients/{patient}")
