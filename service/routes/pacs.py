"""Heatmaps of images in a PACS, named by their UIDs instead of uploaded.

The API reads the instance from the PACS (WADO-RS) before it queues the job,
so a request for a PACS it does not know, an instance the PACS lacks, a PACS
that does not answer or an image Krypton cannot decode is answered at once
with its problem, and nothing is queued or kept. From there the job is an
upload's: the same checks, limits and results. Unless asked not to, the
worker stores the results back into the image's study (see
:mod:`krypton.service.delivery`), and the job's ``delivery`` says how that went.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from krypton.core.plans import Mode
from krypton.models.pacs import PacsServer
from krypton.service.deps import (
    AdmissionDep,
    CallerDep,
    DeploymentDep,
    SettingsDep,
    StoreDep,
)
from krypton.service.pacs import PacsNotFound, fetch_instance
from krypton.service.problems import problem_responses
from krypton.service.routes.heatmaps import (
    answer_submission,
    heatmap_plan,
    queue_heatmap,
)
from krypton.service.schemas import InstanceRef, JobView, PacsLink
from krypton.service.uploads import check_image

router = APIRouter(prefix="/v1", tags=["pacs"])


class PacsInfo(BaseModel):
    name: str
    store_results: bool = Field(description="Whether results of its images go back to it.")


class PacsHeatmapRequest(InstanceRef):
    """An instance in the PACS, and the heatmap wanted (as the upload route's fields)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, min_length=1)
    dataset: str | None = Field(default=None, min_length=1)
    patch_size: int | None = None
    stride: int | None = None
    patch_color: str = "gray"
    target_class: int | None = None
    mode: Mode = "exact"
    frame: int | None = Field(default=None, ge=1)
    store_results: bool = Field(
        default=True, description="Store the Parametric Map, overlay and report back into "
        "the image's study (if the deployment lets results go to this PACS).")


@router.get("/pacs", response_model=list[PacsInfo], responses=problem_responses(401))
async def list_pacs(deployment: DeploymentDep, caller: CallerDep) -> list[PacsInfo]:
    """The PACS this deployment reads images from and stores results in."""
    return [PacsInfo(name=server.name, store_results=server.store_results)
            for server in deployment.pacs.values()]


def _pacs(deployment: DeploymentDep, name: str) -> PacsServer:
    try:
        return deployment.pacs[name]
    except KeyError:
        known = ", ".join(sorted(deployment.pacs)) or "none"
        raise PacsNotFound(f"no PACS {name!r}; this deployment knows: {known}") from None


@router.post("/pacs/{name}/heatmaps", status_code=202, response_model=JobView,
             responses={200: {"model": JobView, "description": "Finished within Prefer: wait"},
                        **problem_responses(400, 401, 404, 413, 415, 422, 429, 502, 503)})
async def submit_pacs_heatmap(
    name: str, body: PacsHeatmapRequest, request: Request, response: Response,
    store: StoreDep, settings: SettingsDep, deployment: DeploymentDep, caller: CallerDep,
    admission: AdmissionDep,
    prefer: Annotated[str | None, Header(description="wait=N: answer 200 if done in N s")
                      ] = None,
) -> JobView:
    """Queue an occlusion heatmap of an instance in the PACS ``name``, by its UIDs.

    The instance is read now: an unknown instance is 422, a PACS that does
    not answer 502, an image that cannot be decoded 415 or 422, and nothing
    is queued. The job then runs as an upload's; its ``pacs`` names the
    instance, and its ``delivery`` says what was stored back into the study.
    """
    server = _pacs(deployment, name)
    plan = await heatmap_plan(
        store, settings, deployment, model=body.model, dataset=body.dataset,
        patch_size=body.patch_size, stride=body.stride, patch_color=body.patch_color,
        target_class=body.target_class, mode=body.mode, frame=body.frame)
    data = await asyncio.to_thread(
        fetch_instance, server, body.study_instance_uid, body.series_instance_uid,
        body.sop_instance_uid, max_bytes=settings.max_upload_bytes,
        timeout=settings.pacs_timeout_seconds)
    upload = await check_image(data, max_pixels=settings.max_pixels, frame=body.frame,
                               window=deployment.model(plan.model).preprocessing.window)
    del data
    results_to = server.name if body.store_results and server.store_results else None
    link = PacsLink(source=server.name, results_to=results_to, instance=InstanceRef(
        study_instance_uid=body.study_instance_uid,
        series_instance_uid=body.series_instance_uid, sop_instance_uid=body.sop_instance_uid))
    job = await queue_heatmap(store, deployment, plan, upload, caller, admission, pacs=link)
    return await answer_submission(request, response, store.jobs, job, prefer)
