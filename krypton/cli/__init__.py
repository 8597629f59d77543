"""The ``krypton`` command: explain and tune from the shell, serve, work, benchmark.

One module per group of subcommands; each registers its commands on :data:`app`.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from krypton.cli import bench, demo, explain, keys, service

__all__ = ["app"]

app = typer.Typer(
    help="Occlusion sensitivity heatmaps for CNN image classifiers, by incremental inference.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


for _group in (explain, service, keys, bench, demo):
    _group.register(app)
