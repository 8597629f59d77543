"""What the test Orthanc does over DICOMweb, as seen through dicomweb-client.

Each test states one behaviour the PACS integration relies on; docs/pacs-notes.md
sums them up. The DICOM files are pydicom's shipped test files (no download).
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from krypton.render.dicom import parametric_map, secondary_capture
from tests.pacs.conftest import Orthanc

pytestmark = pytest.mark.pacs

UNCOMPRESSED = ("CT_small.dcm", "MR_small.dcm")
JPEG_2000 = "JPEG2000.dcm"
JPEG_BASELINE = "SC_rgb_jpeg_dcmtk.dcm"
SHIPPED = (*UNCOMPRESSED, JPEG_2000, JPEG_BASELINE)
"""pydicom's own test files (US1_J2KR.dcm and SC_rgb.dcm are download-only)."""

STUDY_UID = "0020000D"
SOP_INSTANCE_UID = "00080018"
SOP_CLASS_UID = "00080016"
REFERENCED_SOP_SEQUENCE = "00081199"


def shipped(name: str) -> Dataset:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom does not ship {name}"
    return pydicom.dcmread(path)


def values(result: dict[str, Any], tag: str) -> list[Any]:
    """An attribute's values in a QIDO-RS (DICOM JSON) result."""
    return list(result.get(tag, {}).get("Value", []))


def answer_of(raised: pytest.ExceptionInfo[requests.HTTPError]) -> requests.Response:
    """The HTTP answer an ``HTTPError`` was raised over."""
    response = raised.value.response
    assert response is not None
    return response


def stored(orthanc: Orthanc, *names: str) -> list[Dataset]:
    datasets = [shipped(name) for name in names]
    orthanc.client().store_instances(datasets)
    return datasets


# --- STOW-RS and QIDO-RS -------------------------------------------------------------


def test_stow_rs_stores_every_shipped_file_and_references_each(orthanc: Orthanc) -> None:
    datasets = [shipped(name) for name in SHIPPED]
    answer = orthanc.client().store_instances(datasets)
    assert len(answer.get("FailedSOPSequence", [])) == 0
    assert {item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence} == {
        ds.SOPInstanceUID for ds in datasets}


def test_qido_rs_finds_every_stored_study(orthanc: Orthanc) -> None:
    datasets = stored(orthanc, *SHIPPED)
    studies = orthanc.client().search_for_studies()
    assert {values(study, STUDY_UID)[0] for study in studies} == {
        ds.StudyInstanceUID for ds in datasets}


def test_qido_rs_filtered_by_study_lists_that_study_s_instances_only(orthanc: Orthanc) -> None:
    ct, _mr = stored(orthanc, *UNCOMPRESSED)
    instances = orthanc.client().search_for_instances(study_instance_uid=ct.StudyInstanceUID)
    assert [values(found, SOP_INSTANCE_UID) for found in instances] == [[ct.SOPInstanceUID]]


def test_qido_rs_answers_an_unknown_study_with_an_empty_list(orthanc: Orthanc) -> None:
    stored(orthanc, "CT_small.dcm")
    assert orthanc.client().search_for_instances(study_instance_uid=generate_uid()) == []


def test_storing_the_same_instance_twice_succeeds_and_keeps_one_copy(orthanc: Orthanc) -> None:
    client = orthanc.client()
    ct = shipped("CT_small.dcm")
    client.store_instances([ct])
    answer = client.store_instances([ct])
    assert len(answer.ReferencedSOPSequence) == 1
    assert len(client.search_for_instances(study_instance_uid=ct.StudyInstanceUID)) == 1


# --- WADO-RS -------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_wado_rs_by_default_returns_the_stored_transfer_syntax_and_pixels(
        orthanc: Orthanc, name: str) -> None:
    # dicomweb-client asks for `transfer-syntax=*` unless told otherwise.
    [original] = stored(orthanc, name)
    retrieved = orthanc.client().retrieve_instance(
        original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID)
    assert retrieved.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert retrieved.PixelData == original.PixelData
    assert np.array_equal(retrieved.pixel_array, original.pixel_array)


def test_wado_rs_without_a_transfer_syntax_decompresses_jpeg_to_explicit_little_endian(
        orthanc: Orthanc) -> None:
    [original] = stored(orthanc, JPEG_BASELINE)
    assert original.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    retrieved = orthanc.client().retrieve_instance(
        original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID,
        media_types=("application/dicom",))
    assert retrieved.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    # Orthanc (DCMTK) decoded the JPEG to RGB as pydicom does: the same pixels.
    assert retrieved.PhotometricInterpretation == "RGB"
    assert np.array_equal(retrieved.pixel_array, original.pixel_array)


