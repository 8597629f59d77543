"""FastAPI dependencies: what a route needs, taken from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from krypton.models.deployment import Deployment
from krypton.service import constants
from krypton.service.auth import OPEN, Caller, KeyStore
from krypton.service.config import Settings
from krypton.service.errors import (
    Forbidden,
    InvalidInput,
    QueueFull,
    RateLimited,
    Unauthorized,
)
from krypton.service.queue import JobQueue

__all__ = [
    "AdminDep",
    "AdmittedDep",
    "CallerDep",
    "DeploymentDep",
    "OptionalCallerDep",
    "QueueDep",
    "SettingsDep",
    "admit_job",
    "refuse_ambiguous_fields",
]


def get_queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.queue
    return queue


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_deployment(request: Request) -> Deployment:
    deployment: Deployment = request.app.state.deployment
    return deployment


_bearer = HTTPBearer(auto_error=False, scheme_name="apiKey", description=(
    "An API key (`krypton keys add NAME`), as 'Authorization: Bearer KEY'. Needed once the "
    "service has keys; a service running open ignores it."))


def _caller_of(request: Request, token: str | None) -> Caller | None:
    keys: KeyStore | None = request.app.state.keys
    if keys is None:
        return OPEN
    key = keys.find(token) if token else None
    return None if key is None else Caller(name=key.name, scope=key.scope)


def get_optional_caller(request: Request) -> Caller | None:
    """The caller of a valid key, everyone when the service runs open, else ``None``.

    For routes open to anyone that tell a key holder more (readiness): it
    reads the header itself, so the OpenAPI document does not ask for a key.
    """
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return _caller_of(request, token.strip() if scheme.lower() == "bearer" else None)


def get_caller(request: Request, credentials: Annotated[
        HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Caller:
    """The authenticated caller; 401 without a valid key."""
    caller = _caller_of(request, credentials.credentials if credentials else None)
    if caller is None:
        raise Unauthorized("send a valid API key as 'Authorization: Bearer KEY' (an operator "
                           "creates one with `krypton keys add NAME`)")
    return caller


def get_admin(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    """An ``admin`` caller; 403 for a ``heatmaps`` key."""
    if not caller.admin:
        raise Forbidden(f"key {caller.name!r} has scope {caller.scope!r}; this route needs an "
                        "admin key")
    return caller


QueueDep = Annotated[JobQueue, Depends(get_queue)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
DeploymentDep = Annotated[Deployment, Depends(get_deployment)]
OptionalCallerDep = Annotated[Caller | None, Depends(get_optional_caller)]
CallerDep = Annotated[Caller, Depends(get_caller)]
AdminDep = Annotated[Caller, Depends(get_admin)]


async def admit_job(request: Request, queue: QueueDep, settings: SettingsDep,
                    caller: CallerDep) -> Caller:
    """The caller, once its rate and the queue's length allow one more job.

    Raises:
        RateLimited: the caller (its key, or running open its address) submitted
            ``rate_limit_per_minute`` jobs this minute (429, Retry-After).
        QueueFull: ``max_queue_length`` jobs wait or run (503, Retry-After).
    """
    client = request.client.host if request.client else "unknown"
    bucket = f"key:{caller.name}" if caller.name is not None else f"address:{client}"
    events, retry_after = await queue.count(bucket, constants.RATE_WINDOW_SECONDS)
    if events > settings.rate_limit_per_minute:
        raise RateLimited(f"more than {settings.rate_limit_per_minute} jobs a minute from this "
                          f"caller; try again in {retry_after} s", retry_after=retry_after)
    if await queue.backlog() >= settings.max_queue_length:
        raise QueueFull(f"{settings.max_queue_length} jobs are waiting or running, the most "
                        "this service queues; try again shortly")
    return caller


async def refuse_ambiguous_fields(request: Request, caller: CallerDep) -> None:
    """A form field sent empty or twice is refused, not read as absent or as its last value.

    FastAPI reads ``patch_color=`` as absent and ``model=a&model=b`` as ``b``;
    both are mistakes, not a wish for the default or for the second model.
    Only ``images`` (tuning's samples) may repeat. Runs after authentication
    (``caller``): an anonymous request learns nothing of its form.
    """
    form = await request.form()  # parsed once already for the route's own fields
    names = [name for name, _ in form.multi_items()]
    empty = sorted({name for name, value in form.multi_items() if value == ""})
    if empty:
        raise InvalidInput(f"form field(s) {', '.join(empty)} sent empty; leave a field out "
                           "to get its default")
    repeated = sorted({name for name in names if names.count(name) > 1} - {"images"})
    if repeated:
        raise InvalidInput(f"form field(s) {', '.join(repeated)} sent more than once; send "
                           "each once")


AdmittedDep = Annotated[Caller, Depends(admit_job)]
