"""``krypton keys``: the API keys a deployment accepts, kept as hashes in a keys file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from krypton.cli.common import fail
from krypton.service.auth import SCOPES, KeyStore

__all__ = ["register"]

keys_app = typer.Typer(
    help="API keys: `add` prints a new key once, `list` shows names and scopes, `revoke` "
    "removes one (the service sees changes without a restart).", no_args_is_help=True)

KeysFile = Annotated[Path, typer.Option(
    "--file", envvar="KRYPTON_KEYS_FILE", help="The keys file the service reads "
    "(KRYPTON_KEYS_FILE).")]


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")


@keys_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Who or what uses the key, e.g. cdss-prod.")],
    scope: Annotated[str, typer.Option(
        help="heatmaps: submit and read its own jobs; admin: everything, tuning included.")
                     ] = "heatmaps",
    file: KeysFile = Path("keys.json"),
) -> None:
    """Create a key and print it. Only its hash is stored: copy it now."""
    if scope not in SCOPES:
        fail(f"--scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    try:
        token = KeyStore(file).add(name, scope)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"added key {name!r} ({scope}) to {file}; send it as "
               f"'Authorization: Bearer KEY'. It is shown once:", err=True)
    typer.echo(token)


@keys_app.command("list")
def list_keys(file: KeysFile = Path("keys.json")) -> None:
    """Every key's name, scope and creation time (never the key)."""
    try:
        keys = KeyStore(file).keys()
    except (ValueError, OSError) as exc:
        fail(str(exc))
    for key in keys:
        typer.echo(f"{key.name:24} {key.scope:9} {key.created}")
    if not keys:
        typer.echo(f"no keys in {file}", err=True)


@keys_app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="The key's name.")],
           file: KeysFile = Path("keys.json")) -> None:
    """Remove a key: requests with it are refused from the next one on."""
    try:
        removed = KeyStore(file).revoke(name)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    if not removed:
        fail(f"no key named {name!r} in {file}")
    typer.echo(f"revoked key {name!r}")
