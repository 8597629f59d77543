"""The OpenAPI document as the service really answers: errors as problem+json.

FastAPI declares its own validation error (``HTTPValidationError``, as
``application/json``) on every route with parameters; the service answers
every error with an RFC 9457 problem document instead. The routes declare their
own errors as problem documents (:func:`~krypton.service.problems.problem_responses`);
this module adds the ``Problem`` schema to the components, turns FastAPI's
own 422 into a problem document too, and describes optional form fields as
what they are in a multipart body: left out, never null.

The document describes the mode the service runs in: with keys, the routes
that need one declare bearer authentication; running open, none does (a
client generated from it would otherwise ask for a key nothing checks).
``openapi/openapi.json`` is the document with keys, what a deployment serves.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from krypton.service.problems import PROBLEM_MEDIA_TYPE, Problem, problem_responses

__all__ = ["install_openapi", "openapi_document"]

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def install_openapi(app: FastAPI, *, keyed: bool) -> None:
    """Serve (and cache) the corrected document of this mode at ``/openapi.json``."""

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(app, keyed=keyed)
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]


def openapi_document(app: FastAPI, *, keyed: bool) -> dict[str, Any]:
    """The app's document as a service with keys (``keyed``) or running open serves it."""
    schema = _with_problems(get_openapi(title=app.title, version=app.version,
                                        description=app.description, routes=app.routes))
    return schema if keyed else without_keys(schema)


def without_keys(schema: dict[str, Any]) -> dict[str, Any]:
    """A keyed service's document as the same service running open serves it."""
    schema.get("components", {}).pop("securitySchemes", None)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.pop("security", None)
    return schema


def _with_problems(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = Problem.model_json_schema()
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for name, component in components.items():
        if name.startswith("Body_"):
            _form_fields_are_omitted_not_null(component)
    too_long = problem_responses(414)[414]  # the door answers it on every route
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                if "HTTPValidationError" in str(response.get("content", "")):
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_REF}}
            operation.setdefault("responses", {}).setdefault("414", too_long)
    return schema


def _form_fields_are_omitted_not_null(body: dict[str, Any]) -> None:
    """An optional form field is left out, never sent as null: multipart has no null.

    FastAPI describes ``int | None`` form fields as ``anyOf: [integer, null]``;
    a client following that would send the text ``null``.
    """
    for field in body.get("properties", {}).values():
        choices = field.get("anyOf")
        if choices and {"type": "null"} in choices:
            kept = [choice for choice in choices if choice != {"type": "null"}]
            del field["anyOf"]
            if len(kept) == 1:
                field.update(kept[0])
            else:
                field["anyOf"] = kept
