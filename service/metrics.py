"""Prometheus metrics of one API process, in their own registry (one per app).

Counted by a plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` would hide
a client's disconnect from the routes, and ``Prefer: wait`` stops waiting for a
client that has gone.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Metrics"]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "krypton_http_requests", "HTTP requests answered",
            ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "krypton_http_request_seconds", "Time to answer, Prefer: wait included",
            ["method", "route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """``app``, counting each HTTP request by route and status, and timing it."""

        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started, status = time.perf_counter(), 500  # an exception answers 500

            async def send_counted(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_counted)
            finally:
                # The route template, never the raw path, and only methods HTTP knows:
                # ids and made-up methods would grow the label sets without bound.
                template = getattr(scope.get("route"), "path", "unmatched")
                method = scope["method"] if scope["method"] in _METHODS else "other"
                self.requests.labels(method, template, str(status)).inc()
                self.latency.labels(method, template).observe(time.perf_counter() - started)

        return counted
