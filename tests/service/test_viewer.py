"""The viewer page in a real headless browser (Debian's Chromium, driven by Playwright).

The page is served by ``krypton serve``; it must load nothing from outside
the service, and show what the API says.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from fastapi.testclient import TestClient

from tests import dicom_files
from tests.service import helpers

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.fail("Chromium is not installed: the test command installs Debian's chromium "
                "(`apt-get install chromium`)", pytrace=False)


def _wait_for(page: Any, expression: str, timeout: float = 60.0) -> None:
    """Poll ``expression`` from outside the page: the viewer's Content-Security-Policy
    forbids the in-page eval that Playwright's wait_for_function needs."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(50)


@pytest.fixture(scope="module")
def served(registry: Path) -> Iterator[str]:
    with helpers.serving(registry) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


def _record(hosts: set[str], url: str) -> None:
    """The host of every request over the network (``blob:`` and ``data:`` stay local)."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https", "ws", "wss"):
        hosts.add(parsed.netloc)


@pytest.mark.parametrize("path", ["/", "/docs", "/redoc"])
def test_pages_reference_no_outside_host(api: TestClient, path: str) -> None:
    page = api.get(path)
    assert page.status_code == 200
    references = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)', page.text)
    references += re.findall(r'(?:url|Url)\s*:\s*["\']([^"\']+)', page.text)
    assert references, "the page loads scripts and styles"
    assert [ref for ref in references if urlparse(ref).netloc] == []


def test_the_viewer_cannot_be_framed_or_load_scripts_from_elsewhere(api: TestClient) -> None:
    response = api.get("/")
    assert response.headers["x-frame-options"] == "DENY"
    policy = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"


def test_job_documents_and_results_are_never_cached(api: TestClient, retina_png: bytes) -> None:
    job = helpers.finished(api, retina_png, **helpers.FAST)
    for url in (job["links"]["self"], job["links"]["png"], job["links"]["json"]):
        response = api.get(url)
        assert response.status_code == 200, url
        assert response.headers["cache-control"] == "no-store", url


def test_viewer_explains_an_image_as_the_api_does(browser: Any, served: str,
                                                  tmp_path: Path) -> None:
    page = browser.new_page()
    hosts: set[str] = set()
    page.on("request", lambda request: _record(hosts, request.url))
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text)
            if "Content Security Policy" in message.text else None)
    page.goto(served)
    _wait_for(page, "document.querySelectorAll('#model option').length > 0")
    page.select_option("#model", helpers.MODEL)
    page.fill("#stride", "16")
    page.set_input_files("#image", str(ROOT / "examples" / "retina.jpg"))
    page.click("#explain")
    page.wait_for_selector("#result[data-done='true']", timeout=120_000)
    _wait_for(page, "document.getElementById('overlay').naturalWidth > 0")
    assert refused == [], "the viewer breaks its own Content-Security-Policy"

    job_id = page.inner_text("#job-id")
    job = httpx.get(f"{served}/v1/heatmaps/{job_id}").json()
    prediction = job["prediction"]
    shown = page.inner_text("#prediction")
    assert f"Predicted {prediction['predicted_label']}" in shown
    assert f"p = {prediction['predicted_probability']:.3f}" in shown
    heatmap = httpx.get(f"{served}{job['links']['json']}", params={"view": "drop"}).json()
    assert page.inner_text("#high") == f"{heatmap['max']:.3f}"
    assert page.eval_on_selector("#overlay", "image => image.naturalWidth") == 512

    page.fill("#opacity", "0.9")
    page.dispatch_event("#opacity", "input")
    page.wait_for_timeout(500)
    page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)
    assert (tmp_path / "viewer.png").stat().st_size > 10_000
    assert hosts == {urlparse(served).netloc}, "everything came from the service"


def _explain(page: Any, image: Path, **fields: str) -> None:
    """Fill the form, press Explain and wait until the overlay is drawn."""
    page.select_option("#model", helpers.MODEL)
    page.fill("#stride", "16")
    page.fill("#frame", fields.get("frame", ""))
    page.set_input_files("#image", str(image))
    page.click("#explain")
    page.wait_for_selector("#result[data-done='true']", timeout=120_000)
    _wait_for(page, "document.getElementById('overlay').naturalWidth > 0")


@pytest.fixture
def viewer(browser: Any, served: str) -> Iterator[Any]:
    page = browser.new_page()
    page.goto(served)
    _wait_for(page, "document.querySelectorAll('#model option').length > 0")
    yield page
    page.close()


def test_a_finished_job_shows_its_overlay_and_no_partial_map(viewer: Any, tmp_path: Path
                                                             ) -> None:
    _explain(viewer, ROOT / "examples" / "retina.jpg")
    assert viewer.is_visible("#overlay") and viewer.is_hidden("#partial")


def test_the_next_job_starts_without_the_last_ones_pictures(viewer: Any) -> None:
    _explain(viewer, ROOT / "examples" / "retina.jpg")
    viewer.click("#explain")
    _wait_for(viewer, "!document.getElementById('result').dataset.done")
    assert viewer.is_hidden("#overlay") and viewer.inner_text("#prediction") == ""
    viewer.wait_for_selector("#result[data-done='true']", timeout=120_000)


def test_a_small_image_is_shown_at_a_readable_size(viewer: Any, tmp_path: Path) -> None:
    small = tmp_path / "mr.dcm"
    small.write_bytes(dicom_files.shipped("MR_small.dcm"))  # 64 x 64 pixels
    _explain(viewer, small)
    assert viewer.eval_on_selector("#overlay", "image => image.naturalWidth") == 64
    assert viewer.eval_on_selector("#overlay", "image => image.clientWidth") >= 384


@pytest.mark.parametrize(("name", "frame", "offered"), [
    pytest.param("CT_small.dcm", "", True, id="single-frame"),
    pytest.param("examples_ybr_color.dcm", "2", False, id="multi-frame"),
])
def test_dicom_downloads_are_offered_where_the_job_makes_them(
        viewer: Any, tmp_path: Path, name: str, frame: str, offered: bool) -> None:
    path = tmp_path / name
    path.write_bytes(dicom_files.shipped(name))
    _explain(viewer, path, frame=frame)
    for button in ("[data-format=dcm]", "[data-format=overlay_dcm]"):
        assert viewer.is_visible(button) is offered


def test_the_form_row_fits_the_form(viewer: Any) -> None:
    form = viewer.eval_on_selector("#request", "f => f.getBoundingClientRect().right")
    for field in ("#patch_size", "#stride", "#frame"):
        right = viewer.eval_on_selector(field, "f => f.getBoundingClientRect().right")
        assert right <= form + 0.5, field


def test_docs_page_renders_the_api_without_the_internet(browser: Any, served: str) -> None:
    page = browser.new_page()
    hosts: set[str] = set()
    page.on("request", lambda request: _record(hosts, request.url))
    page.goto(f"{served}/docs")
    page.wait_for_selector(".opblock", timeout=60_000)
    assert page.locator(".opblock").count() >= 10
    assert hosts == {urlparse(served).netloc}
