"""The FastAPI application: ``create_app()`` wires settings, store, registry and routes.

With no Redis configured the app also runs its own worker(s) in-process on an
in-memory queue (the embedded default); with Redis it only enqueues, and
``krypton worker`` processes do the work. Either way importing this module
loads no torch: the embedded worker is imported when the app starts, and only
in embedded mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from krypton import __version__
from krypton.core.plans import MAX_TUNING_IMAGES
from krypton.models import DatasetStore
from krypton.models.budget import DECODING, return_freed_memory
from krypton.models.deployment import Deployment, default_deployment, load_deployment
from krypton.models.pacs import PacsServer
from krypton.service.auth import KeyStore
from krypton.service.config import Settings, get_settings
from krypton.service.errors import install_handlers
from krypton.service.events import EventHub
from krypton.service.intake import Intake
from krypton.service.metrics import Metrics
from krypton.service.openapi import install_openapi
from krypton.service.pages import install_pages
from krypton.service.routes import catalog, health, heatmaps, pacs, stow
from krypton.service.store import Store
from krypton.service.tuned import import_dataset_configs

if TYPE_CHECKING:  # they load torch, which the API imports only in embedded mode
    from krypton.core.model_cache import ModelCache
    from krypton.service.worker import Worker

__all__ = ["SETTINGS_PACS", "create_app", "make_deployment", "make_store"]

SETTINGS_PACS = "pacs"
"""The name of the PACS that ``KRYPTON_PACS_URL`` gives."""

logger = logging.getLogger(__name__)

DESCRIPTION = """Occlusion sensitivity heatmaps for CNN image classifiers.

