"""Krypton as a STOW-RS receiver: a PACS pushes instances, each becomes a heatmap job.

A PACS's auto-routing rule (an Orthanc Lua script, a DICOMweb peer) sends new
instances to ``POST /dicomweb/studies`` as ``multipart/related;
type="application/dicom"``. Each instance is checked as an upload is, routed
to a model by the deployment's routes (Modality, SOP Class, else the
default), and queued as a heatmap job owned by the key that sent it; its
results go back to the PACS the route names. The answer is the standard
STOW-RS response: a ``ReferencedSOPSequence`` item for each instance taken
(its ``RetrieveURL`` is the job's path) and a ``FailedSOPSequence`` item, with a
DICOM failure reason, for each refused. Krypton's own results, pushed back by
a rule that forwards everything, are acknowledged and not explained again.
"""

from __future__ import annotations

import asyncio
import logging
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydicom.dataset import Dataset

from krypton.models import ImageDecodeError
from krypton.models.deployment import Deployment
from krypton.models.dicom import read_dicom
from krypton.render.dicom import MANUFACTURER
from krypton.service.auth import Caller
from krypton.service.config import Settings
from krypton.service.deps import (
    AdmissionDep,
    CallerDep,
    DeploymentDep,
    SettingsDep,
    StoreDep,
)
from krypton.service.problems import (
    InvalidInput,
    PayloadTooLarge,
    QueueFull,
    QuotaExceeded,
    RateLimited,
    ServiceError,
    StoreFull,
    UnsupportedMediaType,
    problem_responses,
)
from krypton.service.routes.heatmaps import heatmap_plan, queue_heatmap
from krypton.service.schemas import InstanceRef, PacsLink
from krypton.service.store import Admission, Store
from krypton.service.uploads import check_image

