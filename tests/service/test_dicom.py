"""DICOM through the API: in as an upload, out as a Parametric Map and a Secondary Capture."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.data import get_testdata_files

from krypton import render
from tests import dicom_files as files
from tests.service import helpers
from tests.service.helpers import FAST


def _submit(client: TestClient, data: bytes, **fields: str) -> Any:
    return client.post("/v1/heatmaps", files={"image": ("scan.dcm", data, "application/dicom")},
                       data={**FAST, **fields})


def _finished(client: TestClient, data: bytes, **fields: str) -> dict[str, Any]:
    response = _submit(client, data, **fields)
    assert response.status_code == 202, response.text
    job = helpers.wait_for_job(client, response.headers["Location"])
    assert job["status"] == "succeeded", job["error"]
    return job


@pytest.fixture(scope="module")
def rgb_pixels() -> np.ndarray:
    return files.example_pixels()


@pytest.fixture(scope="module")
def dicom_job(api: TestClient, rgb_pixels: np.ndarray) -> dict[str, Any]:
    return _finished(api, files.build(rgb_pixels, "RGB"))


def _npy(client: TestClient, job: dict[str, Any]) -> np.ndarray:
    return np.load(io.BytesIO(client.get(job["links"]["npy"]).content))


def _dataset(client: TestClient, url: str) -> pydicom.Dataset:
    response = client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    return pydicom.dcmread(io.BytesIO(response.content))


# ---------------------------------------------------------------- in


def test_heatmap_of_a_dicom_equals_the_heatmap_of_the_same_pixels_as_png(
        api: TestClient, dicom_job: dict[str, Any], rgb_pixels: np.ndarray) -> None:
    png_job = helpers.finished(api, files.png_of(rgb_pixels), **FAST)
    np.testing.assert_array_equal(_npy(api, dicom_job), _npy(api, png_job))
    assert dicom_job["dicom"] is True and png_job["dicom"] is False


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "SC_rgb_jpeg_dcmtk.dcm"])
def test_shipped_dicom_files_get_a_heatmap(api: TestClient, name: str) -> None:
    _finished(api, files.shipped(name))


def _image_of(client: TestClient, job: dict[str, Any]) -> np.ndarray:
    """The overlay at opacity 0: the source image as the service draws it."""
    response = client.get(job["links"]["overlay_png"] + "&alpha=0")
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("L"), dtype=np.float64)


def test_a_ct_without_a_window_is_drawn_and_explained_in_its_own_range(api: TestClient) -> None:
    job = _finished(api, files.shipped("CT_small.dcm"))
    assert job["window"]["source"] == "image" and job["window"]["width"] > 1
    # The full range of 16 bits drew CT_small as uniform gray (a deviation near 1.5 of 255).
    assert _image_of(api, job).std() > 40


def test_a_models_own_window_is_applied_and_recorded(api: TestClient) -> None:
    job = _finished(api, files.shipped("CT_small.dcm"), model=helpers.DEMO_MODEL)
    center, width = helpers.DEMO_WINDOW
    assert job["window"] == {"source": "model", "center": center, "width": width}
    # Hounsfield units: air (-1000) is below the soft-tissue window and reads black.
    assert _image_of(api, job).min() == 0


def test_a_colour_image_records_no_window(dicom_job: dict[str, Any]) -> None:
    assert dicom_job["window"] is None


def test_multi_frame_dicom_without_a_frame_is_refused(api: TestClient) -> None:
    response = _submit(api, files.shipped("examples_ybr_color.dcm"))
    assert "frame=1..30" in helpers.assert_problem(response, 422)["detail"]


def test_multi_frame_dicom_with_a_frame_gets_a_heatmap(api: TestClient) -> None:
    job = _finished(api, files.shipped("examples_ybr_color.dcm"), frame="3")
    assert job["params"]["frame"] == 3


def test_dicom_in_a_transfer_syntax_nothing_decodes_answers_415_naming_it(
        api: TestClient) -> None:
    mpeg2 = "1.2.840.10008.1.2.4.100"
    data = files.with_transfer_syntax(files.shipped("MR_small_RLE.dcm"), mpeg2)
    assert mpeg2 in helpers.assert_problem(_submit(api, data), 415)["detail"]


def test_patient_data_stays_out_of_job_results_and_logs(
        api: TestClient, rgb_pixels: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    job = _finished(api, files.build(rgb_pixels, "RGB"))
    seen = [api.get(job["links"]["self"]).text, api.get(job["links"]["json"]).text,
            caplog.text]
    for text in seen:
        assert files.PATIENT_ID not in text and "Doe" not in text


# ---------------------------------------------------------------- out


def test_parametric_map_holds_the_heatmap_on_the_source_grid_in_its_study(
        api: TestClient, dicom_job: dict[str, Any], rgb_pixels: np.ndarray) -> None:
    source = pydicom.dcmread(io.BytesIO(files.build(rgb_pixels, "RGB")))
    parametric = _dataset(api, dicom_job["links"]["dcm"])
    assert parametric.SOPClassUID.name == "Parametric Map Storage"
    assert (parametric.Rows, parametric.Columns) == rgb_pixels.shape[:2]
    assert (parametric.PatientID, str(parametric.PatientName)) == (
        files.PATIENT_ID, files.PATIENT_NAME)
    values = hd.pm.ParametricMap.from_dataset(parametric).pixel_array
    drop = np.load(io.BytesIO(api.get(dicom_job["links"]["npy"],
                                      params={"view": "drop"}).content))
    geometry = render.HeatmapGeometry(16, 16, 64, 64)
    expected = render.resample_to_image(drop, geometry, *rgb_pixels.shape[:2])
    np.testing.assert_allclose(np.squeeze(values), expected, atol=1e-6)
    assert parametric.SeriesInstanceUID != source.SeriesInstanceUID


def test_dicom_results_stay_in_the_source_study_with_new_uids(
        api: TestClient, rgb_pixels: np.ndarray) -> None:
    data = files.build(rgb_pixels, "RGB")
    source = pydicom.dcmread(io.BytesIO(data))
    job = _finished(api, data)
    for url in (job["links"]["dcm"], job["links"]["overlay_dcm"]):
        document = _dataset(api, url)
        assert document.StudyInstanceUID == source.StudyInstanceUID
        assert document.SeriesInstanceUID != source.SeriesInstanceUID
        assert document.SOPInstanceUID != source.SOPInstanceUID
        assert source.SOPInstanceUID in str(document), "references the source image"


def test_overlay_is_a_colour_secondary_capture(api: TestClient,
                                               dicom_job: dict[str, Any]) -> None:
    capture = _dataset(api, dicom_job["links"]["overlay_dcm"])
    assert capture.SOPClassUID.name == "Secondary Capture Image Storage"
    assert capture.PhotometricInterpretation == "RGB"
    assert capture.pixel_array.shape[2] == 3 and np.ptp(capture.pixel_array) > 0


@pytest.mark.parametrize("route", ["heatmap.dcm", "overlay.dcm"])
def test_dicom_results_of_non_dicom_input_answer_409_saying_why(
        api: TestClient, retina_png: bytes, route: str) -> None:
    job = helpers.finished(api, retina_png, **FAST)
    problem = helpers.assert_problem(api.get(f"/v1/heatmaps/{job['id']}/{route}"), 409)
    assert "DICOM input only" in problem["detail"]


@pytest.mark.parametrize("link", ["dcm", "overlay_dcm"])
def test_dicom_results_pass_the_dciodvfy_iod_validator(
        api: TestClient, dicom_job: dict[str, Any], tmp_path: Path, link: str) -> None:
    path = tmp_path / "result.dcm"
    path.write_bytes(api.get(dicom_job["links"][link]).content)
    assert files.dciodvfy_errors(path) == []


SHIPPED = sorted({Path(path).name for path in get_testdata_files("*.dcm")})


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_dicom_file_is_refused_clearly_or_gets_valid_dicom_results(
        api: TestClient, tmp_path: Path, name: str) -> None:
    response = _submit(api, files.shipped(name))
    if response.status_code != 202:
        helpers.assert_problem(response, response.status_code)
        assert response.status_code in (413, 415, 422), response.text
        return
    job = helpers.wait_for_job(api, response.headers["Location"])
    assert job["status"] == "succeeded", job["error"]
    made = [link for link in ("dcm", "overlay_dcm") if link in job["links"]]
    assert made == ["dcm", "overlay_dcm"] or (made == [] and job["dicom_unmade"]), job
    for link in made:
        path = tmp_path / f"{link}.dcm"
        result = api.get(job["links"][link])
        assert result.status_code == 200, result.text
        path.write_bytes(result.content)
        assert files.dciodvfy_errors(path) == [], link


def test_dicom_whose_jpeg_2000_data_is_corrupt_answers_422_not_415(api: TestClient) -> None:
    data = bytearray(files.shipped("JPEG2000.dcm"))
    start = data.find(b"\xff\x4f\xff\x51")  # the codestream's first markers
    data[start + 100 : start + 150] = bytes(50)  # its main header, zeroed
    problem = helpers.assert_problem(_submit(api, bytes(data)), 422)
    assert "JPEG 2000" in problem["detail"] and "corrupt" in problem["detail"]


@pytest.fixture(scope="module")
def large_dicom_job(api: TestClient) -> tuple[bytes, dict[str, Any]]:
    """A 1500 x 2600 radiograph-like image with patient geometry, and its finished job."""
    rows, columns = 1500, 2600
    gradient = np.add.outer(np.arange(rows), np.arange(columns)) % 256
    data = files.build(gradient.astype(np.uint8), "MONOCHROME2")
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.PixelSpacing = [0.2, 0.1]
    dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    dataset.ImagePositionPatient = [-50, -80, 0]
    dataset.FrameOfReferenceUID = pydicom.uid.generate_uid()
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue(), _finished(api, buffer.getvalue())


def test_parametric_map_of_a_large_image_is_a_coarser_grid_over_the_same_field_of_view(
        api: TestClient, large_dicom_job: tuple[bytes, dict[str, Any]]) -> None:
    _, job = large_dicom_job
    parametric = _dataset(api, job["links"]["dcm"])
    assert (parametric.Rows, parametric.Columns) == (500, 867)  # 1500 x 2600 by 3
    frame = parametric.SharedFunctionalGroupsSequence[0]
    spacing = [float(s) for s in frame.PixelMeasuresSequence[0].PixelSpacing]
    np.testing.assert_allclose(spacing, [0.2 * 1500 / 500, 0.1 * 2600 / 867])
    position = parametric.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    first = [float(p) for p in position.ImagePositionPatient]
    # Its first pixel's centre sits half of its own pixel in from the source's first edge.
    np.testing.assert_allclose(first, [-50 - 0.05 + spacing[1] / 2,
                                       -80 - 0.1 + spacing[0] / 2, 0])


def test_parametric_map_of_a_large_image_passes_dciodvfy(
        api: TestClient, large_dicom_job: tuple[bytes, dict[str, Any]], tmp_path: Path) -> None:
    _, job = large_dicom_job
    path = tmp_path / "map.dcm"
    path.write_bytes(api.get(job["links"]["dcm"]).content)
    assert files.dciodvfy_errors(path) == []
