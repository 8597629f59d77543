"""Krypton and a real Orthanc: heatmaps of PACS images, and their results back in the study.

A real ``krypton serve`` (embedded) is pointed at the test Orthanc by a
registry ``[[pacs]]`` entry. A job names an instance by its UIDs, the API
reads it over WADO-RS, the worker stores the Parametric Map, the overlay and
the measurement report back over STOW-RS, and the tests look for them where a
radiologist's viewer would: in Orthanc, in the source's study.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import pydicom
import pytest
from highdicom.sr.utils import find_content_items
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from krypton.models.pacs import PacsServer
from krypton.service.pacs import PacsRefused, fetch_instance
from tests import dicom_files as files
from tests.pacs.conftest import Orthanc
from tests.pacs.helpers import (
    COMPREHENSIVE_3D_SR,
    PARAMETRIC_MAP,
    SECONDARY_CAPTURE,
    in_study,
    uids,
)
from tests.service import helpers

pytestmark = pytest.mark.pacs

SOURCE = "CT_small.dcm"
FAST = {"patch_size": 16, "stride": 16}
"""Four by four positions on the test model's 64-pixel input."""


@pytest.fixture
def source(orthanc: Orthanc) -> Dataset:
    """pydicom's CT_small.dcm, stored in the (emptied) Orthanc."""
    dataset = pydicom.dcmread(io.BytesIO(files.shipped(SOURCE)))
    orthanc.client().store_instances([dataset])
    return dataset


def explain(krypton: httpx.Client, dataset: Dataset, **fields: Any) -> httpx.Response:
    return krypton.post("/v1/pacs/orthanc/heatmaps", json=uids(dataset) | FAST | fields)


