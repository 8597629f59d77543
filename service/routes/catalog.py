"""What the deployment serves (models, datasets) and dataset tuning jobs."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Response, UploadFile

from krypton.core.plans import (
    DEFAULT_PATCH_SIZE,
    DEFAULT_STRIDE,
    TuningPlan,
    resolve_tuning,
    stale_reason,
)
from krypton.core.records import JobKind
from krypton.models.deployment import DeployedDataset, Deployment
from krypton.service.auth import Caller
from krypton.service.deps import (
    AdminDep,
    AdmissionDep,
    CallerDep,
    DeploymentDep,
    QueueDep,
    SettingsDep,
    StoreDep,
    refuse_ambiguous_fields,
)
from krypton.service.problems import (
    DatasetNotFound,
    JobNotFound,
    TunedConfigUnreadable,
    problem_responses,
)
from krypton.service.routes.heatmaps import view, visible_job
from krypton.service.schemas import DatasetInfo, Job, JobView, ModelInfo, new_job_id
from krypton.service.store import JobQueue, Store
from krypton.service.tuned import tuned_config
from krypton.service.uploads import read_image
from krypton.service.weights import served_weights

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/models", response_model=list[ModelInfo], responses=problem_responses(401))
async def list_models(deployment: DeploymentDep, caller: CallerDep) -> list[ModelInfo]:
    """Every deployed model, its classes and preprocessing."""
    return [
        ModelInfo(name=m.name, architecture=m.architecture, labels=list(m.labels),
                  input_size=m.preprocessing.size, mean=m.mean, std=m.std, window=m.window,
                  random_weights=m.random_weights, description=m.description,
                  datasets=sorted(d.name for d in deployment.datasets.values()
                                  if d.model == m.name))
        for m in deployment.models.values()
    ]


def _deployed_dataset(deployment: Deployment, name: str) -> DeployedDataset:
    """The dataset named in the path; unknown is a missing resource (404)."""
    if name not in deployment.datasets:
        known = ", ".join(sorted(deployment.datasets)) or "none"
        raise DatasetNotFound(f"no dataset {name!r}; this deployment serves: {known}")
    return deployment.datasets[name]


async def _dataset_info(store: Store, deployment: Deployment, name: str) -> DatasetInfo:
    dataset = _deployed_dataset(deployment, name)
    try:
        tuned = await tuned_config(store.configs, deployment, name)
    except TunedConfigUnreadable:  # the listing goes on; approximate requests get a 500
        return DatasetInfo(name=dataset.name, model=dataset.model,
                           description=dataset.description, tuned=None,
                           stale="its tuned config is unreadable; tune it again")
    stale = None if tuned is None else stale_reason(
        name, tuned.checkpoint,
        await served_weights(store.workers, deployment.model(dataset.model)),
        dataset.model)
    return DatasetInfo(name=dataset.name, model=dataset.model, description=dataset.description,
                       tuned=None if tuned is None or stale else tuned.as_dict(), stale=stale)


@router.get("/datasets", response_model=list[DatasetInfo],
            responses=problem_responses(401, 503))
async def list_datasets(deployment: DeploymentDep, store: StoreDep,
                        caller: CallerDep) -> list[DatasetInfo]:
    """Every deployed dataset and its tuned approximation config, if any."""
    return [await _dataset_info(store, deployment, name) for name in sorted(deployment.datasets)]


@router.get("/datasets/{name}", response_model=DatasetInfo,
            responses=problem_responses(401, 404, 503))
async def get_dataset(name: str, deployment: DeploymentDep, store: StoreDep,
                      caller: CallerDep) -> DatasetInfo:
    """One deployed dataset and its tuned approximation config, if any."""
    return await _dataset_info(store, deployment, name)


@router.post("/datasets/{name}/tuning", status_code=202, response_model=JobView,
             dependencies=[Depends(refuse_ambiguous_fields)],
             responses=problem_responses(400, 401, 403, 404, 413, 415, 422, 429, 503))
async def tune_dataset(
    name: str,
    images: Annotated[list[UploadFile], File(description="Sample images of the use case; "
                                             "half are held out to check the result.")],
    queue: QueueDep,
    settings: SettingsDep,
    deployment: DeploymentDep,
    admin: AdminDep,
    admission: AdmissionDep,
    response: Response,
    target_ssim: Annotated[float, Form(gt=0, le=1)] = 0.9,
    patch_size: Annotated[int, Form(ge=1)] = DEFAULT_PATCH_SIZE,
    stride: Annotated[int, Form(ge=1)] = DEFAULT_STRIDE,
    score: Annotated[Literal["mean", "min"], Form(
        description="mean: the images' mean SSIM meets target_ssim; min: every image's does."
    )] = "mean",
) -> JobView:
    """Queue a tuning job: find the fastest approximation meeting ``target_ssim`` (admin)."""
    _deployed_dataset(deployment, name)
    params = resolve_tuning(deployment, name, images=len(images), patch_size=patch_size,
                            stride=stride, target_ssim=target_ssim, score=score,
                            max_gflop=settings.max_job_gflop)
    blobs = [(await read_image(i, max_bytes=settings.max_upload_bytes,
                               max_pixels=settings.max_pixels)).data for i in images]
    job = await queue.submit(Job(id=new_job_id(), kind=JobKind.tuning, params=params,
                                 owner=admin.key_id), blobs, admission)
    response.headers["Location"] = f"/v1/datasets/{name}/tuning/{job.id}"
    return view(job)


async def _tuning_job(queue: JobQueue, name: str, job_id: str, admin: Caller) -> Job:
    job = await visible_job(queue, job_id, admin)
    if (job is None or not isinstance(job.params, TuningPlan)
            or job.params.dataset != name):
        raise JobNotFound(f"no tuning job {job_id!r} for dataset {name!r}", job_id=job_id)
    return job


@router.get("/datasets/{name}/tuning/{job_id}", response_model=JobView,
            responses=problem_responses(401, 403, 404, 503))
async def get_tuning(name: str, job_id: str, queue: QueueDep, admin: AdminDep) -> JobView:
    """Status and progress of a tuning job; ``tuned`` holds the config once it succeeded."""
    return view(await _tuning_job(queue, name, job_id, admin))


@router.delete("/datasets/{name}/tuning/{job_id}", status_code=204,
               responses=problem_responses(401, 403, 404, 503))
async def delete_tuning(name: str, job_id: str, queue: QueueDep, admin: AdminDep) -> Response:
    """Cancel the tuning job and purge its sample images now."""
    await _tuning_job(queue, name, job_id, admin)
    await queue.delete(job_id)
    return Response(status_code=204)
