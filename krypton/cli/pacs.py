"""``krypton pacs``: explain an image in a PACS by its UIDs, through a running service.

What a script at the PACS side needs: ask the service for the heatmap of one
instance (the service reads it over DICOMweb and stores the results back into
its study), wait, and list what was stored where. The commands talk to the
service with :class:`krypton.client.Client`; none loads the engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer

from krypton.cli.common import fail

if TYPE_CHECKING:
    from krypton.client import Client

__all__ = ["register"]

pacs_app = typer.Typer(
    help="Images in a PACS: `explain` one by its UIDs (results stored back into its "
    "study), `results` of a job, `list` the PACS the service knows.", no_args_is_help=True)

Url = Annotated[str, typer.Option("--url", envvar="KRYPTON_URL",
                                  help="The service (KRYPTON_URL).")]
ApiKey = Annotated[str | None, typer.Option(
    "--api-key", envvar="KRYPTON_API_KEY", show_default=False,
    help="Sent as 'Authorization: Bearer KEY' (KRYPTON_API_KEY); none for a service "
    "running open.")]
DEFAULT_URL = "http://127.0.0.1:8000"


def register(app: typer.Typer) -> None:
    app.add_typer(pacs_app, name="pacs")


@pacs_app.command("explain")
def explain(
    study: Annotated[str, typer.Argument(help="Study Instance UID.")],
    series: Annotated[str, typer.Argument(help="Series Instance UID.")],
    instance: Annotated[str, typer.Argument(help="SOP Instance UID.")],
    pacs: Annotated[str, typer.Option(help="The PACS, as the service names it "
                                           "(`krypton pacs list`).")] = "pacs",
    model: Annotated[str | None, typer.Option(help="Deployed model; default the "
                                                   "dataset's or the first.")] = None,
    dataset: Annotated[str | None, typer.Option()] = None,
    patch_size: Annotated[int | None, typer.Option(help="Patch side, model-input pixels.")
                          ] = None,
    stride: Annotated[int | None, typer.Option(help="Step, model-input pixels.")] = None,
    mode: Annotated[str, typer.Option(help="exact or approximate.")] = "exact",
    store: Annotated[bool, typer.Option(
        "--store/--no-store", help="Store the results back into the study.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the job.")] = 600.0,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Explain one instance; print the prediction and what was stored where.

    Exits 1 if the job failed or its results could not be stored.
    """
    fields: dict[str, Any] = {"mode": mode, "store_results": store} | {
        name: value for name, value in (("model", model), ("dataset", dataset),
                                        ("patch_size", patch_size), ("stride", stride))
        if value is not None}
    with _service(url, api_key, timeout=max(timeout, 90.0)) as krypton:
        job = krypton.explain_instance(pacs, study, series, instance, **fields)
        typer.echo(f"job {job['id']} {job['status']}", err=True)
        job = krypton.wait(job, timeout=timeout)
    if job["status"] != "succeeded":
        typer.echo(f"error: job {job['id']} failed: {job['error']['detail']}", err=True)
        raise typer.Exit(code=1)
    prediction = job["prediction"]
    untrained = "  (untrained demo weights: not a diagnosis)" if job["random_weights"] else ""
    typer.echo(f"{prediction['predicted_label']} ({prediction['predicted_probability']:.3f})"
               f"  job {job['id']}{untrained}")
    _show(job)


@pacs_app.command("results")
def results(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """What a job stored in its PACS: role, SOP class, Series and SOP Instance UIDs.

    Exits 1 if it stored nothing, saying why.
    """
    with _service(url, api_key) as krypton:
        job = krypton.job(job_id)
    _show(job)


@pacs_app.command("list")
def list_pacs(url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """The PACS the service knows, and whether results go back to each."""
    with _service(url, api_key) as krypton:
        known = krypton.pacs()
    for server in known:
        back = "results stored back" if server["store_results"] else "results kept"
        typer.echo(f"{server['name']:24} {back}")
    if not known:
        typer.echo("the service knows no PACS (KRYPTON_PACS_URL, or [[pacs]] in its "
                   "registry)", err=True)


@contextlib.contextmanager
def _service(url: str, api_key: str | None, *, timeout: float = 90.0) -> Iterator[Client]:
    """A client of the service; its refusals and a service out of reach end the command
    with one line saying so."""
    from krypton.client import Client, KryptonError

    try:
        with Client(url, api_key=api_key, timeout=timeout) as krypton:
            yield krypton
    except KryptonError as exc:
        fail(str(exc))
    except httpx.TransportError as exc:
        fail(f"cannot reach Krypton at {url} ({type(exc).__name__}): is `krypton serve` "
             "running there? (--url or KRYPTON_URL says where)")


def _show(job: dict[str, Any]) -> None:
    """One line per stored result; exit 1 saying why when nothing was stored."""
    from krypton.client import KryptonError, stored_results

    try:
        stored = stored_results(job)
    except KryptonError as exc:
        typer.echo(f"error: nothing stored: {exc}", err=True)
        raise typer.Exit(code=1) from None
    study = job["delivery"]["study_instance_uid"]
    typer.echo(f"stored in PACS {job['delivery']['pacs']!r}, study {study}:")
    for item in stored:
        typer.echo(f"  {item['role']:15} {item['sop_class_uid']:32} "
                   f"series {item['series_instance_uid']}  instance {item['sop_instance_uid']}")