def test_wado_rs_without_a_transfer_syntax_fails_on_jpeg_2000_with_http_500(
        orthanc: Orthanc) -> None:
    # Debian's Orthanc cannot decode JPEG 2000: it cannot transcode it.
    [original] = stored(orthanc, JPEG_2000)
    assert original.file_meta.TransferSyntaxUID == JPEG2000
    with pytest.raises(requests.HTTPError) as raised:
        orthanc.client().retrieve_instance(
            original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID,
            media_types=("application/dicom",))
    assert answer_of(raised).status_code == 500


def test_wado_rs_answers_an_unknown_instance_with_http_404(orthanc: Orthanc) -> None:
    [ct] = stored(orthanc, "CT_small.dcm")
    with pytest.raises(requests.HTTPError) as raised:
        orthanc.client().retrieve_instance(ct.StudyInstanceUID, ct.SeriesInstanceUID,
                                           generate_uid())
    assert answer_of(raised).status_code == 404


def test_wado_rs_answers_an_unknown_study_with_http_404(orthanc: Orthanc) -> None:
    with pytest.raises(requests.HTTPError) as raised:
        orthanc.client().retrieve_study(generate_uid())
    assert answer_of(raised).status_code == 404


# --- derived objects in the source study ---------------------------------------------


def test_a_highdicom_secondary_capture_stored_into_the_source_study_is_found_there(
        orthanc: Orthanc) -> None:
    [ct] = stored(orthanc, "CT_small.dcm")
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ct, pixel_array=np.zeros((ct.Rows, ct.Columns, 3), np.uint8),
        photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        series_instance_uid=generate_uid(), series_number=900,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="Krypton tests",
        patient_orientation=("L", "P"))
    client = orthanc.client()
    client.store_instances([capture], study_instance_uid=ct.StudyInstanceUID)
    found = client.search_for_instances(study_instance_uid=ct.StudyInstanceUID)
    assert {values(instance, SOP_INSTANCE_UID)[0] for instance in found} == {
        ct.SOPInstanceUID, capture.SOPInstanceUID}


def test_krypton_s_dicom_results_are_accepted_into_the_source_study(orthanc: Orthanc) -> None:
    [ct] = stored(orthanc, "CT_small.dcm")
    results = [
        pydicom.dcmread(io.BytesIO(secondary_capture(
            ct, np.zeros((ct.Rows, ct.Columns, 3), np.uint8)))),
        pydicom.dcmread(io.BytesIO(parametric_map(
            ct, np.linspace(0, 1, ct.Rows * ct.Columns).reshape(ct.Rows, ct.Columns),
            label="probability", explanation="class probability, occluded"))),
    ]
    client = orthanc.client()
    client.store_instances(results, study_instance_uid=ct.StudyInstanceUID)
    found = client.search_for_instances(study_instance_uid=ct.StudyInstanceUID)
    assert {(values(i, SOP_CLASS_UID)[0], values(i, SOP_INSTANCE_UID)[0]) for i in found} == {
        (ds.SOPClassUID, ds.SOPInstanceUID) for ds in [ct, *results]}


# --- STOW-RS refusals ----------------------------------------------------------------


def _without_uids() -> Dataset:
    """An encodable dataset Orthanc cannot store: no SOP, series or study UID."""
    dataset = Dataset()
    dataset.PatientName = "No^Uids"
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return dataset


def test_stow_rs_of_an_object_without_uids_fails_with_http_400(orthanc: Orthanc) -> None:
    with pytest.raises(requests.HTTPError) as raised:
        orthanc.client().store_instances([_without_uids()])
    assert answer_of(raised).status_code == 400
    assert orthanc.client().search_for_studies() == []


def test_stow_rs_of_a_dataset_without_a_transfer_syntax_fails_before_sending(
        orthanc: Orthanc) -> None:
    # pydicom cannot encode it: dicomweb-client raises before any request.
    dataset = Dataset()
    dataset.PatientName = "No^Meta"
    with pytest.raises(ValueError, match="Transfer Syntax UID"):
        orthanc.client().store_instances([dataset])


