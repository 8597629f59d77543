"""Talking to a PACS over DICOMweb: read one instance (WADO-RS), store results (STOW-RS).

Through ``dicomweb-client``, with its own retries turned off: by default it
retries every failure, a refused connection included, five times over about
30 seconds, which would hold a request that long. Reading an instance answers
at once (the caller retries); storing results retries with backoff in
:mod:`krypton.service.delivery`, where the job says how it went.

The calls block (``requests``): callers run them in a thread. What they raise
is one of the service's problems, worded without UIDs or URLs: a failure
past 500 is logged, and a study's UIDs identify a patient's imaging.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import requests
from dicomweb_client import DICOMwebClient
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO

from krypton.models.pacs import PacsServer
from krypton.service.problems import InvalidInput, PayloadTooLarge, ServiceError

__all__ = ["InstanceNotFound", "PacsNotFound", "PacsRefused", "PacsUnavailable", "Stored",
           "fetch_instance", "store_instances"]

DEFAULT_TIMEOUT_SECONDS = 30.0
COMPRESSION_ALLOWANCE = 16
"""How much larger than the upload limit an instance's pixels may be uncompressed: a JPEG
or JPEG 2000 file is rarely smaller than a sixteenth of its pixels."""
_RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class PacsNotFound(ServiceError):
    status, slug, title = 404, "pacs-not-found", "No such PACS"


class InstanceNotFound(ServiceError):
    status, slug, title = 422, "instance-not-found", "Instance not in the PACS"


class PacsUnavailable(ServiceError):
    """The PACS did not answer, or answered with a server error: worth trying again."""

    status, slug, title = 502, "pacs-unavailable", "PACS unavailable"


class PacsRefused(ServiceError):
    """The PACS answered and refused: trying again would not change its answer."""

    status, slug, title = 502, "pacs-refused", "PACS refused the request"


@dataclass(frozen=True)
class Stored:
    """One instance the PACS said it stored."""

    sop_class_uid: str
    sop_instance_uid: str


def client(server: PacsServer, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> DICOMwebClient:
    """A client of ``server`` without retries, with its credentials."""
    session = requests.Session()
    auth = server.basic_auth()
    if auth is not None:
        session.auth = auth
    web = DICOMwebClient(server.url, session=session, headers=server.headers(),
                         timeout=timeout)
    web.set_http_retry_params(retry=False)
    return web


def fetch_instance(server: PacsServer, study: str, series: str, instance: str, *,
                   max_bytes: int, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> bytes:
    """The instance as a DICOM file, in the transfer syntax the PACS stored it in.

    Its header is read first (WADO-RS metadata): an instance that holds no image, or
    whose pixels would pass the upload limit even compressed, is refused before any
    of it is sent.

    Raises:
        InstanceNotFound: the PACS has no such instance.
        PacsUnavailable: the PACS did not answer, or failed.
        PacsRefused: the PACS refused the request (credentials, say).
        PayloadTooLarge: the instance is larger than ``max_bytes``.
        InvalidInput: the instance holds no image.
    """
    web = client(server, timeout=timeout)
    try:
        with _answers(server, "read the instance", missing=InstanceNotFound(
                f"PACS {server.name!r} has no instance of these UIDs in this study and "
                "series")):
            metadata = web.retrieve_instance_metadata(study, series, instance)
    except InstanceNotFound:
        _check_base_url(web, server)
        raise
    if not _number(metadata, "00280010", 0):  # no Rows: an SR, a PDF, a waveform
        raise InvalidInput("the instance holds no image (it has no Rows), and a heatmap "
                           "explains an image")
    _refuse_too_large(metadata, max_bytes)
    with _answers(server, "read the instance"):
        # "*": the stored transfer syntax; Orthanc cannot transcode JPEG 2000, and
        # decoding is ours either way.
        dataset = web.retrieve_instance(study, series, instance,
                                        media_types=(("application/dicom", "*"),))
    if dataset.get("SOPInstanceUID") != instance:
        raise PacsRefused(f"PACS {server.name!r} answered with another instance than the one "
                          "asked for")
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the instance is {len(data)} bytes, more than the limit of "
                              f"{max_bytes} bytes")
    return data


def store_instances(server: PacsServer, study: str, documents: Sequence[bytes], *,
                    timeout: float = DEFAULT_TIMEOUT_SECONDS) -> list[Stored]:
    """Store ``documents`` (encoded DICOM files) into ``study`` with one STOW-RS request.

    Raises:
        PacsUnavailable: no answer, a server error or a 408/429: worth trying again.
        PacsRefused: the PACS refused one or more of them.
    """
    web = client(server, timeout=timeout)
    datasets = [dcmread(DicomBytesIO(document)) for document in documents]
    with _answers(server, "store the results"):
        answer = web.store_instances(datasets, study_instance_uid=study)
    try:
        failed = answer.get("FailedSOPSequence") or []
        if failed:
            reasons = sorted({f"0x{int(item.get('FailureReason', 0)):04X}" for item in failed})
            raise PacsRefused(f"PACS {server.name!r} refused {len(failed)} of "
                              f"{len(documents)} result objects (failure reasons "
                              f"{', '.join(reasons)})")
        stored = [Stored(str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
                  for item in answer.get("ReferencedSOPSequence") or []]
    except (AttributeError, KeyError, TypeError, ValueError):
        raise PacsRefused(f"PACS {server.name!r} answered the store with a malformed STOW-RS "
                          "response") from None
    sent = {str(dataset.SOPInstanceUID) for dataset in datasets}
    if {item.sop_instance_uid for item in stored} != sent:
        raise PacsRefused(f"PACS {server.name!r} did not confirm storing the "
                          f"{len(documents)} result objects sent (it listed {len(stored)})")
    return stored


class _answers:
    """Turn what ``requests`` raises into the service's problems, worded without UIDs."""

    def __init__(self, server: PacsServer, doing: str,
                 missing: ServiceError | None = None) -> None:
        self.server, self.doing, self.missing = server, doing, missing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 _: object) -> None:
        if exc is None or not isinstance(exc, requests.RequestException):
            return
        name = self.server.name
        status = exc.response.status_code if exc.response is not None else None
        if status == 404 and self.missing is not None:
            raise self.missing from None
        if status is None or status in _RETRYABLE_STATUSES:
            cause = (f"answered HTTP {status}" if status is not None
                     else f"did not answer ({type(exc).__name__})")
            raise PacsUnavailable(f"could not {self.doing}: PACS {name!r} {cause}") from None
        raise PacsRefused(f"could not {self.doing}: PACS {name!r} answered HTTP {status}"
                          ) from None


