"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from krypton.service.constants import RETRY_AFTER_SECONDS
from krypton.service.deps import AdminDep, OptionalCallerDep, StoreDep
from krypton.service.problems import problem_responses
from krypton.service.schemas import ReadyReport

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers (it may still lack Redis or workers: see /readyz)."""
    return {"status": "ok"}


ReadyScope = Literal["service", "api"]


@router.get("/readyz", response_model=ReadyReport,
            responses={503: {"model": ReadyReport, "description": "Redis or workers missing"},
                       **problem_responses(422)})
async def readyz(store: StoreDep, caller: OptionalCallerDep,
                 scope: Annotated[ReadyScope, Query(
                     description="service: jobs get done now (a worker lives and can "
                     "claim); api: this API can take jobs (the queue answers and holds its "
                     "consumer group, which this check makes again if Redis lost it), "
                     "workers or not. A cluster that scales workers from zero routes on "
                     "the api scope.")] = "service") -> JSONResponse:
    """Ready when workers can claim from the queue and at least one is at work; with
    ``scope=api``, when this API can queue jobs for workers that may not have started.

    The queue must answer and hold its consumer group (a Redis that came
    back empty holds none until a worker, or this check with ``scope=api``,
    makes it again), and a worker's heartbeat must be live: workers beat only
    while their claims succeed. Open to probes without a key; the workers'
    details (host, pid, current job) only to an admin key.
    """
    queue = store.jobs
    queue_ok = await queue.ping()
    if scope == "api":
        claimable = queue_ok and await queue.make_claimable()
    else:
        claimable = queue_ok and await queue.claimable()
    workers = await store.workers.live() if queue_ok else []
    ready = claimable and (scope == "api" or bool(workers))
    report = ReadyReport(status="ready" if ready else "not ready", queue=store.name,
                         queue_ok=queue_ok, claimable=claimable, live_workers=len(workers),
                         workers=workers if caller is not None and caller.admin else None)
    headers = {} if ready else {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return JSONResponse(report.model_dump(mode="json"), status_code=200 if ready else 503,
                        headers=headers)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}},
                       **problem_responses(401, 403)})
async def metrics(request: Request, _: AdminDep) -> Response:
    """Prometheus text format: requests by route and status, and their latency.

    Where the service has keys, an admin key only (Prometheus sends one with
    ``authorization: {credentials: KEY}``): route counts tell who is busy.
    """
    return Response(generate_latest(request.app.state.metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)
