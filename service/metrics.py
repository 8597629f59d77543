"""Prometheus metrics of one API process, in their own registry (one per app)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram

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

    async def middleware(self, request: Request,
                         call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        # The route template, never the raw path, and only methods HTTP knows: ids and
        # made-up methods would grow the label sets without bound.
        template = getattr(route, "path", "unmatched")
        method = request.method if request.method in _METHODS else "other"
        self.requests.labels(method, template, str(response.status_code)).inc()
        self.latency.labels(method, template).observe(time.perf_counter() - started)
        return response