def finished(krypton: httpx.Client, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    return helpers.wait_for_job(krypton, response.headers["Location"])


def test_a_job_by_uids_stores_map_overlay_and_report_in_the_source_study(
        krypton: httpx.Client, orthanc: Orthanc, source: Dataset) -> None:
    job = finished(krypton, explain(krypton, source))
    assert job["status"] == "succeeded", job["error"]
    delivery = job["delivery"]
    assert delivery["status"] == "stored", delivery
    assert delivery["pacs"] == "orthanc" and delivery["attempts"] == 1
    stored = {item["role"]: item for item in delivery["instances"]}
    assert sorted(stored) == ["overlay", "parametric_map", "report"]
    found = in_study(orthanc, source.StudyInstanceUID)
    for role, sop_class in (("parametric_map", PARAMETRIC_MAP), ("overlay", SECONDARY_CAPTURE),
                            ("report", COMPREHENSIVE_3D_SR)):
        assert found.get(stored[role]["sop_instance_uid"]) == sop_class, role
    assert found[source.SOPInstanceUID] == source.SOPClassUID


def test_a_job_by_uids_names_its_instance_and_pacs(
        krypton: httpx.Client, source: Dataset) -> None:
    job = finished(krypton, explain(krypton, source))
    assert job["pacs"] == {"source": "orthanc", "results_to": "orthanc",
                           "instance": uids(source)}


def test_results_read_back_from_orthanc_pass_dciodvfy(
        krypton: httpx.Client, orthanc: Orthanc, source: Dataset, tmp_path: Path) -> None:
    job = finished(krypton, explain(krypton, source))
    assert job["delivery"]["status"] == "stored", job["delivery"]
    for stored in job["delivery"]["instances"]:
        dataset = orthanc.client().retrieve_instance(
            source.StudyInstanceUID, stored["series_instance_uid"], stored["sop_instance_uid"])
        path = tmp_path / f"{stored['role']}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        assert files.dciodvfy_errors(path) == [], stored["role"]


def test_store_results_false_leaves_the_study_as_it_was(
        krypton: httpx.Client, orthanc: Orthanc, source: Dataset) -> None:
    job = finished(krypton, explain(krypton, source, store_results=False))
    assert job["status"] == "succeeded" and job["delivery"] is None
    assert list(in_study(orthanc, source.StudyInstanceUID)) == [source.SOPInstanceUID]


def test_an_instance_the_pacs_lacks_is_refused_422_and_nothing_is_queued(
        krypton: httpx.Client, source: Dataset) -> None:
    missing = uids(source) | {"sop_instance_uid": generate_uid()}
    response = krypton.post("/v1/pacs/orthanc/heatmaps", json=missing | FAST)
    problem = helpers.assert_problem(response, 422)
    assert problem["type"].endswith("instance-not-found")
    assert "orthanc" in problem["detail"]


def test_a_pacs_the_deployment_does_not_name_is_404_listing_the_known_ones(
        krypton: httpx.Client, source: Dataset) -> None:
    response = krypton.post("/v1/pacs/elsewhere/heatmaps", json=uids(source))
    problem = helpers.assert_problem(response, 404)
    assert "orthanc" in problem["detail"]


def test_uids_that_are_not_uids_are_refused_422(krypton: httpx.Client) -> None:
    response = krypton.post("/v1/pacs/orthanc/heatmaps", json={
        "study_instance_uid": "1.2.3", "series_instance_uid": "../../etc",
        "sop_instance_uid": "1.2.3"})
    helpers.assert_problem(response, 422)


def test_a_non_image_instance_is_refused_422_and_nothing_is_stored(
        krypton: httpx.Client, orthanc: Orthanc) -> None:
    report = pydicom.dcmread(io.BytesIO(files.shipped("test-SR.dcm")))
    orthanc.client().store_instances([report])
    response = krypton.post("/v1/pacs/orthanc/heatmaps", json=uids(report) | FAST)
    assert "holds no image" in helpers.assert_problem(response, 422)["detail"]  # from its header
    assert list(in_study(orthanc, report.StudyInstanceUID)) == [report.SOPInstanceUID]


def test_a_pacs_that_is_down_is_answered_502_at_once_and_krypton_stays_healthy(
        krypton: httpx.Client, orthanc: Orthanc, source: Dataset) -> None:
    orthanc.stop(kill=True)
    began = time.monotonic()
    response = explain(krypton, source)
    elapsed = time.monotonic() - began
    problem = helpers.assert_problem(response, 502)
    assert problem["type"].endswith("pacs-unavailable") and "orthanc" in problem["detail"]
    assert elapsed < 5, f"{elapsed:.1f} s: retried instead of answering"
    assert krypton.get("/readyz").status_code == 200


def test_orthanc_stopped_mid_job_fails_the_delivery_after_its_retries_saying_why(
        krypton: httpx.Client, orthanc: Orthanc, source: Dataset) -> None:
    response = explain(krypton, source, stride=4)  # read now; stored after 256 positions
    orthanc.stop(kill=True)
    job = finished(krypton, response)
    assert job["status"] == "succeeded", job["error"]  # the heatmap is still Krypton's to give
    delivery = job["delivery"]
    assert delivery["status"] == "failed" and delivery["attempts"] == 3, delivery
    assert delivery["error"]["type"].endswith("pacs-unavailable")
    assert "did not answer" in delivery["error"]["detail"]
    assert krypton.get(f"{response.headers['Location']}/heatmap.dcm").status_code == 200
    assert krypton.get("/readyz").status_code == 200


def test_the_report_read_back_from_orthanc_names_algorithm_finding_and_references(
        krypton: httpx.Client, orthanc: Orthanc, source: Dataset) -> None:
    job = finished(krypton, explain(krypton, source))
    stored = {item["role"]: item for item in job["delivery"]["instances"]}
    report = orthanc.client().retrieve_instance(
        source.StudyInstanceUID, stored["report"]["series_instance_uid"],
        stored["report"]["sop_instance_uid"])
    content = hd.sr.Comprehensive3DSR.from_dataset(report).content
    assert isinstance(content, hd.sr.MeasurementReport)
    [group] = content.get_planar_roi_measurement_groups()
    names = [item.value for item in find_content_items(group[0], name=codes.DCM.AlgorithmName)]
    parameters = [item.value for item in find_content_items(
        group[0], name=codes.DCM.AlgorithmParameters)]
    assert names == [helpers.MODEL]
    assert re.fullmatch(r"weights=[0-9a-f]{64}", parameters[0])  # the checkpoint's SHA-256
    assert {"patch_size=16", "stride=16", "mode=exact"} <= set(parameters)
    prediction = job["prediction"]
    finding = group.finding_type
    assert finding is not None
    assert (finding.value, finding.meaning) == (str(prediction["predicted_class"]),
                                                prediction["predicted_label"])
    [probability] = group.get_measurements(name=codes.DCM.Probability)
    assert probability.value == pytest.approx(prediction["predicted_probability"], abs=1e-6)
    region = group.roi
    assert isinstance(region, hd.sr.ImageRegion)
    assert region.value.tolist() == [[0, 0], [source.Columns, 0], [source.Columns, source.Rows],
                                     [0, source.Rows], [0, 0]]  # the whole source image
    [reference] = region.ContentSequence[0].ReferencedSOPSequence
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    explained = {item.referenced_sop_instance_uid for item in find_content_items(
        group[0], name=codes.DCM.VisualExplanation)}
    assert explained == {stored["parametric_map"]["sop_instance_uid"],
                         stored["overlay"]["sop_instance_uid"]}


def test_the_service_log_holds_no_uid_of_the_study_it_explained(
        krypton: httpx.Client, orthanc: Orthanc, source: Dataset, krypton_folder: Path) -> None:
    finished(krypton, explain(krypton, source))
    response = explain(krypton, source, sop_instance_uid=generate_uid())
    assert response.status_code == 422
    orthanc.stop(kill=True)
    assert explain(krypton, source).status_code == 502
    text = (krypton_folder / "serve.log").read_text(errors="replace")
    assert "job " in text  # the log is the service's, and it logged
    for uid in uids(source).values():
        assert uid not in text


def test_a_pacs_url_that_is_not_the_dicomweb_base_is_named_as_the_likely_fault(
        orthanc: Orthanc, source: Dataset) -> None:
    server = PacsServer("wrong", orthanc.url)  # Orthanc's root, not its /dicom-web
    with pytest.raises(PacsRefused, match="DICOMweb base"):
        fetch_instance(server, source.StudyInstanceUID, source.SeriesInstanceUID,
                       source.SOPInstanceUID, max_bytes=2**25)


def test_a_pacs_that_hangs_while_results_are_stored_fails_the_delivery_in_bounded_time(
        krypton: httpx.Client, orthanc: Orthanc, source: Dataset) -> None:
    response = explain(krypton, source, stride=4)
    orthanc.freeze()  # connects, never answers
    try:
        began = time.monotonic()
        job = finished(krypton, response)
        elapsed = time.monotonic() - began
        assert krypton.get("/readyz").status_code == 200
    finally:
        orthanc.thaw()
    delivery = job["delivery"]
    assert delivery["status"] == "failed" and delivery["attempts"] == 3, delivery
    assert "did not answer (ReadTimeout)" in delivery["error"]["detail"]
    assert elapsed < 3 * 2 + 0.6 + 15  # 3 attempts of the 2 s timeout, backoff, the heatmap


def test_an_instance_in_a_transfer_syntax_krypton_cannot_decode_is_415_naming_it(
        krypton: httpx.Client, orthanc: Orthanc) -> None:
    mpeg2 = "1.2.840.10008.1.2.4.100"
    data = files.with_transfer_syntax(files.shipped("MR_small_RLE.dcm"), mpeg2)
    dataset = pydicom.dcmread(io.BytesIO(data))
    orthanc.rest("POST", "/instances", data=data)
    problem = helpers.assert_problem(explain(krypton, dataset), 415)
    assert mpeg2 in problem["detail"]
    assert list(in_study(orthanc, dataset.StudyInstanceUID)) == [dataset.SOPInstanceUID]