Submit an image to `POST /v1/heatmaps`, poll the job at its `Location`, then
fetch `heatmap.png`, `heatmap.json` or `heatmap.npy`. Errors are
`application/problem+json` (RFC 9457)."""


def make_store(settings: Settings, deployment: Deployment) -> Store:
    """Redis when configured; else the embedded store, keeping tuned configs as files."""
    options: dict[str, Any] = {"ttl_seconds": settings.result_ttl_seconds,
                               "claim_idle_ms": settings.claim_idle_ms,
                               "heartbeat_ttl_seconds": settings.heartbeat_ttl_seconds}
    if settings.redis_url is None:
        return Store.memory(configs=DatasetStore(deployment.datasets_dir), **options)
    return Store.redis(str(settings.redis_url), max_connections=settings.redis_max_connections,
                       **options)


def make_deployment(settings: Settings) -> Deployment:
    """The registry's deployment (the demo one without), and the settings' PACS."""
    if settings.registry is None:
        deployment = default_deployment(settings.datasets_dir)
    else:
        deployment = load_deployment(settings.registry, settings.datasets_dir)
    if settings.pacs_url is None:
        return deployment
    if SETTINGS_PACS in deployment.pacs:
        raise ValueError(f"KRYPTON_PACS_URL names PACS {SETTINGS_PACS!r}, and the registry "
                         "lists one of that name too; keep one of them")
    return deployment.with_pacs(PacsServer(SETTINGS_PACS, str(settings.pacs_url).rstrip("/")))


def create_app(settings: Settings | None = None, *, store: Store | None = None) -> FastAPI:
    """The API. ``store`` overrides the one the settings describe (tests)."""
    settings = settings or get_settings()
    deployment = make_deployment(settings)
    return_freed_memory()
    DECODING.capacity = settings.decode_memory_bytes

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.store = store or make_store(settings, deployment)
        app.state.events = EventHub(app.state.store.jobs)
        _say_where_results_go(deployment)
        if not settings.embedded:
            # The consumer group, before any worker starts: an autoscaler reads its lag.
            await app.state.store.jobs.make_claimable()
            with contextlib.suppress(Exception):  # Redis may come up after the API
                imported = await import_dataset_configs(app.state.store.configs, deployment)
                if imported:
                    logger.info("imported tuned configs for %s", ", ".join(imported))
        workers = []
        if settings.embedded and settings.embedded_workers:
            # Imported here: they load torch, which only the embedded mode needs.
            from krypton.core.model_cache import ModelCache
            from krypton.service.worker import Worker

            cache = ModelCache(deployment, settings.device)  # one copy of each model
            workers = [Worker(app.state.store, deployment, device=settings.device,
                              name=f"embedded-{i}", max_pixels=settings.max_pixels,
                              job_timeout_seconds=settings.job_timeout_seconds, cache=cache,
                              delivery=settings.delivery)
                       for i in range(settings.embedded_workers)]
            logger.info("embedded mode: in-process queue and %d worker(s); set "
                        "KRYPTON_REDIS_URL to scale out", len(workers))
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(w.run()) for w in workers]
        if workers and settings.preload_models:
            # In the background: the service answers at once, the first job does not
            # pay for loading and tracing its model.
            tasks.append(asyncio.create_task(_preload(cache, workers)))
        try:
            yield
        finally:
            for worker in workers:
                worker.stop()
            for task in tasks:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, timeout=5)
            await app.state.store.close()

    app = FastAPI(title="Krypton", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    # Refuse a body without a key, or larger than its route takes, before reading it;
    # read_image then holds each image to max_upload_bytes.
    app.add_middleware(Intake, max_upload_bytes=settings.max_upload_bytes,
                       max_images=MAX_TUNING_IMAGES)
    app.state.settings = settings
    app.state.deployment = deployment
    app.state.keys = None if settings.keys_file is None else _keys(settings.keys_file)
    app.state.metrics = Metrics()
    app.add_middleware(app.state.metrics.middleware)
    app.add_middleware(_ProtectiveHeaders)
    install_handlers(app)
    for module in (heatmaps, pacs, stow, catalog, health):
        app.include_router(module.router)
    install_openapi(app, keyed=app.state.keys is not None)
    install_pages(app)
    return app


def _say_where_results_go(deployment: Deployment) -> None:
    """Images a PACS pushes without a PACS to store their results in keep them in Krypton:
    right for some deployments, a forgotten setting in others, so the log says it."""
    if not deployment.pacs:
        logger.info("no PACS named (KRYPTON_PACS_URL or [[pacs]]): images sent to "
                    "/dicomweb/studies are explained and their results stay in Krypton")
    else:
        logger.info("PACS: %s", ", ".join(deployment.pacs))


async def _preload(cache: ModelCache, workers: list[Worker]) -> None:
    """Load every deployed model; where none loads, stop the embedded workers, as
    ``krypton worker`` refuses to start: ``/readyz`` then says not ready, rather than
    every job failing with ``model-unavailable``."""
    failed = await asyncio.to_thread(cache.preload)
    if failed and len(failed) == len(cache.deployment.models):
        logger.error("none of the deployed models can be loaded (%s); the embedded workers "
                     "stop and /readyz answers 503 until the registry is fixed and the "
                     "service restarted", ", ".join(failed))
        for worker in workers:
            worker.stop()


class _ProtectiveHeaders:
    """No browser guesses a type the service did not send, and no cache (a browser's, a
    proxy's) keeps a job, an image's heatmap or anything else under /v1: patient data.
    A plain ASGI middleware, so the routes still see a client's disconnect."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        private = scope["path"].startswith(("/v1/", "/dicomweb/"))

        async def send_protected(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if private:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_protected)


def _keys(path: Path) -> KeyStore:
    """The keys file, read now: a missing or broken one stops the start, not a request."""
    if not path.is_file():
        raise ValueError(f"KRYPTON_KEYS_FILE {path} does not exist; create it with "
                         f"`krypton keys add NAME --file {path}`")
    store = KeyStore(path, required=True)
    if not store.keys():
        raise ValueError(f"KRYPTON_KEYS_FILE {path} holds no keys; add one with "
                         f"`krypton keys add NAME --file {path}`")
    return store