__all__ = ["DICOM_JSON", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

DICOM_JSON = "application/dicom+json"
MAX_INSTANCES = 64
"""Instances one request may carry: each is checked and queued in the request, and a PACS's
forwarding rule sends one at a time."""

# DICOM failure reasons (PS3.18, Table I.2-3 of STOW-RS; PS3.7 C.4.2 for storage)
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
_REASONS: list[tuple[tuple[type[Exception], ...], int]] = [
    ((PayloadTooLarge, RateLimited, QuotaExceeded, QueueFull, StoreFull), OUT_OF_RESOURCES),
    ((UnsupportedMediaType,), TRANSFER_SYNTAX_NOT_SUPPORTED),
    ((InvalidInput, ImageDecodeError), CANNOT_UNDERSTAND),
]


class _Refused(Exception):
    """One instance refused, with its DICOM failure reason and why, in words."""

    def __init__(self, reason: int, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@router.post("/studies", response_class=JSONResponse, responses={
    200: {"content": {DICOM_JSON: {}}, "description": "Every instance taken"},
    202: {"content": {DICOM_JSON: {}}, "description": "Some instances taken, some refused"},
    409: {"content": {DICOM_JSON: {}}, "description": "Every instance refused"},
    **problem_responses(400, 401, 413, 415, 503)})
async def store_instances(request: Request, store: StoreDep, settings: SettingsDep,
                          deployment: DeploymentDep, caller: CallerDep,
                          admission: AdmissionDep) -> JSONResponse:
    """STOW-RS: explain each instance sent, one heatmap job per instance.

    The body is ``multipart/related; type="application/dicom"``, one DICOM
    file per part. The answer lists the instances taken (with their job's
    path as ``RetrieveURL``) and those refused (with a failure reason: 0xA700
    out of resources, 0xC000 cannot understand, 0xC122 transfer syntax not
    supported, 0x0122 no route for its SOP class or modality, 0x0110 other).
    """
    # Off the event loop: parsing a large body, or reading a Deflated header, takes seconds.
    parts = await asyncio.to_thread(_dicom_parts, request.headers.get("content-type", ""),
                                    await request.body())
    taken: list[Dataset] = []
    failed: list[Dataset] = []
    for data in parts:
        header = await asyncio.to_thread(_header, data)
        try:
            job_id = await _explain(data, header, store, settings, deployment, caller,
                                    admission)
        except _Refused as exc:
            failed.append(_item(header, failure=exc.reason))
            logger.info("STOW-RS: an instance refused (reason 0x%04X)", exc.reason)
            continue
        # The job's path, not an absolute URL: some clients (dicomweb-client) send a Host
        # header without the port, and a URL built from it would point elsewhere.
        taken.append(_item(header, url=None if job_id is None else f"/v1/heatmaps/{job_id}"))
    answer = Dataset()
    if taken:
        answer.ReferencedSOPSequence = taken
    if failed:  # "required if any failures" (PS3.18)
        answer.FailedSOPSequence = failed
    status = 200 if not failed else 202 if taken else 409
    return JSONResponse(answer.to_json_dict(), status_code=status, media_type=DICOM_JSON)


def _dicom_parts(content_type: str, body: bytes) -> list[bytes]:
    """The DICOM files of a ``multipart/related`` body, by the standard library's MIME
    parser.

    Raises:
        UnsupportedMediaType: the body is not multipart/related of application/dicom.
        InvalidInput: it holds no DICOM part.
        PayloadTooLarge: it holds more than :data:`MAX_INSTANCES`.
    """
    if not content_type.lower().startswith("multipart/related"):
        raise UnsupportedMediaType('STOW-RS takes multipart/related; type="application/dicom"'
                                   f", not {content_type[:80]!r}")
    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    boundary = BytesParser(policy=policy.HTTP).parsebytes(head, headersonly=True).get_boundary()
    if boundary and body.count(b"--" + boundary.encode("latin-1")) > MAX_INSTANCES + 1:
        # Counted before parsing: a million tiny parts would take the parser minutes.
        raise PayloadTooLarge(f"the body holds more than {MAX_INSTANCES} parts; one request "
                              f"takes at most {MAX_INSTANCES} instances")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise InvalidInput("the multipart/related body has no parts (is its boundary right?)")
    parts = [part.get_payload(decode=True) for part in message.iter_parts()
             if part.get_content_type() == "application/dicom"]
    dicom = [part for part in parts if isinstance(part, bytes) and part]
    if not dicom:
        raise InvalidInput("the body holds no application/dicom part")
    if len(dicom) > MAX_INSTANCES:
        raise PayloadTooLarge(f"the body holds {len(dicom)} instances; one request takes at "
                              f"most {MAX_INSTANCES}")
    return dicom


def _header(data: bytes) -> Dataset | None:
    try:
        return read_dicom(data, pixels=False)
    except ImageDecodeError:
        return None


async def _explain(data: bytes, header: Dataset | None, store: Store, settings: Settings,
                   deployment: Deployment, caller: Caller, admission: Admission
                   ) -> str | None:
    """Queue the instance's heatmap job; its id, or ``None`` for one of Krypton's own
    results (acknowledged, not explained).

    Raises:
        _Refused: with the DICOM failure reason.
    """
    if header is None:
        raise _Refused(CANNOT_UNDERSTAND, "not a DICOM file Krypton can read")
    if header.get("Manufacturer") == MANUFACTURER:
        return None
    route = deployment.route(header.get("Modality"), header.get("SOPClassUID"))
    if route is None:
        raise _Refused(SOP_CLASS_NOT_SUPPORTED, "no route of this deployment takes its "
                       "modality or SOP class")
    try:
        reference = InstanceRef(
            study_instance_uid=str(header.get("StudyInstanceUID", "")),
            series_instance_uid=str(header.get("SeriesInstanceUID", "")),
            sop_instance_uid=str(header.get("SOPInstanceUID", "")))
        plan = await heatmap_plan(
            store, settings, deployment, model=route.model, dataset=route.dataset,
            patch_size=None, stride=None, patch_color="gray", target_class=None,
            mode=route.mode, frame=None)
        upload = await check_image(data, max_pixels=settings.max_pixels,
                                   window=deployment.model(plan.model).preprocessing.window)
        if len(data) > settings.max_upload_bytes:
            raise PayloadTooLarge("the instance is larger than the upload limit")
        link = PacsLink(source=None, instance=reference, results_to=route.results_to)
        job = await queue_heatmap(store, deployment, plan, upload, caller, admission,
                                  pacs=link)
    except Exception as exc:  # each instance on its own: one refusal refuses no other
        raise _Refused(_reason(exc), str(exc)) from exc
    return job.id


def _reason(exc: Exception) -> int:
    for kinds, reason in _REASONS:
        if isinstance(exc, kinds):
            return reason
    if not isinstance(exc, ServiceError | ValueError):
        logger.exception("STOW-RS: an instance failed unexpectedly")
    return PROCESSING_FAILURE


def _item(header: Dataset | None, *, url: str | None = None,
          failure: int | None = None) -> Dataset:
    """A Referenced (or, with ``failure``, Failed) SOP Sequence item for one instance."""
    item = Dataset()
    item.ReferencedSOPClassUID = str(header.get("SOPClassUID", "")) if header else ""
    item.ReferencedSOPInstanceUID = str(header.get("SOPInstanceUID", "")) if header else ""
    if url is not None:
        item.RetrieveURL = url
    if failure is not None:
        item.FailureReason = failure
    return item
