"""No DICOM tag value reaches a log, at any level, on any DICOM path; a bad header value
never makes a 500.

A real ``krypton serve`` logs at DEBUG to a file while DICOM files whose
every text, date and name attribute holds a marker go through every route
that reads DICOM: heatmaps and their results (PNG, JSON, NPY, DICOM, events),
prediction, tuning, multi-frame files, and the refusals (a missing frame, an
unreadable file, an unknown transfer syntax, an unsupported photometric
interpretation). Afterwards no marker may appear in the log.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset

from krypton.benchmarks import samples
from tests import dicom_files as files
from tests.service import helpers
from tests.service.helpers import FAST

MARK, BAD_DATE = samples.MARK, samples.BAD_DATE
QUERY_SECRET = "kr_QUERYSECRET0123456789"
"""A key a client put in the URL, where Krypton never reads one."""
_marked = samples.marked


def _with(data: bytes, **attributes: str) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def log_of_every_dicom_path(registry: Path, tmp_path_factory: pytest.TempPathFactory
                            ) -> Iterator[tuple[str, dict[str, int]]]:
    """The server's log once every path ran, and the status each request got."""
    folder = tmp_path_factory.mktemp("phi")
    log = folder / "serve.log"
    single = _marked(files.build(files.example_pixels(), "RGB"))
    multi = _marked(files.shipped("examples_ybr_color.dcm"))
    statuses: dict[str, int] = {}
    with helpers.serving(registry, log=log, KRYPTON_LOG_LEVEL="DEBUG",
                         KRYPTON_DATASETS_DIR=str(folder / "datasets")) as url, \
            httpx.Client(base_url=url, timeout=120) as client:

        def post(name: str, route: str, data: bytes, **fields: str) -> httpx.Response:
            response = client.post(route, files={"image": ("scan.dcm", data)},
                                   data=fields, headers={"Prefer": "wait=60"})
            statuses[name] = response.status_code
            return response

        job = post("heatmap", "/v1/heatmaps", single, **FAST).json()
        for link in ("self", "png", "json", "npy", "overlay_png", "dcm", "overlay_dcm",
                     "events"):
            statuses[link] = client.get(job["links"][link]).status_code
        statuses["query"] = client.get(job["links"]["png"],
                                       params={"api_key": QUERY_SECRET}).status_code
        post("predict", "/v1/predict", single)
        frame = post("frame", "/v1/heatmaps", multi, frame="2", **FAST).json()
        statuses["frame.dcm"] = client.get(f"/v1/heatmaps/{frame['id']}/heatmap.dcm"
                                           ).status_code
        post("no frame", "/v1/heatmaps", multi, **FAST)
        post("truncated", "/v1/heatmaps", single[: len(single) - 5000], **FAST)
        post("transfer syntax", "/v1/heatmaps",
             files.with_transfer_syntax(_marked(files.shipped("MR_small_RLE.dcm")),
                                        "1.2.840.10008.1.2.4.100"), **FAST)
        post("photometric", "/v1/heatmaps",
             _with(single, PhotometricInterpretation=f"{MARK}PHOTO"), **FAST)
        tuning = client.post(f"/v1/datasets/{helpers.TUNING_DATASET}/tuning",
                             files=[("images", ("a.dcm", single)), ("images", ("b.dcm", single))],
                             data={"patch_size": "16", "stride": "16"})
        statuses["tuning"] = tuning.status_code
        if tuning.status_code == 202:
            helpers.wait_for_job(client, tuning.headers["Location"], timeout=300)
        yield log.read_text(errors="replace"), statuses


def test_every_dicom_path_ran(log_of_every_dicom_path: tuple[str, dict[str, int]]) -> None:
    _, statuses = log_of_every_dicom_path
    assert statuses == {
        "heatmap": 200, "self": 200, "png": 200, "json": 200, "npy": 200, "dcm": 200,
        "overlay_dcm": 200, "events": 200, "overlay_png": 200, "predict": 200, "frame": 200,
        "frame.dcm": 409, "no frame": 422, "truncated": 422, "transfer syntax": 415,
        "photometric": 422, "tuning": 202, "query": 200}


def test_no_tag_value_reaches_the_log_at_any_level(
        log_of_every_dicom_path: tuple[str, dict[str, int]]) -> None:
    log, _ = log_of_every_dicom_path
    assert "DEBUG" in log, "the server logged at DEBUG"
    leaks = [line for line in log.splitlines() if MARK in line or BAD_DATE in line]
    assert leaks == [], "\n".join(leaks[:20])


def test_a_dicom_result_of_a_source_with_an_invalid_date_leaves_the_date_out(
        api: TestClient) -> None:
    data = _marked(files.build(files.example_pixels(), "RGB"))
    job = helpers.finished(api, data, **FAST)
    response = api.get(job["links"]["dcm"])
    assert response.status_code == 200, response.text
    assert "PatientBirthDate" in response.headers["Krypton-Dropped-Attributes"]
    document = pydicom.dcmread(io.BytesIO(response.content))
    assert document.PatientBirthDate == "" and document.PatientID == f"{MARK}01"


def test_an_invalid_value_outside_the_patient_module_is_dropped_from_results(
        api: TestClient) -> None:
    data = _with(files.build(files.example_pixels(), "RGB"), ContentDate=BAD_DATE)
    job = helpers.finished(api, data, **FAST)
    response = api.get(job["links"]["overlay_dcm"])
    assert response.status_code == 200, response.text
    assert response.headers["Krypton-Dropped-Attributes"] == "ContentDate"
    document: Dataset = pydicom.dcmread(io.BytesIO(response.content))
    assert "ContentDate" not in document or document.ContentDate != BAD_DATE
    assert np.ptp(document.pixel_array) > 0


@pytest.mark.parametrize("link", ["dcm", "overlay_dcm"])
@pytest.mark.parametrize("sex", ["U", "X"])
def test_a_patient_sex_outside_m_f_o_is_left_out_of_results(api: TestClient, link: str,
                                                            sex: str) -> None:
    # "U" is valid CS and common in hospital files, but the result IODs allow M, F and O.
    job = helpers.finished(api, _with(files.build(files.example_pixels(), "RGB"),
                                      PatientSex=sex), **FAST)
    response = api.get(job["links"][link])
    assert response.status_code == 200, response.text
    assert response.headers["Krypton-Dropped-Attributes"] == "PatientSex"
    assert pydicom.dcmread(io.BytesIO(response.content)).PatientSex == ""


def test_the_access_log_keeps_a_query_strings_names_and_withholds_its_values(
        log_of_every_dicom_path: tuple[str, dict[str, int]]) -> None:
    log, statuses = log_of_every_dicom_path
    assert statuses["query"] == 200
    assert "api_key=" in log
    assert QUERY_SECRET not in log
