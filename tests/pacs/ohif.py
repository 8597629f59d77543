"""OHIF, the web DICOM viewer radiologists use, served locally over the test Orthanc.

``ohif_dist()`` is OHIF's prebuilt app, the one npm publishes, cached in the
repository's ``.cache/`` (downloaded once). ``OhifServer`` serves it as a
deployment would: the app, its ``app-config.js`` (:data:`APP_CONFIG`, a
DICOMweb data source), and Orthanc's DICOMweb behind the same origin.
``chromium()`` and :data:`CHROMIUM_FLAGS` launch a headless Chromium whose
WebGL (software, SwiftShader) is good enough for OHIF's renderer.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import http.server
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import cast
from urllib.parse import urlsplit

import pytest

OHIF_VERSION = "3.13.2"
ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "ohif" / OHIF_VERSION
"""Where the unpacked npm package lives: ``package/dist`` is the app (ignored by git)."""
UNNEEDED = ("package/dist/ort/", "package/dist/dicom-microscopy-viewer/")
"""Parts of the package a CT viewer never loads: ONNX runtime for AI segmentation
(136 MB) and the whole-slide microscopy viewer. Not extracted."""

APP_CONFIG = """\
/** OHIF config written by Krypton's tests: Orthanc's DICOMweb, proxied on this origin. */
window.config = {
  routerBasename: null,
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: false,
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  showErrorDetails: 'always',
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Test Orthanc (DICOMweb)',
        name: 'orthanc',
        wadoUriRoot: window.location.origin + '/wado',
        qidoRoot: window.location.origin + '/dicom-web',
        wadoRoot: window.location.origin + '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"""
"""Served at ``/app-config.js`` in place of the package's demo config (which reads
public demo servers). The data source's roots are this origin: see :class:`OhifServer`."""

CHROMIUM_FLAGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                  "--ignore-gpu-blocklist", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
"""Headless Chromium with WebGL 2 on the CPU: OHIF's renderer (cornerstone3D) needs
WebGL, and a test machine has no GPU; SwiftShader is slow (seconds a frame) but exact."""

NO_TOUR = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"
"""An init script for each page: OHIF's onboarding tour counts as seen, so it never
covers the viewport (OHIF keeps the tours it showed in this localStorage key)."""


def chromium() -> str:
    """Debian's Chromium, as tests/service/test_viewer.py finds it."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.fail("Chromium is not installed: the test command installs Debian's chromium "
                "(`apt-get install chromium`)", pytrace=False)


def ohif_dist() -> Path:
    """OHIF's built app (``index.html`` and its bundles), from npm once, then the cache.

    ``npm pack`` fetches the published ``@ohif/app`` tarball (50 MB, checked by npm
    against the registry's integrity hash) without installing anything. It is
    unpacked into a temporary folder beside the cache and renamed into place, so an
    interrupted download leaves no half-filled cache; the tarball is then deleted.
    """
    dist = CACHE / "package" / "dist"
    if (dist / "index.html").is_file():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed: the test command installs it (`apt-get install npm`) "
                    f"to fetch OHIF {OHIF_VERSION} once into {CACHE}", pytrace=False)
    CACHE.mkdir(parents=True, exist_ok=True)
    for left in CACHE.glob(".download-*"):  # by a run killed mid-way, an hour ago or more
        if time.time() - left.stat().st_mtime > 3600:
            shutil.rmtree(left, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".download-") as work:
        folder = Path(work)
        packed = subprocess.run([npm, "pack", f"@ohif/app@{OHIF_VERSION}"], cwd=folder,
                                capture_output=True, text=True, timeout=600, check=False)
        tarballs = list(folder.glob("*.tgz"))
        if packed.returncode != 0 or len(tarballs) != 1:
            pytest.fail(f"`npm pack @ohif/app@{OHIF_VERSION}` failed ({packed.returncode}):\n"
                        f"{packed.stderr[-4000:]}", pytrace=False)
        with tarfile.open(tarballs[0]) as archive:
            wanted = [member for member in archive.getmembers()
                      if member.name.startswith("package/dist/")
                      and not member.name.startswith(UNNEEDED)]
            archive.extractall(folder, members=wanted, filter="data")
        tarballs[0].unlink()
        if not (folder / "package" / "dist" / "index.html").is_file():
            pytest.fail(f"@ohif/app@{OHIF_VERSION} has no package/dist/index.html", pytrace=False)
        if (CACHE / "package").exists():  # left by hand, or by a run racing this one
            shutil.rmtree(CACHE / "package")
        os.replace(folder / "package", CACHE / "package")
    return dist


PROXIED = ("/dicom-web/", "/wado")
"""Paths that are Orthanc's (DICOMweb, and WADO-URI that some OHIF paths use)."""
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade"}
"""Headers about one connection, not the message: a proxy must not pass them on."""


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    """A browser holds keep-alive connections open: their threads must not block stop()."""

    def __init__(self, address: tuple[str, int], dist: Path, orthanc_port: int) -> None:
        handler = functools.partial(_Handler, directory=str(dist))
        super().__init__(address, handler)
        self.orthanc_port = orthanc_port


class _Handler(http.server.SimpleHTTPRequestHandler):
    """The app's files, the config, and a pass-through to Orthanc for ``PROXIED``."""

    protocol_version = "HTTP/1.1"
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".js": "text/javascript", ".mjs": "text/javascript",
                      ".wasm": "application/wasm"}
    """Browsers compile WebAssembly streaming only when served as application/wasm."""

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a viewer load is hundreds of requests."""

    def end_headers(self) -> None:
        """Every answer cross-origin isolated: cornerstone3D decodes and builds volumes
        in web workers over SharedArrayBuffer, which browsers only allow to a page
        served with COOP ``same-origin`` and COEP ``require-corp``; COEP then needs
        every subresource to opt in, hence CORP on all of them (proxied ones too)."""
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        super().end_headers()

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith(PROXIED):
            self._proxy()
        elif path == "/app-config.js":
            self._send_config()
        else:
            if not os.path.isfile(self.translate_path(self.path)):
                # OHIF is a single-page app: /viewer, /?... are routes of index.html.
                self.path = "/index.html"
            super().do_GET()

    def do_HEAD(self) -> None:
        if urlsplit(self.path).path.startswith(PROXIED):
            self._proxy()
        else:
            super().do_HEAD()

    def do_POST(self) -> None:
        self._proxy()

    do_PUT = do_DELETE = do_POST

    def _send_config(self) -> None:
        body = APP_CONFIG.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/javascript")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _proxy(self) -> None:
        """Pass the request to Orthanc and its answer back, on the page's own origin.

        Same origin, so the browser needs no CORS from Orthanc (which sends none).
        The ``Host`` header goes through unchanged: Orthanc writes the BulkDataURIs
        in its metadata from it, so they point back at this proxy, not at Orthanc.
        """
        port = cast(_Server, self.server).orthanc_port
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {key: value for key, value in self.headers.items()
                   if key.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        except OSError as exc:
            self.send_error(502, f"Orthanc on port {port}: {exc}")
            return
        finally:
            upstream.close()
        self.send_response(answer.status, answer.reason)
        for key, value in answer.getheaders():
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class OhifServer:
    """OHIF's app at ``url``, reading studies from the Orthanc on ``orthanc_port``.

    One origin serves the app and Orthanc's DICOMweb (``/dicom-web/...``), as a
    reverse proxy does in a real deployment. Threads in this process: start() and
    stop(), or ``with OhifServer(...) as server``.
    """

    def __init__(self, dist: Path, orthanc_port: int) -> None:
        self._server = _Server(("127.0.0.1", 0), dist, orthanc_port)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="ohif-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def viewer_url(self, study: str, series: str | None = None) -> str:
        """The viewer on ``study``, showing ``series`` first (else OHIF's own choice)."""
        url = f"{self.url}/viewer?StudyInstanceUIDs={study}"
        return f"{url}&initialSeriesInstanceUID={series}" if series else url

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> OhifServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


@contextlib.contextmanager
def serving(orthanc_port: int) -> Iterator[OhifServer]:
    """The cached (or freshly fetched) OHIF, served over the Orthanc on ``orthanc_port``."""
    with OhifServer(ohif_dist(), orthanc_port) as server:
        yield server
