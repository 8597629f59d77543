"""Krypton as a STOW-RS receiver: a PACS pushes instances, each becomes a heatmap job.

The sender is dicomweb-client (as any DICOMweb peer) or a real Orthanc whose
Lua rule forwards each new instance to Krypton; the receiver is a real
``krypton serve`` with API keys, routing CT to the test model with results
back to Orthanc, MR to the same model with results kept in Krypton, and
nothing else.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from krypton.render.dicom import map_grid, parametric_map, repaired
from krypton.service.auth import KeyStore
from tests import dicom_files as files
from tests.pacs.conftest import Orthanc
from tests.pacs.helpers import COMPREHENSIVE_3D_SR, in_study, pacs_registry
from tests.service import helpers

pytestmark = pytest.mark.pacs

ROUTES = f"""
[[routes]]
modality = "CT"
model = "{helpers.MODEL}"
results_to = "orthanc"

[[routes]]
modality = "MR"
model = "{helpers.MODEL}"
"""
REFERENCED = "00081199"
FAILED = "00081198"
FAILURE_REASON = "00081197"
RETRIEVE_URL = "00081190"


class Krypton:
    """A running ``krypton serve``, the key its PACS sends with, and another key."""

    def __init__(self, url: str, token: str, other: str) -> None:
        self.url, self.token, self.other = url, token, other
        self.http = httpx.Client(base_url=url, timeout=60,
                                 headers={"Authorization": f"Bearer {token}"})

    def stow(self, statuses: list[int] | None = None) -> DICOMwebClient:
        """A DICOMweb client of Krypton's STOW-RS route, without retries; the status of each
        answer goes to ``statuses``."""
        def record(response: requests.Response, *_: Any, **__: Any) -> requests.Response:
            if statuses is not None:
                statuses.append(response.status_code)
            return response

        client = DICOMwebClient(f"{self.url}/dicomweb", callback=record,
                                headers={"Authorization": f"Bearer {self.token}"})
        client.set_http_retry_params(retry=False)
        return client


def serve(folder: Path, orthanc: Orthanc) -> Iterator[Krypton]:
    keys = folder / "keys.json"
    token = KeyStore(keys).add("pacs", "heatmaps")
    other = KeyStore(keys).add("someone-else", "heatmaps")
    registry = pacs_registry(folder, orthanc, routes=ROUTES)
    with helpers.serving(registry, log=folder / "serve.log", KRYPTON_KEYS_FILE=str(keys)) as url:
        krypton = Krypton(url, token, other)
        yield krypton
        krypton.http.close()


@pytest.fixture(scope="module")
def receiver(orthanc_server: Orthanc, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Krypton]:
    yield from serve(tmp_path_factory.mktemp("krypton-stow"), orthanc_server)


def shipped(name: str) -> Dataset:
    return pydicom.dcmread(io.BytesIO(files.shipped(name)))


def stow_answer(receiver: Krypton, datasets: list[Dataset]) -> tuple[int, dict[str, Any]]:
    """Status and DICOM JSON body of a STOW-RS request to Krypton (errors included)."""
    statuses: list[int] = []
    try:
        answer = receiver.stow(statuses).store_instances(datasets)
    except requests.HTTPError as exc:
        return exc.response.status_code, exc.response.json()
    return statuses[-1], answer.to_json_dict()


def items(body: dict[str, Any], sequence: str) -> list[dict[str, Any]]:
    return list(body.get(sequence, {}).get("Value", []))


def test_each_instance_sent_becomes_a_job_listed_in_the_standard_response(
        receiver: Krypton, orthanc: Orthanc) -> None:
    ct, mr = shipped("CT_small.dcm"), shipped("MR_small.dcm")
    status, body = stow_answer(receiver, [ct, mr])
    assert status == 200, body
    taken = items(body, REFERENCED)
    assert [item["00081155"]["Value"][0] for item in taken] == [ct.SOPInstanceUID,
                                                                mr.SOPInstanceUID]
    jobs = [helpers.wait_for_job(receiver.http, item[RETRIEVE_URL]["Value"][0])
            for item in taken]
    assert [job["status"] for job in jobs] == ["succeeded", "succeeded"]
    assert jobs[0]["pacs"]["source"] is None and jobs[0]["pacs"]["results_to"] == "orthanc"
    assert jobs[0]["delivery"]["status"] == "stored"
    assert jobs[1]["delivery"] is None  # the MR route keeps results in Krypton


def test_results_of_a_routed_instance_reach_its_study_in_the_pacs(
        receiver: Krypton, orthanc: Orthanc) -> None:
    ct = shipped("CT_small.dcm")
    _, body = stow_answer(receiver, [ct])
    job = helpers.wait_for_job(receiver.http, items(body, REFERENCED)[0][RETRIEVE_URL]["Value"][0])
    assert job["delivery"]["status"] == "stored", job["delivery"]
    assert COMPREHENSIVE_3D_SR in in_study(orthanc, ct.StudyInstanceUID).values()


def test_an_instance_no_route_takes_is_refused_with_reason_0x0122(receiver: Krypton) -> None:
    photo = pydicom.dcmread(io.BytesIO(files.build(files.example_pixels(), "RGB")))
    status, body = stow_answer(receiver, [shipped("CT_small.dcm"), photo])
    assert status == 202, body
    failed = items(body, FAILED)
    assert len(failed) == 1 and failed[0][FAILURE_REASON]["Value"] == [0x0122]
    assert len(items(body, REFERENCED)) == 1


def test_a_request_whose_every_instance_is_refused_is_409(receiver: Krypton) -> None:
    photo = pydicom.dcmread(io.BytesIO(files.build(files.example_pixels(), "RGB")))
    status, body = stow_answer(receiver, [photo])
    assert status == 409, body
    assert len(items(body, FAILED)) == 1 and items(body, REFERENCED) == []


def test_kryptons_own_results_are_acknowledged_and_not_explained_again(
        receiver: Krypton) -> None:
    ct = shipped("CT_small.dcm")
    values = pydicom.dcmread(io.BytesIO(files.shipped("CT_small.dcm"))).pixel_array
    grid = values[: map_grid(ct.Rows, ct.Columns)[0]].astype("float32")
    result = pydicom.dcmread(io.BytesIO(parametric_map(
        repaired(ct)[0], grid, label="DROP", explanation="test")))
    status, body = stow_answer(receiver, [result])
    assert status == 200, body
    (taken,) = items(body, REFERENCED)
    assert RETRIEVE_URL not in taken


def test_a_part_that_is_not_dicom_is_refused_as_not_understood(receiver: Krypton) -> None:
    body = (b"--b\r\nContent-Type: application/dicom\r\n\r\nnot a DICOM file\r\n--b--\r\n")
    response = receiver.http.post("/dicomweb/studies", content=body, headers={
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert response.status_code == 409, response.text
    assert items(response.json(), FAILED)[0][FAILURE_REASON]["Value"] == [0xC000]


def test_a_body_that_is_not_multipart_related_is_415(receiver: Krypton) -> None:
    response = receiver.http.post("/dicomweb/studies", content=files.shipped("CT_small.dcm"),
                                 headers={"Content-Type": "application/dicom"})
    helpers.assert_problem(response, 415)


def test_stow_rs_without_a_key_is_401_before_the_body_is_read(receiver: Krypton) -> None:
    response = httpx.post(f"{receiver.url}/dicomweb/studies",
                          content=files.shipped("CT_small.dcm"), headers={
                              "Content-Type": 'multipart/related; type="application/dicom"'})
    helpers.assert_problem(response, 401)


def test_a_job_sent_with_a_key_is_read_with_that_key_only(receiver: Krypton) -> None:
    _, body = stow_answer(receiver, [shipped("MR_small.dcm")])
    path = items(body, REFERENCED)[0][RETRIEVE_URL]["Value"][0]
    assert receiver.http.get(path).status_code == 200
    assert httpx.get(f"{receiver.url}{path}").status_code == 401
    other = httpx.get(f"{receiver.url}{path}",
                      headers={"Authorization": f"Bearer {receiver.other}"})
    helpers.assert_problem(other, 404)


FORWARD_LUA = Path(__file__).resolve().parents[2] / "deploy/orthanc/route-to-krypton.lua"
"""The forwarding rule Krypton ships."""


def test_orthanc_routing_new_instances_to_krypton_gets_the_results_back_in_the_study(
        make_orthanc: Callable[[dict[str, Any]], Orthanc],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("forwarding")
    port = helpers.free_port()
    keys = folder / "keys.json"
    token = KeyStore(keys).add("orthanc", "heatmaps")
    pacs = make_orthanc({"LuaScripts": [str(FORWARD_LUA)], "DicomWeb": {"Servers": {"krypton": {
        "Url": f"http://127.0.0.1:{port}/dicomweb/",
        "HttpHeaders": {"Authorization": f"Bearer {token}"}}}}})
    registry = pacs_registry(folder, pacs, routes=ROUTES)
    with helpers.serving(registry, log=folder / "serve.log", KRYPTON_KEYS_FILE=str(keys),
                         port=port):
        ct = shipped("CT_small.dcm")
        pacs.client().store_instances([ct])
        found = helpers.wait_until(
            lambda: COMPREHENSIVE_3D_SR in in_study(pacs, ct.StudyInstanceUID).values() or None,
            timeout=120)
    assert found, pacs.log()[-3000:]
    assert len(in_study(pacs, ct.StudyInstanceUID)) == 4  # the CT, its map, overlay, report


def test_a_request_of_more_instances_than_one_takes_is_413(receiver: Krypton) -> None:
    body = b"".join(b"--b\r\nContent-Type: application/dicom\r\n\r\nx\r\n" for _ in range(65))
    response = receiver.http.post("/dicomweb/studies", content=body + b"--b--\r\n", headers={
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert "at most 64" in helpers.assert_problem(response, 413)["detail"]
