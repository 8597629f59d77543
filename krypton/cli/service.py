"""``krypton serve``, ``krypton worker``, ``krypton openapi`` and ``krypton bench-api``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from krypton.cli.common import configure_logging, fail, settings_or_fail

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(worker)
    app.command()(openapi)
    app.command("bench-api")(bench_api)


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
) -> None:
    """Run the REST API. Without KRYPTON_REDIS_URL it also runs an in-process worker.

    Without API keys (KRYPTON_KEYS_FILE) it listens only on a loopback
    address, unless KRYPTON_AUTH=none says a gateway in front authenticates.
    """
    import uvicorn

    from krypton.service.app import create_app
    from krypton.service.auth import access_mode
    from krypton.service.config import get_settings

    settings = settings_or_fail(get_settings)
    configure_logging(settings.log_level)
    try:
        access = access_mode(host, settings.keys_file, settings.auth)
        app = create_app(settings)
    except (PermissionError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"access: {access}", err=True)
    if settings.embedded:
        typer.echo("embedded mode: in-process queue and worker; jobs, images and results "
                   "live in this process and are lost when it stops (set KRYPTON_REDIS_URL "
                   "to use Redis and `krypton worker` processes)", err=True)
    uvicorn.run(app, host=host, port=port, log_config=None)


def worker(
    burst: Annotated[bool, typer.Option(help="Exit once the queue is empty.")] = False,
    preload: Annotated[bool, typer.Option(
        help="Load every deployed model before taking jobs (bad checkpoints show at start).")
    ] = True,
) -> None:
    """Run a worker: claim heatmap jobs from Redis, compute, store. One per GPU."""
    import asyncio
    import signal

    import torch

    from krypton.models.budget import DECODING, return_freed_memory
    from krypton.service.app import make_deployment, make_store
    from krypton.service.config import get_settings
    from krypton.service.worker import Worker

    settings = settings_or_fail(get_settings)
    configure_logging(settings.log_level)
    if settings.embedded:
        fail("krypton worker needs KRYPTON_REDIS_URL (e.g. redis://localhost:6379/0); "
             "`krypton serve` without it runs its own worker")

    if settings.device == "cuda" and not torch.cuda.is_available():
        fail("KRYPTON_DEVICE=cuda, but this machine has no CUDA device PyTorch can use; "
             "leave KRYPTON_DEVICE unset (or cpu) to run on the CPU")
    return_freed_memory()
    DECODING.capacity = settings.decode_memory_bytes

    async def main() -> None:
        deployment = make_deployment(settings)
        store = make_store(settings, deployment)
        runner = Worker(store, deployment, device=settings.device,
                        max_pixels=settings.max_pixels,
                        job_timeout_seconds=settings.job_timeout_seconds,
                        delivery=settings.delivery)
        if preload:
            failed = await asyncio.to_thread(runner.cache.preload)
            if failed and len(failed) == len(deployment.models):
                # A worker that can run nothing must not take (and fail) every job.
                await store.close()
                fail(f"none of the deployed models can be loaded on {settings.device} "
                     f"({', '.join(failed)}); the log above says why")
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, runner.stop)
        try:
            await runner.run(burst=burst)
        finally:
            await store.close()

    asyncio.run(main())


def openapi(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the document.")
                      ] = Path("openapi/openapi.json"),
) -> None:
    """Export the API's OpenAPI document, as a service with keys serves it at /openapi.json."""
    from krypton.service.app import create_app
    from krypton.service.config import Settings
    from krypton.service.openapi import openapi_document

    document = openapi_document(create_app(Settings()), keyed=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    typer.echo(f"wrote {output}")


def bench_api(
    url: Annotated[str, typer.Option(help="The running API.")] = "http://127.0.0.1:8000",
    image: Annotated[Path, typer.Option(help="Image to submit.")] = Path("examples/retina.jpg"),
    model: Annotated[str, typer.Option(help="Deployed model.")] = "resnet18",
    patch: Annotated[int, typer.Option(help="Patch side in input pixels.")] = 16,
    stride: Annotated[int, typer.Option(help="Stride in input pixels.")] = 16,
    jobs: Annotated[int, typer.Option(help="Jobs per concurrency level.")] = 20,
    concurrency: Annotated[str, typer.Option(
        help="Comma-separated numbers of clients submitting at once.")] = "1,4",
    direct: Annotated[bool, typer.Option(
        help="With one client, pair each job with a direct engine call here (default "
        "registry models only): the API's overhead per job.")] = True,
) -> None:
    """Load a running service with heatmap jobs; print throughput, p50/p95 and overhead."""
    from krypton.benchmarks.service import engine_call, format_report, run_load

    form = {"model": model, "patch_size": str(patch), "stride": str(stride)}
    direct_call = (engine_call(image, model=model, patch_size=patch, stride=stride)
                   if direct else None)
    reports = [run_load(url, image, jobs=jobs, concurrency=int(c), form=form,
                        direct=direct_call, report=lambda line: typer.echo(line, err=True))
               for c in concurrency.split(",")]
    typer.echo(format_report(reports))
