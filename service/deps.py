"""FastAPI dependencies: what a route needs, taken from the app's state."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from krypton.models.deployment import Deployment
from krypton.service.auth import OPEN, ApiKey, Caller, KeysFileError, KeyStore
from krypton.service.config import Settings
from krypton.service.problems import Forbidden, InvalidInput, KeysUnavailable, Unauthorized
from krypton.service.store import Admission, JobQueue, Store

__all__ = [
    "AdminDep",
    "AdmissionDep",
    "CallerDep",
    "DeploymentDep",
    "OptionalCallerDep",
    "QueueDep",
    "SettingsDep",
    "StoreDep",
    "admit_job",
    "refuse_ambiguous_fields",
]

logger = logging.getLogger(__name__)


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_queue(request: Request) -> JobQueue:
    return get_store(request).jobs


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
    key = find_key(keys, token) if token else None
    return None if key is None else Caller(name=key.name, scope=key.scope, key_id=key.id)


def find_key(keys: KeyStore, token: str) -> ApiKey | None:
    """The key of ``token``; a keys file that broke while the service ran refuses every
    request until it is repaired, and is logged (its messages show no hash).

    Raises:
        KeysUnavailable: the file cannot be read.
    """
    try:
        return keys.find(token)
    except KeysFileError as exc:
        logger.error("%s", exc)
        raise KeysUnavailable.now() from None


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
        sent = "the key sent is unknown or revoked; " if credentials else ""
        raise Unauthorized(f"{sent}send a valid API key as 'Authorization: Bearer KEY' (an "
                           "operator creates one with `krypton keys add NAME`)")
    return caller


def get_admin(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    """An ``admin`` caller; 403 for a ``heatmaps`` key."""
    if not caller.admin:
        raise Forbidden(f"key {caller.name!r} has scope {caller.scope!r}; this route needs an "
                        "admin key")
    return caller


QueueDep = Annotated[JobQueue, Depends(get_queue)]
StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
DeploymentDep = Annotated[Deployment, Depends(get_deployment)]
OptionalCallerDep = Annotated[Caller | None, Depends(get_optional_caller)]
CallerDep = Annotated[Caller, Depends(get_caller)]
AdminDep = Annotated[Caller, Depends(get_admin)]


def admit_job(request: Request, settings: SettingsDep, caller: CallerDep) -> Admission:
    """Who submits and the limits the submission must fit; the queue checks them as it
    stores the job, in one step (:meth:`~krypton.service.store.JobQueue.submit`).

    The account is the caller's key, or running open its address.
    """
    client = request.client.host if request.client else "unknown"
    account = f"key:{caller.key_id}" if caller.key_id is not None else f"address:{client}"
    return Admission(account=account, rate_per_minute=settings.rate_limit_per_minute,
                     max_backlog=settings.max_queue_length, max_jobs=settings.max_jobs_per_key,
                     max_bytes=settings.max_bytes_per_key)


async def refuse_ambiguous_fields(request: Request, caller: CallerDep) -> None:
    """A form field the route does not take, or sent empty or twice, is refused, not
    ignored, read as absent or as its last value.

    FastAPI ignores ``tau=0.1`` on a route without that field, reads
    ``patch_color=`` as absent and ``model=a&model=b`` as ``b``: each is a
    mistake (a knob that only the command line takes, say), not a wish for
    the default. Only ``images`` (tuning's samples) may repeat. Runs after
    authentication (``caller``): an anonymous request learns nothing of its form.
    """
    form = await request.form()  # parsed once already for the route's own fields
    names = [name for name, _ in form.multi_items()]
    route = request.scope.get("route")
    if isinstance(route, APIRoute):
        taken = _form_fields(route.dependant)
        unknown = sorted(set(names) - taken)
        if unknown:
            raise InvalidInput(f"form field(s) {', '.join(unknown)} not taken here; this "
                               f"route takes {', '.join(sorted(taken))}")
    empty = sorted({name for name, value in form.multi_items() if value == ""})
    if empty:
        raise InvalidInput(f"form field(s) {', '.join(empty)} sent empty; leave a field out "
                           "to get its default")
    repeated = sorted({name for name in names if names.count(name) > 1} - {"images"})
    if repeated:
        raise InvalidInput(f"form field(s) {', '.join(repeated)} sent more than once; send "
                           "each once")


def _form_fields(dependant: Dependant) -> set[str]:
    """The form fields a route (or a dependency of it) declares."""
    names = {field.alias for field in dependant.body_params}
    for dependency in dependant.dependencies:
        names |= _form_fields(dependency)
    return names


AdmissionDep = Annotated[Admission, Depends(admit_job)]
