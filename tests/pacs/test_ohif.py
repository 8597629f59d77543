"""Krypton's results in OHIF, the viewer a radiologist opens on the PACS.

A real round trip: CT_small goes into the test Orthanc, a real ``krypton serve``
explains it by UIDs and stores its results back into the study, and OHIF
(npm's prebuilt ``@ohif/app``, see tests/pacs/ohif.py) reads that study from
Orthanc in headless Chromium. What it shows is read off its canvas: the CT is
grey, so coloured pixels there are the heatmap's colour map.

The first run downloads OHIF (50 MB) into ``.cache/ohif``; the browser renders
WebGL in software, a few seconds a view.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from tests import dicom_files as files
from tests.pacs import ohif
from tests.pacs.conftest import Orthanc
from tests.pacs.helpers import uids
from tests.service import helpers

pytestmark = pytest.mark.pacs

SOURCE = "CT_small.dcm"
DETAILED = {"patch_size": 16, "stride": 4}
"""13 x 13 positions on the test model's 64-pixel input: a map with some structure."""
VIEW = {"width": 1400, "height": 900}
DRAW_LIMIT_MS = 120_000
"""Software WebGL draws OHIF's first image in about 5 to 10 s; a loaded machine takes more."""

COLOURED_MARGIN = 60
"""A pixel is coloured when its RGB channels spread by more than this (0 to 255):
a grey CT has none, a jet colour map (blue, green, red) nearly only such."""
HEATMAP_PIXELS = 50_000
"""Coloured pixels the Parametric Map must cover on the viewport's canvas, of about
900,000 at :data:`VIEW` (it covers about 200,000: the whole image, in colour where
its values reach the colour map's range)."""
GREY_PIXELS = 100
"""Coloured pixels the CT alone may show (it shows none: grey in, grey out)."""
IMAGE_PIXELS = 300_000
"""Lit pixels once the image is drawn at full size (about 650,000 at :data:`VIEW`;
the viewport draws a small canvas first)."""

CANVAS = "document.querySelector('canvas.cornerstone-canvas')"
COUNT = f"""() => {{
  const canvas = {CANVAS};
  if (!canvas || !canvas.width) return null;
  const copy = document.createElement('canvas');
  copy.width = canvas.width; copy.height = canvas.height;
  const context = copy.getContext('2d');
  context.drawImage(canvas, 0, 0);
  const rgba = context.getImageData(0, 0, copy.width, copy.height).data;
  let coloured = 0, lit = 0;
  for (let i = 0; i < rgba.length; i += 4) {{
    const r = rgba[i], g = rgba[i + 1], b = rgba[i + 2];
    if (Math.max(r, g, b) - Math.min(r, g, b) > {COLOURED_MARGIN}) coloured++;
    if (r + g + b > 30) lit++;
  }}
  return {{coloured, lit, pixels: rgba.length / 4}};
}}"""
"""Pixels of the (first) viewport's canvas: ``coloured`` ones, ``lit`` (not black)
ones, all of them; null before OHIF made the canvas."""

IMAGE_DRAWN = f"() => {{ const c = ({COUNT})(); return !!c && c.lit > {IMAGE_PIXELS}; }}"

PARAMETRIC_MAP_LOADED = """() => {
  const cs = window.cornerstone;
  if (!cs) return false;
  for (const engine of cs.getRenderingEngines())
    for (const viewport of engine.getViewports())
      for (const actor of viewport.getActors())
        if (String(actor.referencedId).startsWith('pmap.')) {
          const volume = cs.cache.getVolume(actor.referencedId);
          return !!(volume && volume.loadStatus && volume.loadStatus.loaded);
        }
  return false;
}"""
"""A viewport has a Parametric Map layer (OHIF names their volumes ``pmap.<id>``), loaded."""

REDRAW = """() => {
  for (const engine of window.cornerstone.getRenderingEngines()) engine.render();
}"""
"""Draw every viewport again, as any interaction (scroll, zoom, window, resize) does.

OHIF 3.13.2 does not always draw the viewport again once the map's volume has
loaded (a race: here 1 load in 8 when opened fresh, up to 1 in 2 when the page
came from another view, showed the CT alone until something redrew it). A user
sees the map at their first touch; the test redraws until it shows instead."""


@dataclass(frozen=True)
class Study:
    """The source CT and what Krypton stored beside it, by role."""

    source: Dataset
    stored: dict[str, dict[str, Any]]

    def series(self, role: str) -> str:
        series: str = self.stored[role]["series_instance_uid"]
        return series


@pytest.fixture(scope="module")
def study(orthanc_server: Orthanc, krypton: httpx.Client) -> Study:
    """CT_small in the (emptied) Orthanc with Krypton's results of one job by UIDs
    (``krypton``: the run's service, from conftest.py).

    Made once for the module: the tests here only read the study.
    """
    orthanc_server.start()
    orthanc_server.empty()
    source = pydicom.dcmread(io.BytesIO(files.shipped(SOURCE)))
    orthanc_server.client().store_instances([source])
    response = krypton.post("/v1/pacs/orthanc/heatmaps", json=uids(source) | DETAILED)
    assert response.status_code == 202, response.text
    job = helpers.wait_for_job(krypton, response.headers["Location"])
    assert job["status"] == "succeeded", job["error"]
    assert job["delivery"]["status"] == "stored", job["delivery"]
    return Study(source, {item["role"]: item for item in job["delivery"]["instances"]})


