"""Heatmap jobs: submit, poll, fetch results, delete; and synchronous prediction."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Literal

import numpy as np
from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    Header,
    Query,
    Request,
    Response,
    UploadFile,
)
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from krypton import render
from krypton.core import dicom_results
from krypton.core.dicom_results import DicomSource, Heatmap, dicom_source, heatmap_geometry
from krypton.core.plans import HeatmapPlan, Mode, TuningPlan, resolve_heatmap
from krypton.core.records import JobKind, PredictParams, heatmap_metadata
from krypton.models import DatasetConfig, decode_image
from krypton.models.deployment import DeployedModel, Deployment
from krypton.service import constants
from krypton.service.auth import Caller
from krypton.service.config import Settings
from krypton.service.deps import (
    AdmissionDep,
    CallerDep,
    DeploymentDep,
    QueueDep,
    SettingsDep,
    StoreDep,
    get_optional_caller,
    refuse_ambiguous_fields,
)
from krypton.service.events import EventHub, job_events
from krypton.service.problems import (
    JobLost,
    JobNotFound,
    NotForThisInput,
    QueueUnavailable,
    ResultNotReady,
    problem_responses,
)
from krypton.service.schemas import (
    ClassProbability,
    Job,
    JobStatus,
    JobView,
    PacsLink,
    PredictResponse,
    new_job_id,
)
from krypton.service.store import Admission, JobQueue, Store
from krypton.service.tuned import tuned_config
from krypton.service.uploads import Upload, read_image
from krypton.service.weights import served_weights

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["heatmaps"])

DICOM_MEDIA_TYPE = "application/dicom"
DROPPED_HEADER = "Krypton-Dropped-Attributes"
"""Names the source header attributes a DICOM result left out for their invalid values."""
_PREFER_WAIT = re.compile(r'(?:^|[,;\s])wait\s*=\s*(?:(\d+)|"(\d+)")\s*(?:$|[,;])', re.IGNORECASE)

ImagePart = Annotated[UploadFile, File(description=(
    "PNG, JPEG or TIFF (8/16-bit), or DICOM (judged by content)."))]
FramePart = Annotated[int | None, Form(ge=1, description=(
    "Which frame of a multi-frame DICOM image to explain (1-based); needed for those."))]

_UPLOAD_PROBLEMS = problem_responses(400, 401, 413, 415, 422, 429, 503)
_JOB_PROBLEMS = problem_responses(401, 404, 422, 503)
_RESULT_PROBLEMS = problem_responses(401, 404, 409, 422, 503)


def job_links(job: Job) -> dict[str, str]:
    base = f"/v1/heatmaps/{job.id}"
    if job.kind is JobKind.tuning:
        assert isinstance(job.params, TuningPlan)
        return {"self": f"/v1/datasets/{job.params.dataset}/tuning/{job.id}"}
    links = {"self": base}
    if job.kind is JobKind.heatmap:
        links["events"] = f"{base}/events"
    if job.status is JobStatus.succeeded and job.kind is JobKind.heatmap:
        links |= {fmt: f"{base}/heatmap.{fmt}" for fmt in ("png", "json", "npy")}
        links["overlay_png"] = f"{base}/heatmap.png?overlay=1"
        if job.dicom and job.dicom_unmade is None:
            links |= {"dcm": f"{base}/heatmap.dcm", "overlay_dcm": f"{base}/overlay.dcm"}
    return links


def view(job: Job) -> JobView:
    return JobView.of(job, job_links(job))


async def wait_for(queue: JobQueue, job: Job, seconds: float, *,
                   gone: Callable[[], Awaitable[bool]] | None = None) -> Job:
    """The job once finished, or as it stands after ``seconds``: read again only when
    the store says it changed (or at the store's fallback interval). Waiting stops
    when ``gone`` says the client has left: nobody would read the answer."""
    if seconds <= 0 or job.status.finished:
        return job
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    async with queue.changes(job.id) as changes:
        while True:
            current = await queue.get(job.id)  # after the watch began: no write is missed
            if current is None:
                return job
            job = current
            if job.status.finished or loop.time() >= deadline:
                return job
            await changes.next(deadline - loop.time())
            if gone is not None and await gone():
                return job


def prefer_wait(prefer: str | None) -> int:
    """Seconds asked for by ``Prefer: wait=N`` or ``wait="N"`` (RFC 7240), capped; 0
    without it, or with a value that is not a whole number (a preference the server may
    ignore). A number of any length is read as the cap without converting it."""
    match = _PREFER_WAIT.search(prefer or "")
    if match is None:
        return 0
    digits = (match.group(1) or match.group(2)).lstrip("0") or "0"
    cap = constants.MAX_WAIT_SECONDS
    return cap if len(digits) > len(str(cap)) else min(int(digits), cap)


async def _dataset_config(store: Store, deployment: Deployment,
                          dataset: str | None) -> DatasetConfig | None:
    """The named dataset's tuned config, if the deployment serves it and it is tuned."""
    if dataset is None or dataset not in deployment.datasets:
        return None  # resolve_heatmap names the unknown dataset
    return await tuned_config(store.configs, deployment, dataset)


@router.post("/heatmaps", status_code=202, response_model=JobView,
             dependencies=[Depends(refuse_ambiguous_fields)],
             responses={200: {"model": JobView, "description": "Finished within Prefer: wait"},
                        **_UPLOAD_PROBLEMS})
async def submit_heatmap(
    request: Request,
    image: ImagePart,
    store: StoreDep,
    settings: SettingsDep,
    deployment: DeploymentDep,
    caller: CallerDep,
    admission: AdmissionDep,
    response: Response,
    model: Annotated[str | None, Form(min_length=1, description=(
        "Deployed model; default the dataset's or the first deployed."))] = None,
    dataset: Annotated[str | None, Form(min_length=1)] = None,
    patch_size: Annotated[int | None, Form(description="Patch side, model-input pixels.")
                          ] = None,
    stride: Annotated[int | None, Form(description="Step, model-input pixels.")] = None,
    patch_color: Annotated[str, Form(description="gray, black, white, mean or R,G,B")
                           ] = "gray",
    target_class: Annotated[int | None, Form(description="Default: the predicted class.")
                            ] = None,
    mode: Annotated[Mode, Form()] = "exact",
    frame: FramePart = None,
    prefer: Annotated[str | None, Header(description="wait=N: answer 200 if done in N s")
                      ] = None,
) -> JobView:
    """Queue an occlusion heatmap of the uploaded image.

    The job belongs to the API key that submitted it. A heatmap that would
    book more work than the service allows one job is refused (422) with the
    smallest stride that fits.
    """
    plan = await heatmap_plan(
        store, settings, deployment, model=model, dataset=dataset, patch_size=patch_size,
        stride=stride, patch_color=patch_color, target_class=target_class, mode=mode,
        frame=frame)
    upload = await read_image(image, max_bytes=settings.max_upload_bytes,
                              max_pixels=settings.max_pixels, frame=frame,
                              window=deployment.model(plan.model).preprocessing.window)
    job = await queue_heatmap(store, deployment, plan, upload, caller, admission)
    return await answer_submission(request, response, store.jobs, job, prefer)


async def heatmap_plan(store: Store, settings: Settings, deployment: Deployment, *,
                       model: str | None, dataset: str | None, patch_size: int | None,
                       stride: int | None, patch_color: str, target_class: int | None,
                       mode: Mode, frame: int | None) -> HeatmapPlan:
    """The request's plan, refused (422) if it books too much work or its dataset's tuned
    config was made for other weights than the ones served."""
    plan = resolve_heatmap(
        deployment, model=model, dataset=dataset,
        config=await _dataset_config(store, deployment, dataset), patch_size=patch_size,
        stride=stride, patch_color=patch_color, target_class=target_class, mode=mode,
        max_gflop=settings.max_job_gflop, frame=frame)
    if plan.tuned_for is not None:  # a tuned config: made for the weights served?
        plan.check_weights(await served_weights(store.workers, deployment.model(plan.model)))
    return plan


async def queue_heatmap(store: Store, deployment: Deployment, plan: HeatmapPlan,
                        upload: Upload, caller: Caller, admission: Admission, *,
                        pacs: PacsLink | None = None) -> Job:
    """Admit and queue the heatmap job of an accepted image; the caller's key owns it."""
    return await store.jobs.submit(Job(
        id=new_job_id(), params=plan, image_size=upload.size, owner=caller.key_id,
        dicom=upload.dicom, dicom_unmade=upload.dicom_unmade, pacs=pacs,
        random_weights=deployment.model(plan.model).random_weights),
        upload.stored, admission)


async def answer_submission(request: Request, response: Response, queue: JobQueue, job: Job,
                            prefer: str | None) -> JobView:
    """202 with the job's Location; 200 if it finished within ``Prefer: wait``."""
    response.headers["Location"] = f"/v1/heatmaps/{job.id}"
    job = await wait_for(queue, job, prefer_wait(prefer), gone=request.is_disconnected)
    if job.status.finished:
        response.status_code = 200
    return view(job)


async def visible_job(queue: JobQueue, job_id: str, caller: Caller) -> Job | None:
    """The job, if ``caller`` may see it; raises :class:`JobLost` for one the store lost."""
    job = await queue.get(job_id)
    if job is None:
        since = await queue.lost(job_id)
        if since is not None:
            raise JobLost.of(job_id, since)
        return None
    return job if caller.may_see(job.owner) else None


async def _job(queue: JobQueue, job_id: str, caller: Caller) -> Job:
    """The heatmap job, if ``caller`` may see it; 404 otherwise (existence is not told)."""
    job = await visible_job(queue, job_id, caller)
    if job is None or job.kind is not JobKind.heatmap:
        raise JobNotFound(f"no heatmap job {job_id!r}; it may have expired or been deleted",
                          job_id=job_id)
    return job


@router.get("/heatmaps/{job_id}", response_model=JobView, responses=_JOB_PROBLEMS)
async def get_heatmap(job_id: str, queue: QueueDep, caller: CallerDep) -> JobView:
    """Status, progress, prediction, timings or error of a heatmap job."""
    return view(await _job(queue, job_id, caller))


async def _visible_job(job_id: str, queue: QueueDep, caller: CallerDep) -> Job:
    return await _job(queue, job_id, caller)


@router.get("/heatmaps/{job_id}/events", response_class=EventSourceResponse,
            responses=_JOB_PROBLEMS)
async def heatmap_events(request: Request, job: Annotated[Job, Depends(_visible_job)]
                         ) -> AsyncIterator[ServerSentEvent]:
    """The job as Server-Sent Events, until one terminal event.

    ``progress`` (status and fraction done), ``partial`` (the heatmap so far:
    ``heatmap`` rows with ``null`` where not computed yet; for approximate
    mode the coarse map first), then ``succeeded`` or ``failed`` with the job
    document, or ``error`` with a problem document (the queue stopped
    answering, with a ``retry`` hint; or the key was revoked). Probabilities,
    as ``view=probability``.
    """
    hub: EventHub = request.app.state.events
    async for event in job_events(hub, job, view,
                                  authorized=lambda: get_optional_caller(request) is not None):
        yield event


@router.delete("/heatmaps/{job_id}", status_code=204, responses=_JOB_PROBLEMS)
async def delete_heatmap(job_id: str, queue: QueueDep, caller: CallerDep) -> Response:
    """Cancel the job and purge its image and result now."""
    await _job(queue, job_id, caller)
    await queue.delete(job_id)
    return Response(status_code=204)


async def _result(queue: JobQueue, job_id: str, caller: Caller, view: render.View
                  ) -> tuple[Job, np.ndarray]:
    """The succeeded job and its heatmap in ``view``."""
    job = await _job(queue, job_id, caller)
    if job.status is not JobStatus.succeeded:
        raise ResultNotReady(f"job {job_id} is {job.status.value}; results exist once it has "
                             "succeeded", job_id=job_id)
    data = await queue.result(job_id)
    if data is None:
        raise JobNotFound(f"the result of job {job_id} has expired", job_id=job_id)
    assert job.prediction is not None
    heatmap = render.read_npy(data)
    return job, render.view_values(heatmap, job.prediction.target_probability, view)


View = Annotated[Literal["drop", "probability"], Query(
    alias="view", description="drop: p(class) - p(class | patch); probability: p(class | patch)")]


@router.get("/heatmaps/{job_id}/heatmap.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}, **_RESULT_PROBLEMS})
async def heatmap_png(
    job_id: str, queue: QueueDep, caller: CallerDep, view_: View = "drop",
    overlay: Annotated[bool, Query(description="Blend over the image")] = False,
    size: Annotated[int, Query(ge=16, le=constants.MAX_OVERLAY_SIDE, description=(
        "Longest side of the overlay in pixels, at most the image's own; default "
        f"{constants.OVERLAY_SIDE}"))] = constants.OVERLAY_SIDE,
    alpha: Annotated[float, Query(ge=0.0, le=1.0, description=(
        "Opacity of the heatmap over the image"))] = 0.5,
) -> Response:
    """The colour-mapped heatmap, or with ``overlay=1`` blended over the uploaded image.

    Pictures of a model with untrained weights carry a red warning band.
    """
    job, values = await _result(queue, job_id, caller, view_)
    if not overlay:
        return Response(render.heatmap_png(values, untrained=job.random_weights),
                        media_type="image/png")
    pixels, geometry = await _overlay_inputs(queue, job, size)
    png = await asyncio.to_thread(render.overlay_png, values, pixels, geometry, alpha=alpha,
                                  untrained=job.random_weights)
    return Response(png, media_type="image/png")


async def _images(queue: JobQueue, job: Job) -> list[bytes]:
    images = await queue.images(job.id, job.images)
    if images is None:
        raise JobNotFound(f"the image of job {job.id} has expired", job_id=job.id)
    return images


async def _overlay_inputs(queue: JobQueue, job: Job, size: int
                          ) -> tuple[np.ndarray, render.HeatmapGeometry]:
    """The uploaded image to draw over, at most ``size`` on its longer side, and where
    the heatmap's cells sit on the model input."""
    assert isinstance(job.params, HeatmapPlan) and job.run is not None
    images = await _images(queue, job)
    # The reduced copy of a large upload, if it has one: the original would cost gigabytes.
    pixels = await asyncio.to_thread(
        decode_image, images[-1], max_pixels=None, max_side=size,
        frame=job.params.frame if len(images) == 1 else None,
        window=job.window.replay() if job.window is not None else None)
    return pixels, heatmap_geometry(job.params, job.run)


def _download_headers(source: DicomSource, filename: str) -> dict[str, str]:
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if source.dropped:
        # Keywords only: the values may be the patient's.
        headers[DROPPED_HEADER] = ", ".join(source.dropped)
    return headers


def result_heatmap(job: Job, values: np.ndarray, view: render.View) -> Heatmap:
    """A succeeded heatmap job and its values in ``view``, as its DICOM results take them."""
    assert isinstance(job.params, HeatmapPlan)
    assert job.run is not None and job.prediction is not None
    return Heatmap(plan=job.params, run=job.run, prediction=job.prediction, values=values,
                   view=view, random_weights=job.random_weights, window=job.window)


async def _dicom_job(queue: JobQueue, job_id: str, caller: Caller, view: render.View
                     ) -> tuple[Job, Heatmap, DicomSource]:
    """A succeeded job made from a single-frame DICOM image, its heatmap, the source header."""
    job, values = await _result(queue, job_id, caller, view)
    if not job.dicom:
        raise NotForThisInput(f"job {job_id} was made from a PNG, JPEG or TIFF image; DICOM "
                              "results exist for DICOM input only", job_id=job_id)
    source = await asyncio.to_thread(dicom_source, (await _images(queue, job))[0])
    if isinstance(source, str):
        raise NotForThisInput(f"job {job_id} has no DICOM results: {source}", job_id=job_id)
    if source.dropped:
        logger.info("job %s: %d invalid attribute(s) of the source header left out of its "
                    "DICOM results: %s", job_id, len(source.dropped), ", ".join(source.dropped))
    return job, result_heatmap(job, values, view), source


@router.get("/heatmaps/{job_id}/heatmap.dcm", response_class=Response,
            responses={200: {"content": {DICOM_MEDIA_TYPE: {}}}, **_RESULT_PROBLEMS})
async def heatmap_dcm(job_id: str, queue: QueueDep, caller: CallerDep,
                      view_: View = "drop") -> Response:
    """A DICOM Parametric Map of the heatmap over the source image, in its study.

    For DICOM input only (409 otherwise). Float values, windowed to their
    range; a PACS viewer can blend it over the image it references. On the
    source's pixel grid up to 1024 pixels a side; a larger source gets the
    same field of view on a coarser grid, with its own spacing. Source
    header attributes with invalid values are left out, and named in the
    ``Krypton-Dropped-Attributes`` header.
    """
    _, heatmap, source = await _dicom_job(queue, job_id, caller, view_)
    document = await asyncio.to_thread(dicom_results.parametric_map, source, heatmap)
    return Response(document, media_type=DICOM_MEDIA_TYPE,
                    headers=_download_headers(source, f"{job_id}.dcm"))


@router.get("/heatmaps/{job_id}/overlay.dcm", response_class=Response,
            responses={200: {"content": {DICOM_MEDIA_TYPE: {}}}, **_RESULT_PROBLEMS})
async def overlay_dcm(job_id: str, queue: QueueDep, caller: CallerDep,
                      view_: View = "drop") -> Response:
    """The colour overlay as a DICOM Secondary Capture in the source study (DICOM input only)."""
    job, heatmap, source = await _dicom_job(queue, job_id, caller, view_)
    # The reduced copy of a large upload, if it has one: the original would cost gigabytes.
    image = (await _images(queue, job))[-1]
    document = await asyncio.to_thread(dicom_results.overlay, source, heatmap, image,
                                       max_side=constants.MAX_OVERLAY_SIDE)
    return Response(document, media_type=DICOM_MEDIA_TYPE,
                    headers=_download_headers(source, f"{job_id}-overlay.dcm"))


@router.get("/heatmaps/{job_id}/heatmap.json", responses=_RESULT_PROBLEMS)
async def heatmap_json(job_id: str, queue: QueueDep, caller: CallerDep,
                       view_: View = "probability") -> Response:
    """The 2-D heatmap under ``heatmap``, with its parameters, prediction and run."""
    job, values = await _result(queue, job_id, caller, view_)
    assert job.prediction is not None
    assert isinstance(job.params, HeatmapPlan)
    document = render.heatmap_json(values, heatmap_metadata(
        job.id, view_, job.params, job.prediction, job.random_weights, job.run))
    return Response(document, media_type="application/json")


@router.get("/heatmaps/{job_id}/heatmap.npy", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}},
                       **_RESULT_PROBLEMS})
