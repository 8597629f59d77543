"""What a browser loads from the service: the viewer at ``/`` and the API documentation.

Everything is served by the service itself: hospital networks are often
closed, and a page that fetches its scripts from a public CDN stays blank
there. The viewer is plain HTML, CSS and JavaScript on the public API (no
build step); the documentation's Swagger UI and ReDoc files come from the
``fastapi-offline`` package, with Swagger UI's online validator switched off.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["install_pages"]

_STATIC = Path(__file__).with_name("static")
_DOCS_STATIC = "/static-docs"
_VIEWER_POLICY = ("default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                  "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def install_pages(app: FastAPI) -> None:
    """The viewer at ``/``, its files under ``/static``, documentation at ``/docs`` and
    ``/redoc`` (the app must be made with ``docs_url=None, redoc_url=None``)."""
    app.mount("/static", StaticFiles(directory=_STATIC), name="static")
    app.mount(_DOCS_STATIC, StaticFiles(directory=str(files("fastapi_offline") / "static")),
              name="static-docs")

    @app.get("/", include_in_schema=False)
    async def viewer() -> FileResponse:
        # The viewer holds an API key: no other site may frame it (clickjacking) or
        # have it run a script from elsewhere.
        return FileResponse(_STATIC / "viewer.html", media_type="text/html",
                            headers={"Content-Security-Policy": _VIEWER_POLICY,
                                     "X-Frame-Options": "DENY"})

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title}: API",
            swagger_js_url=f"{_DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{_DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{_DOCS_STATIC}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None})

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title}: API",
            redoc_js_url=f"{_DOCS_STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{_DOCS_STATIC}/favicon.png", with_google_fonts=False)
