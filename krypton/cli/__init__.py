"""The ``krypton`` command: explain and tune from the shell, serve, work, benchmark.

One module per group of subcommands; each registers its commands on :data:`app`.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from krypton.cli import bench, demo, explain, keys, pacs, service
from krypton.logs import configure_logging

__all__ = ["app"]

app = typer.Typer(
    help="Occlusion sensitivity heatmaps for CNN image classifiers, by incremental inference.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    configure_logging(logging.DEBUG if verbose else logging.WARNING)


for _group in (explain, service, pacs, keys, bench, demo):
    _group.register(app)