async def heatmap_npy(job_id: str, queue: QueueDep, caller: CallerDep,
                      view_: View = "probability") -> Response:
    """The heatmap as a NumPy ``.npy`` float32 array."""
    _, values = await _result(queue, job_id, caller, view_)
    return Response(render.heatmap_npy(values), media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{job_id}.npy"'})


@router.post("/predict", response_model=PredictResponse, tags=["predict"],
             dependencies=[Depends(refuse_ambiguous_fields)],
             responses=problem_responses(400, 401, 404, 413, 415, 422, 429, 503))
async def predict(request: Request, image: ImagePart, queue: QueueDep, settings: SettingsDep,
                  deployment: DeploymentDep, caller: CallerDep, admission: AdmissionDep,
                  model: Annotated[str | None, Form(min_length=1)] = None,
                  frame: FramePart = None) -> PredictResponse:
    """Classify one image now (a worker runs the model; the API waits for it)."""
    deployed: DeployedModel = deployment.model(model) if model else deployment.default_model()
    upload = await read_image(image, max_bytes=settings.max_upload_bytes,
                              max_pixels=settings.max_pixels, frame=frame)
    job = await queue.submit(Job(id=new_job_id(), kind=JobKind.predict, owner=caller.key_id,
                                 random_weights=deployed.random_weights,
                                 params=PredictParams(model=deployed.name, frame=frame)),
                             [upload.data], admission)
    try:
        job = await wait_for(queue, job, constants.MAX_WAIT_SECONDS,
                             gone=request.is_disconnected)
    finally:
        await queue.delete(job.id)
    if job.status is JobStatus.failed and job.error is not None:
        return JSONResponse(job.error, status_code=job.error["status"],  # type: ignore[return-value]
                            media_type="application/problem+json")
    if job.status is not JobStatus.succeeded or job.probabilities is None:
        raise QueueUnavailable(f"no worker classified the image within "
                               f"{constants.MAX_WAIT_SECONDS} s")
    ranked = sorted(enumerate(job.probabilities), key=lambda item: -item[1])
    classes = [ClassProbability(class_index=i, label=deployed.labels[i], probability=p)
               for i, p in ranked]
    return PredictResponse(model=deployed.name, prediction=classes[0], probabilities=classes,
                           random_weights=deployed.random_weights)
