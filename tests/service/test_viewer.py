"""The viewer page in a real headless browser (Debian's Chromium, driven by Playwright).

The page is served by ``krypton serve``; it must load nothing from outside
the service, and show what the API says.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from fastapi.testclient import TestClient

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


def test_viewer_explains_an_image_as_the_api_does(browser: Any, served: str,
                                                  tmp_path: Path) -> None:
    page = browser.new_page()
    hosts: set[str] = set()
    page.on("request", lambda request: _record(hosts, request.url))
    page.goto(served)
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    page.select_option("#model", helpers.MODEL)
    page.fill("#stride", "16")
    page.set_input_files("#image", str(ROOT / "examples" / "retina.jpg"))
    page.click("#explain")
    page.wait_for_selector("#result[data-done='true']", timeout=120_000)
    page.wait_for_function("document.getElementById('overlay').naturalWidth > 0")

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


def test_docs_page_renders_the_api_without_the_internet(browser: Any, served: str) -> None:
    page = browser.new_page()
    hosts: set[str] = set()
    page.on("request", lambda request: _record(hosts, request.url))
    page.goto(f"{served}/docs")
    page.wait_for_selector(".opblock", timeout=60_000)
    assert page.locator(".opblock").count() >= 10
    assert hosts == {urlparse(served).netloc}