@pytest.fixture(scope="module")
def viewer(orthanc_server: Orthanc) -> Iterator[ohif.OhifServer]:
    with ohif.serving(orthanc_server.http_port) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=ohif.chromium(),
                                              args=ohif.CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page at :data:`VIEW`, OHIF's onboarding tour marked as seen."""
    context = browser.new_context(viewport=VIEW)
    context.add_init_script(ohif.NO_TOUR)
    yield context.new_page()
    context.close()


def pixels(page: Any) -> dict[str, int] | None:
    count: dict[str, int] | None = page.evaluate(COUNT)
    return count


def wait_for_heatmap(page: Any, timeout_s: float = 30.0) -> dict[str, int] | None:
    """The canvas's pixel counts once :data:`HEATMAP_PIXELS` are coloured, redrawing
    (:data:`REDRAW`) every half second until then, or at the timeout (the caller's
    assertion then says how many there were)."""
    deadline = time.monotonic() + timeout_s
    count = pixels(page)
    while (count is None or count["coloured"] < HEATMAP_PIXELS) and time.monotonic() < deadline:
        page.evaluate(REDRAW)
        page.wait_for_timeout(500)
        count = pixels(page)
    return count


def test_ohif_draws_kryptons_parametric_map_over_the_source_image(
        page: Any, viewer: ohif.OhifServer, study: Study, tmp_path: Path) -> None:
    page.goto(viewer.viewer_url(study.source.StudyInstanceUID, study.source.SeriesInstanceUID))
    page.wait_for_function(IMAGE_DRAWN, timeout=DRAW_LIMIT_MS, polling=250)
    grey = pixels(page)
    page.screenshot(path=str(tmp_path / "ct.png"))

    page.goto(viewer.viewer_url(study.source.StudyInstanceUID, study.series("parametric_map")))
    page.wait_for_function(PARAMETRIC_MAP_LOADED, timeout=DRAW_LIMIT_MS, polling=250)
    heatmap = wait_for_heatmap(page)
    page.screenshot(path=str(tmp_path / "ohif-heatmap.png"))

    assert grey is not None and grey["coloured"] <= GREY_PIXELS, grey
    assert heatmap is not None and heatmap["coloured"] >= HEATMAP_PIXELS, heatmap


def test_ohif_lists_kryptons_results_in_the_study(
        page: Any, viewer: ohif.OhifServer, study: Study) -> None:
    page.goto(viewer.viewer_url(study.source.StudyInstanceUID, study.source.SeriesInstanceUID))
    # OHIF makes the study browser's list from the study's series before it draws one.
    page.wait_for_function(IMAGE_DRAWN, timeout=DRAW_LIMIT_MS, polling=250)
    listed = page.inner_text("body")
    # Each series as its modality (OHIF's name for the Parametric
    # Map's display set: PMAP), then its description.
    assert "PMAP\nKrypton occlusion heatmap" in listed, listed
    assert "OT\nKrypton occlusion overlay" in listed, listed
    assert "SR\nKrypton occlusion report" in listed, listed


SR_ANNOTATIONS = """() => {
  const tools = window.cornerstoneTools;
  if (!tools) return [];
  const seen = new Map();
  for (const a of tools.annotation.state.getAllAnnotations())
    seen.set(a.annotationUID, {tool: a.metadata.toolName, image: a.metadata.referencedImageId,
                               points: a.data.handles.points.length});
  return [...seen.values()];
}"""
"""The annotations OHIF made of the SR's measurement groups (once each: OHIF adds the
same annotation twice, under one UID)."""
VIEWPORT_TEXT = """() => [...document.querySelectorAll('svg text')].map(t => t.textContent)"""


def test_ohif_opens_kryptons_report_over_the_source_image(
        page: Any, viewer: ohif.OhifServer, study: Study, orthanc_server: Orthanc,
        tmp_path: Path) -> None:
    """OHIF draws the report's region, the source CT's outline, over the CT, labelled
    with the group's measurement ("Probability: 0.83 1": value to 2 places, then the
    UCUM unit's code). It does not show the finding: OHIF labels a group with a region
    by its numeric measurements and SNOMED finding sites only."""
    failures: list[str] = []
    page.on("console", lambda message: failures.append(message.text)
            if "Error Boundary" in message.text else None)
    page.on("pageerror", lambda error: failures.append(str(error)))
    page.goto(viewer.viewer_url(study.source.StudyInstanceUID, study.series("report")))
    page.wait_for_function(IMAGE_DRAWN, timeout=DRAW_LIMIT_MS, polling=250)
    page.wait_for_function(f"() => ({SR_ANNOTATIONS})().length > 0", timeout=DRAW_LIMIT_MS,
                           polling=250)
    page.screenshot(path=str(tmp_path / "ohif-report.png"))
    annotations = page.evaluate(SR_ANNOTATIONS)
    labels = [text for text in page.evaluate(VIEWPORT_TEXT) if text.startswith("Probability")]

    assert failures == []
    [annotation] = annotations
    assert annotation["tool"] == "DICOMSRDisplay", annotation
    assert f"/instances/{study.source.SOPInstanceUID}/" in annotation["image"], annotation
    assert annotation["points"] == 5, annotation  # the closed outline: four corners, and back
    report = orthanc_server.client().retrieve_instance(
        study.source.StudyInstanceUID, study.series("report"),
        study.stored["report"]["sop_instance_uid"])
    content = hd.sr.Comprehensive3DSR.from_dataset(report).content
    assert isinstance(content, hd.sr.MeasurementReport)
    [group] = content.get_planar_roi_measurement_groups()
    [probability] = group.get_measurements(name=codes.DCM.Probability)
    assert labels == [f"Probability: {probability.value:.2f} 1"]
