"""The HTTP face of the service's errors: every one as ``application/problem+json``.

The errors and their documents live in :mod:`krypton.service.problems`,
which workers share; here the handlers installed by :func:`install_handlers`
answer with them, and with FastAPI's request validation errors and
Starlette's own 404 and 405, so that every error a client sees has the same
shape.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from krypton.models import ModelError
from krypton.service.constants import RETRY_AFTER_SECONDS
from krypton.service.problems import (
    PROBLEM_MEDIA_TYPE,
    PayloadTooLarge,
    ServiceError,
    invalid_input,
    problem,
    problem_for,
    shortened,
)

__all__ = ["install_handlers"]

logger = logging.getLogger(__name__)


def _problem_response(document: dict[str, Any], *, instance: str,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    """``document`` as an ``application/problem+json`` response.

    Every 503 says when to try again (``Retry-After``): overload and a
    restarting Redis are both temporary.
    """
    document.setdefault("instance", shortened(instance, 200))
    headers = dict(headers or {})
    if document["status"] == 503:
        headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
    return JSONResponse(document, status_code=document["status"],
                        media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _respond(request: Request, document: dict[str, Any],
             headers: dict[str, str] | None = None) -> JSONResponse:
    return _problem_response(document, instance=request.url.path, headers=headers)


def install_handlers(app: FastAPI) -> None:
    """Map every error a route can raise to problem+json."""

    async def domain(request: Request, exc: Exception) -> JSONResponse:
        document = problem_for(exc)
        if document["status"] == 502:  # the PACS's fault, said in the detail: no traceback
            logger.warning("%s %s: %s", request.method, request.url.path, document["detail"])
        elif document["status"] >= 500 and document["status"] != 503:
            logger.error("%s %s failed: %s", request.method, request.url.path,
                         type(exc).__name__, exc_info=exc)
        return _respond(request, document, getattr(exc, "headers", None))

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        details = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'] if p != 'body')}: {_message(error)}"
            for error in exc.errors())
        return _respond(request, invalid_input(details))

    async def http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        slug, title = {400: ("malformed-body", "The request body cannot be read"),
                       404: ("not-found", "Not found"),
                       405: ("method-not-allowed", "Method not allowed"),
                       413: (PayloadTooLarge.slug, PayloadTooLarge.title),
                       }.get(exc.status_code, ("http-error", _phrase(exc.status_code)))
        detail = str(exc.detail)
        if exc.status_code == 400:  # the body parser's words: say what a body must be
            form = request.headers.get("content-type", "").startswith("multipart/")
            detail = detail.rstrip(". ") + (
                ". Send the fields as multipart/form-data, the image as a file part "
                "(curl -F image=@FILE)." if form else ". Send the body as UTF-8 JSON.")
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return _respond(request, problem(exc.status_code, slug, title, detail), headers=headers)

    for error in (ServiceError, ModelError, RedisError, Exception):
        app.add_exception_handler(error, domain)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)


def _message(error: dict[str, Any]) -> str:
    """pydantic's message, but a text field where a file belongs said in the caller's terms
    (pydantic speaks of UploadFile and a Python class)."""
    if "Expected UploadFile" in str(error.get("msg", "")):
        field = next((str(p) for p in error["loc"] if p != "body"), "image")
        return f"must be a file part (curl -F {field}=@FILE), not a text field"
    return str(error["msg"])


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path (Starlette names one route's)."""
    return [method for method in _METHODS
            if any(route.matches({**request.scope, "method": method})[0] is Match.FULL
                   for route in request.app.routes)]
