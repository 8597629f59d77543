"""The service's errors and their RFC 9457 problem documents, apart from HTTP.

Routes, the queue and workers raise these (or let the models' errors
through); :func:`problem_for` gives any of them its problem document with a
stable ``type``. The HTTP layer answers with it
(:func:`krypton.service.errors.install_handlers`), and a failed job stores
the same document (:func:`krypton.core.jobs.failure` adds the engine's
errors, which only workers meet). Nothing here echoes request bodies: they
are patient images. Nothing here imports FastAPI: workers import it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from krypton.models import CheckpointError, ModelError
from krypton.service.constants import RETRY_AFTER_SECONDS

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "RETRY_AFTER_SECONDS",
    "Problem",
    "Forbidden",
    "QueueFull",
    "QuotaExceeded",
    "RateLimited",
    "StoreBusy",
    "StoreFull",
    "TunedConfigUnreadable",
    "Unauthorized",
    "DatasetNotFound",
    "InvalidInput",
    "KeysUnavailable",
    "JobLost",
    "JobNotFound",
    "NotForThisInput",
    "PayloadTooLarge",
    "QueueUnavailable",
    "ResultNotReady",
    "ServiceError",
    "UnsupportedMediaType",
    "invalid_input",
    "problem",
    "problem_for",
    "problem_responses",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TYPE = "urn:krypton:problem:{}"


class ServiceError(Exception):
    """Root of the service's errors: an HTTP status, a stable slug and a title."""

    status = 500
    slug = "internal-error"
    title = "Internal error"

    def __init__(self, detail: str, *, job_id: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.job_id = job_id
        self.headers = headers or {}


class Unauthorized(ServiceError):
    """No valid API key; the answer says how to send one (RFC 6750)."""

    status, slug, title = 401, "unauthorized", "API key required"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="krypton"'})


class UriTooLong(ServiceError):
    status, slug, title = 414, "uri-too-long", "Request target too long"


class Forbidden(ServiceError):
    status, slug, title = 403, "forbidden", "Not allowed for this key"


class RateLimited(ServiceError):
    status, slug, title = 429, "rate-limited", "Too many requests"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class QuotaExceeded(ServiceError):
    """One caller holds as many unfinished jobs, or as many stored bytes, as one may."""

    status, slug, title = 429, "quota-exceeded", "Quota exceeded"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class InvalidInput(ServiceError):
    status, slug, title = 422, "invalid-input", "Invalid input"


class UnsupportedMediaType(ServiceError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported image type"


class PayloadTooLarge(ServiceError):
    status, slug, title = 413, "payload-too-large", "Upload too large"


class JobNotFound(ServiceError):
    status, slug, title = 404, "job-not-found", "No such job"


class JobLost(ServiceError):
    """A job the store lost with its data (Redis restarted empty), not one never made."""

    status, slug, title = 404, "job-lost", "Job lost by the job store"

    @classmethod
    def of(cls, job_id: str, since: dt.datetime) -> JobLost:
        """The job, accepted before the store started afresh ``since``."""
        return cls(f"job {job_id} was accepted before the job store (Redis) started afresh "
                   f"without its data at {since:%Y-%m-%d %H:%M:%S} UTC; it is gone: submit "
                   "it again", job_id=job_id)


class DatasetNotFound(ServiceError):
    status, slug, title = 404, "dataset-not-found", "No such dataset"


class TunedConfigUnreadable(ServiceError):
    """The service's own tuned config of a dataset is broken: the server's fault, and
    nothing the caller sent; the log says what is wrong with it, the answer does not
    (it would name server paths)."""

    status, slug, title = 500, "dataset-config-unreadable", "Tuned config unreadable"

    @classmethod
    def of(cls, dataset: str) -> TunedConfigUnreadable:
        return cls(f"the tuned config of dataset {dataset!r} that this service keeps is "
                   "unreadable; an administrator must tune the dataset again or remove the "
                   "config (the service's log says what is wrong with it)")


class ResultNotReady(ServiceError):
    status, slug, title = 409, "result-not-ready", "Result not ready"


class NotForThisInput(ServiceError):
    status, slug, title = 409, "not-for-this-input", "Not available for this input"


class QueueUnavailable(ServiceError):
    status, slug, title = 503, "queue-unavailable", "Queue unavailable"


class KeysUnavailable(ServiceError):
    """The keys file broke while the service ran: no key can be checked, so none is
    taken (a revocation may be what was being written)."""

    status, slug, title = 503, "keys-unavailable", "Keys unavailable"

    @classmethod
    def now(cls) -> KeysUnavailable:
        return cls("the service's API keys file cannot be read, so no key can be checked; "
                   "the operator must repair it (the service's log says what is wrong)")


class QueueFull(ServiceError):
    status, slug, title = 503, "queue-full", "Too much work queued"


class StoreFull(ServiceError):
    """Redis is close to its memory limit: nothing more is stored until jobs expire."""

    status, slug, title = 503, "store-full", "Job store full"


class StoreBusy(RedisError):
    """Every connection to Redis stayed in use for the pool's whole wait: overload, not an
    outage (Redis answers; this process asked too much of it at once)."""


class Problem(BaseModel):
    """An RFC 9457 problem document, the body of every error answer."""

    type: str = Field(description="A stable URN naming the kind of problem.")
    title: str
    status: int
    detail: str = Field(description="What went wrong and what to change.")
    instance: str | None = Field(default=None, description="The request path.")
    job_id: str | None = None


_MEANINGS = {
    400: "The request could not be parsed (a malformed form or body)",
    401: "No valid API key (send Authorization: Bearer KEY)",
    403: "The key's scope does not allow this",
    404: "No such job, dataset, PACS or route, or not one this key may see",
    409: "The result does not exist yet, or not for this input",
    413: "The upload is larger than the limits (bytes or pixels)",
    414: "The path and query are longer than any route's (2048 bytes)",
    415: "The upload is not an image type the service reads",
    422: "A parameter or the image is not valid; the detail says which and why",
    429: "Too many requests, jobs or stored bytes from this key; see Retry-After",
    502: "The PACS did not answer, failed, or refused the request",
    503: "The queue is full, busy or unreachable, or its store is full; see Retry-After",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries declaring each status as a problem document."""
    return {status: {"description": _MEANINGS[status],
                     "content": {PROBLEM_MEDIA_TYPE: {
                         "schema": {"$ref": "#/components/schemas/Problem"}}}}
            for status in statuses}


MAX_DETAIL = 1000
"""Longest ``detail`` and ``instance`` a problem carries: they may quote what the caller
sent, and a 100 KB parameter is not echoed back."""


def shortened(text: str, limit: int = MAX_DETAIL) -> str:
    """``text``, cut to ``limit`` characters with the count of what was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def problem(status: int, slug: str, title: str, detail: str, *, instance: str | None = None,
            job_id: str | None = None) -> dict[str, Any]:
    """A problem document; ``job_id`` is the RFC's allowed extension member."""
    document: dict[str, Any] = {"type": _TYPE.format(slug), "title": title, "status": status,
                                "detail": shortened(detail)}
    if instance is not None:
        document["instance"] = shortened(instance, 200)
    if job_id is not None:
        document["job_id"] = shortened(job_id, 64)  # ids are 32 characters; a caller's may not be
    return document


def invalid_input(detail: str) -> dict[str, Any]:
    """The 422 problem document for a request the caller can fix."""
    return problem(InvalidInput.status, InvalidInput.slug, InvalidInput.title, detail)


def problem_for(exc: BaseException) -> dict[str, Any]:
    """The problem document for any exception a request or a job can end with."""
    if isinstance(exc, ServiceError):
        return problem(exc.status, exc.slug, exc.title, exc.detail, job_id=exc.job_id)
    if isinstance(exc, StoreBusy):
        return problem(503, "queue-busy", "Queue busy",
                       "every connection to the job queue (Redis) is in use; try again shortly")
    if isinstance(exc, RedisError) and str(exc).startswith("OOM"):
        return problem(503, StoreFull.slug, StoreFull.title,
                       "the job store (Redis) reached its memory limit; try again later")
    if isinstance(exc, RedisError):
        return problem(503, QueueUnavailable.slug, QueueUnavailable.title,
                       "the job queue (Redis) is unreachable; try again shortly")
    if isinstance(exc, CheckpointError):
        # The deployment's checkpoint is broken: the server's fault, not the caller's.
        return problem(500, "model-unavailable", "Model unavailable", str(exc))
    if isinstance(exc, ModelError):
        return invalid_input(str(exc))
    return problem(500, "internal-error", "Internal error",
                   "the server failed unexpectedly; the error was logged")