def test_stow_rs_into_another_study_fails_with_http_409_naming_the_instance(
        orthanc: Orthanc) -> None:
    ct = shipped("CT_small.dcm")
    with pytest.raises(requests.HTTPError) as raised:
        orthanc.client().store_instances([ct], study_instance_uid=generate_uid())
    assert answer_of(raised).status_code == 409
    answer = Dataset.from_json(answer_of(raised).json())
    assert [item.ReferencedSOPInstanceUID for item in answer.FailedSOPSequence] == [
        ct.SOPInstanceUID]
    assert orthanc.client().search_for_studies() == []


def test_stow_rs_of_a_good_and_a_bad_object_answers_400_but_keeps_the_good_one(
        orthanc: Orthanc) -> None:
    ct = shipped("CT_small.dcm")
    client = orthanc.client()
    with pytest.raises(requests.HTTPError) as raised:
        client.store_instances([ct, _without_uids()])
    assert answer_of(raised).status_code == 400
    answer = Dataset.from_json(answer_of(raised).json())
    assert [item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence] == [
        ct.SOPInstanceUID]
    assert len(client.search_for_instances(study_instance_uid=ct.StudyInstanceUID)) == 1


# --- the PACS away -------------------------------------------------------------------


def test_a_stopped_orthanc_makes_dicomweb_calls_raise_requests_connection_error(
        orthanc: Orthanc) -> None:
    client = orthanc.client()
    orthanc.stop()
    try:
        with pytest.raises(requests.exceptions.ConnectionError) as raised:
            client.search_for_studies()
        # requests' ConnectionError is an OSError, not Python's own ConnectionError.
        assert not isinstance(raised.value, ConnectionError)
    finally:
        orthanc.start()


def test_dicomweb_client_retries_a_refused_connection_when_retries_are_on(
        orthanc: Orthanc) -> None:
    attempts: list[str] = []
    http = requests.Session()
    send = http.send

    def counted(request: requests.PreparedRequest, **options: Any) -> requests.Response:
        attempts.append(str(request.url))
        return send(request, **options)

    http.send = counted  # type: ignore[method-assign]
    client = orthanc.client(session=http)
    client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=1)
    orthanc.stop(kill=True)
    try:
        with pytest.raises(requests.exceptions.ConnectionError):
            client.search_for_studies()
    finally:
        orthanc.start()
    assert len(attempts) == 3


def test_a_frozen_orthanc_makes_dicomweb_calls_raise_read_timeout(orthanc: Orthanc) -> None:
    client = orthanc.client(timeout=0.5)
    orthanc.freeze()
    try:
        with pytest.raises(requests.exceptions.ReadTimeout):
            client.search_for_studies()
    finally:
        orthanc.thaw()


def test_a_restarted_orthanc_on_the_same_storage_keeps_its_instances(orthanc: Orthanc) -> None:
    [ct] = stored(orthanc, "CT_small.dcm")
    orthanc.stop()
    orthanc.start()
    retrieved = orthanc.client().retrieve_instance(ct.StudyInstanceUID, ct.SeriesInstanceUID,
                                                   ct.SOPInstanceUID)
    assert retrieved.PixelData == ct.PixelData


def test_a_killed_orthanc_restarted_keeps_the_instances_it_acknowledged(
        orthanc: Orthanc) -> None:
    [ct] = stored(orthanc, "CT_small.dcm")
    orthanc.stop(kill=True)
    orthanc.start()
    found = orthanc.client().search_for_instances(study_instance_uid=ct.StudyInstanceUID)
    assert [values(instance, SOP_INSTANCE_UID) for instance in found] == [[ct.SOPInstanceUID]]


# --- Orthanc pushing new instances to another DICOMweb server -------------------------


FORWARD_SCRIPT = """\
function OnStoredInstance(instanceId, tags, metadata, origin)
  RestApiPost('/dicom-web/servers/{server}/stow',
              '{{"Resources": ["' .. instanceId .. '"], "Synchronous": false}}')
end
"""
"""Orthanc's Lua hook: each stored instance is sent by STOW-RS, as a job (not waited on)."""


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    datasets: list[Dataset]


@dataclass
class Receiver:
    """A minimal STOW-RS endpoint that records what it is sent."""

    url: str
    received: list[Received] = field(default_factory=list)
    reply: dict[str, Any] | None = None
    """The DICOM JSON to answer with; by default a Referenced SOP Sequence item per instance."""


