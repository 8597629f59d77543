"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from krypton.service.deps import QueueDep
from krypton.service.schemas import ReadyReport

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers (it may still lack Redis or workers: see /readyz)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadyReport,
            responses={503: {"model": ReadyReport, "description": "Redis or workers missing"}})
async def readyz(queue: QueueDep) -> JSONResponse:
    """Ready when the queue answers and at least one worker's heartbeat is live."""
    queue_ok = await queue.ping()
    workers = await queue.workers() if queue_ok else []
    ready = queue_ok and bool(workers)
    report = ReadyReport(status="ready" if ready else "not ready", queue=queue.name,
                         queue_ok=queue_ok, workers=workers)
    return JSONResponse(report.model_dump(mode="json"), status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format: requests by route and status, and their latency."""
    return Response(generate_latest(request.app.state.metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)
