"""The door: what a request must show before its body is read.

Uploads are up to 32 MiB each (tuning takes sixteen); reading one before
checking the caller would let anyone without a key make the service receive
and spool gigabytes. :class:`Intake` answers from the headers alone, before a
byte of the body is read:

- a body sent without a valid API key (when the service has keys) gets 401,
  and one for an admin route (tuning) from a key without that scope, 403;
- a body larger than its route accepts, by its ``Content-Length``, gets 413;
- a body sent without a length (chunked) is counted as it streams and cut
  off with 413 at the route's limit;
- a request target longer than any route's (:data:`MAX_TARGET_BYTES`) gets 414,
  so no log line carries a caller's megabyte of path.

The routes check keys again, and admission, as before; this only makes sure
the refusals that need no body come before it.
"""

from __future__ import annotations

import re

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from krypton.service.auth import ApiKey, KeyStore
from krypton.service.deps import find_key
from krypton.service.problems import (
    PROBLEM_MEDIA_TYPE,
    Forbidden,
    KeysUnavailable,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    UriTooLong,
    problem,
)

__all__ = ["FORM_OVERHEAD_BYTES", "MAX_TARGET_BYTES", "SMALL_BODY_BYTES", "Intake",
           "body_limit", "needs_admin"]

FORM_OVERHEAD_BYTES = 1024 * 1024
"""What a multipart form adds to its files: boundaries, part headers, the other fields."""
STOW_MAX_IMAGES = 4
"""A STOW-RS request carries at most this many uploads' worth of instances (a PACS's
forwarding rule sends one instance a request)."""
SMALL_BODY_BYTES = 64 * 1024
"""The most any route without an upload accepts."""
MAX_TARGET_BYTES = 2048
"""The longest path and query string accepted: every route's fits in a few hundred."""
_TUNING = re.compile(r"/v1/datasets/[^/]+/tuning")


def body_limit(method: str, path: str, *, max_upload_bytes: int, max_images: int) -> int:
    """The largest body the route at ``method path`` accepts."""
    if method == "POST" and path in ("/v1/heatmaps", "/v1/predict"):
        return max_upload_bytes + FORM_OVERHEAD_BYTES
    if method == "POST" and path == "/dicomweb/studies":
        return max_upload_bytes * STOW_MAX_IMAGES + FORM_OVERHEAD_BYTES
    if method == "POST" and _TUNING.fullmatch(path):
        return max_upload_bytes * max_images + FORM_OVERHEAD_BYTES
    return SMALL_BODY_BYTES


class Intake:
    """ASGI middleware: refuse from the headers what needs no body to refuse."""

    def __init__(self, app: ASGIApp, *, max_upload_bytes: int, max_images: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.max_images = max_images

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The first of repeated headers, as the routes read them.
        headers = dict(reversed(scope["headers"]))
        length = headers.get(b"content-length", b"")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        has_body = chunked or (length.isdigit() and int(length) > 0)
        limit = body_limit(scope["method"], scope["path"], max_upload_bytes=self.max_upload_bytes,
                           max_images=self.max_images)
        keys: KeyStore | None = getattr(scope["app"].state, "keys", None)
        refusal: ServiceError | None = None
        try:
            key = _key(keys, headers) if has_body and keys is not None else None
        except KeysUnavailable as exc:
            await _refuse(exc, scope, receive, send)
            return
        target = len(scope.get("raw_path") or scope["path"].encode()) + len(
            scope.get("query_string", b""))
        if target > MAX_TARGET_BYTES:
            refusal = UriTooLong(f"the request target is {target} bytes, more than the "
                                 f"{MAX_TARGET_BYTES} any route takes")
        elif has_body and keys is not None and key is None:
            sent = ("the key sent is unknown or revoked; " if b"authorization" in headers
                    else "")
            refusal = Unauthorized(f"{sent}send a valid API key as 'Authorization: Bearer KEY' "
                                   "before the body; an operator creates one with `krypton "
                                   "keys add NAME`")
        elif key is not None and key.scope != "admin" and needs_admin(scope["method"],
                                                                       scope["path"]):
            refusal = Forbidden(f"key {key.name!r} has scope {key.scope!r}; this route needs an "
                                "admin key")
        elif length.isdigit() and int(length) > limit:
            refusal = PayloadTooLarge(f"the request body is {int(length)} bytes, more than "
                                      f"this route takes: {_described(limit, self)}")
        if refusal is not None:
            await _refuse(refusal, scope, receive, send)
            return
        await self.app(scope, _counted(receive, limit) if chunked else receive, send)


def _described(limit: int, intake: Intake) -> str:
    """A route's body limit as what it is made of."""
    if limit == SMALL_BODY_BYTES:
        return f"{limit} bytes (it takes no upload)"
    images = (limit - FORM_OVERHEAD_BYTES) // intake.max_upload_bytes
    each = f"{intake.max_upload_bytes / 2**20:g} MiB"
    return (f"{images} images of at most {each}" if images > 1 else f"an image of at most "
            f"{each}") + " and 1 MiB for the rest of the form"


def needs_admin(method: str, path: str) -> bool:
    """Whether the route at ``method path`` takes a body from admin keys only (tuning)."""
    return method == "POST" and _TUNING.fullmatch(path) is not None


def _key(keys: KeyStore, headers: dict[bytes, bytes]) -> ApiKey | None:
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    return find_key(keys, token.strip()) if scheme.lower() == "bearer" else None


async def _refuse(error: ServiceError, scope: Scope, receive: Receive,
                  send: Send) -> None:
    document = problem(error.status, error.slug, error.title, error.detail,
                       instance=scope["path"])
    response = JSONResponse(document, status_code=error.status, media_type=PROBLEM_MEDIA_TYPE,
                            headers={**error.headers, "Connection": "close"})
    await response(scope, receive, send)


def _counted(receive: Receive, limit: int) -> Receive:
    """``receive``, cutting a body that streams past ``limit`` off with 413."""
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit:
            # An HTTPException, so FastAPI's body parsing lets it through to the handler.
            raise StarletteHTTPException(413, f"the request body is over this route's limit "
                                              f"of {limit} bytes")
        return message

    return counted