def _unchunked(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body; Orthanc sends it with ``Transfer-Encoding: chunked``, which
    ``http.server`` leaves to the handler."""
    if "Content-Length" in handler.headers:
        return handler.rfile.read(int(handler.headers["Content-Length"]))
    body = b""
    while size := int(handler.rfile.readline().strip(), 16):
        body += handler.rfile.read(size)
        handler.rfile.readline()
    handler.rfile.readline()
    return body


def _parts(content_type: str, body: bytes) -> list[bytes]:
    """The bodies of a multipart message, read by the standard library's MIME parser."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    payloads = [part.get_payload(decode=True) for part in message.iter_parts()]
    assert all(isinstance(payload, bytes) for payload in payloads), payloads
    return [payload for payload in payloads if isinstance(payload, bytes)]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = _unchunked(self)
            parts = _parts(self.headers["Content-Type"], body)
            datasets: list[Dataset] = [pydicom.dcmread(io.BytesIO(part)) for part in parts]
            state.received.append(Received(self.command, self.path, dict(self.headers),
                                           datasets))
            answer = state.reply
            if answer is None:
                answer = {REFERENCED_SOP_SEQUENCE: {"vr": "SQ", "Value": [
                    {"00081150": {"vr": "UI", "Value": [ds.SOPClassUID]},
                     "00081155": {"vr": "UI", "Value": [ds.SOPInstanceUID]}}
                    for ds in datasets]}}
            content = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web/"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture
def forwarding_orthanc(make_orthanc: Callable[[dict[str, Any]], Orthanc], receiver: Receiver,
                       tmp_path: Path) -> Orthanc:
    """An Orthanc that sends every instance it stores to ``receiver`` by STOW-RS."""
    script = tmp_path / "forward.lua"
    script.write_text(FORWARD_SCRIPT.format(server="krypton"))
    return make_orthanc({"DicomWeb": {"Servers": {"krypton": [receiver.url]}},
                         "LuaScripts": [str(script)]})


def _finished_stow_jobs(orthanc: Orthanc, count: int) -> list[dict[str, Any]]:
    """Orthanc's DICOMweb STOW-RS jobs once ``count`` of them have ended."""
    deadline = time.monotonic() + 20
    while True:
        jobs = [job for job in orthanc.rest("GET", "/jobs", params={"expand": ""}).json()
                if job["Type"] == "DicomWebStowClient"
                and job["State"] in ("Success", "Failure")]
        if len(jobs) >= count or time.monotonic() > deadline:
            return jobs
        time.sleep(0.05)


def test_orthanc_forwards_each_stored_instance_to_a_dicomweb_server_by_stow_rs(
        forwarding_orthanc: Orthanc, receiver: Receiver) -> None:
    ct = shipped("CT_small.dcm")
    forwarding_orthanc.client().store_instances([ct])
    jobs = _finished_stow_jobs(forwarding_orthanc, 1)
    assert [job["State"] for job in jobs] == ["Success"]
    [request] = receiver.received
    assert (request.method, request.path) == ("POST", "/dicom-web/studies")
    assert request.headers["Accept"] == "application/dicom+json"
    assert request.headers["Content-Type"].startswith(
        'multipart/related; type="application/dicom"; boundary=')
    [sent] = request.datasets
    assert sent.SOPInstanceUID == ct.SOPInstanceUID
    assert sent.file_meta.TransferSyntaxUID == ct.file_meta.TransferSyntaxUID
    assert sent.PixelData == ct.PixelData


@pytest.mark.parametrize(("reply", "details"), [
    ({REFERENCED_SOP_SEQUENCE: {"vr": "SQ"}},
     "The STOW-RS server was only able to receive 0 instances out of 1"),
    ({}, "Unable to parse STOW-RS JSON response from DICOMweb server krypton"),
], ids=["empty-referenced-sop-sequence", "no-referenced-sop-sequence"])
def test_a_forward_the_receiver_does_not_acknowledge_ends_as_a_failed_job(
        forwarding_orthanc: Orthanc, receiver: Receiver, reply: dict[str, Any],
        details: str) -> None:
    # Both with HTTP 200: Orthanc reads the answer's body, not only its status.
    receiver.reply = reply
    forwarding_orthanc.client().store_instances([shipped("CT_small.dcm")])
    [job] = _finished_stow_jobs(forwarding_orthanc, 1)
    assert job["State"] == "Failure"
    assert job["Content"]["FunctionErrorDetails"] == details
    assert len(receiver.received) == 1
