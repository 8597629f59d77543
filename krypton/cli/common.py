"""What every ``krypton`` subcommand shares: choices, errors, logging."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import NoReturn, TypeVar

import typer

from krypton.logs import configure_logging

__all__ = ["Device", "EngineMode", "configure_logging", "fail", "settings_or_fail"]

T = TypeVar("T")


class EngineMode(StrEnum):
    exact = "exact"
    approximate = "approximate"
    naive = "naive"


class Device(StrEnum):
    cpu = "cpu"
    cuda = "cuda"


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with status 2 (a usage error)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def settings_or_fail(get: Callable[[], T]) -> T:
    """The service settings, or a clear error naming the bad ``KRYPTON_*`` variable."""
    try:
        return get()
    except ValueError as exc:  # pydantic's ValidationError names the bad variable
        fail(f"invalid KRYPTON_* environment: {exc}")