def _check_base_url(web: DICOMwebClient, server: PacsServer) -> None:
    """Tell a wrong base URL from a missing instance: a DICOMweb server answers a search
    for one study with DICOM JSON; a URL that is not its base answers 404, 400 (Orthanc's
    own REST API, for ``/studies?limit=1``), or something that is not DICOM JSON.

    Raises:
        PacsRefused: the base URL does not answer a search as DICOMweb does.
    """
    wrong = PacsRefused(f"PACS {server.name!r} does not answer a study search at its URL "
                        "as DICOMweb does: is the URL its DICOMweb base (for Orthanc, ending "
                        "in /dicom-web)?")
    try:
        found = web.search_for_studies(limit=1)
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 500
        if 400 <= status < 500 and status not in (401, 403):
            raise wrong from None
        return  # the instance's 404 stands
    except requests.RequestException:
        return
    except ValueError:  # not JSON at all
        raise wrong from None
    if not all(isinstance(item, dict) for item in found):
        raise wrong


def _refuse_too_large(metadata: dict[str, Any], max_bytes: int) -> None:
    """Refuse an instance whose pixels, uncompressed, are far beyond the upload limit."""
    samples = _number(metadata, "00280002", 1)  # SamplesPerPixel
    bits = _number(metadata, "00280100", 8)  # BitsAllocated
    frames = _number(metadata, "00280008", 1)  # NumberOfFrames
    pixels = _number(metadata, "00280010", 0) * _number(metadata, "00280011", 0)
    size = pixels * frames * samples * max(bits, 8) // 8
    if size > max_bytes * COMPRESSION_ALLOWANCE:
        raise PayloadTooLarge(f"the instance holds {size} bytes of pixels uncompressed, far "
                              f"more than the upload limit of {max_bytes} bytes")


def _number(metadata: dict[str, Any], tag: str, default: int) -> int:
    """An integer attribute of DICOM JSON metadata, or ``default`` where absent or odd."""
    try:
        return int(metadata[tag]["Value"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return default
