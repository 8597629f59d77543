"""Errors raised by :mod:`krypton.models`. One root, so callers can catch all of them.

The ``ValueError`` bases let code that only knows the standard library still
catch bad input, while the service maps each class to its own HTTP status.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = [
    "CheckpointError",
    "DatasetConfigError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "InvalidArgumentError",
    "ModelError",
    "UnknownModelError",
]


class ModelError(Exception):
    """Root of every error :mod:`krypton.models` raises on purpose."""


class UnknownModelError(ModelError, ValueError):
    """A model name that is not registered.

    The message lists the known names because the caller usually typed the
    name by hand (CLI flag, request field) and needs the alternatives.

    Attributes:
        name: The name that was asked for.
        known: Every registered name, sorted.
    """

    def __init__(self, name: str, known: Iterable[str] = (), *, where: str = "") -> None:
        self.name = name
        self.known = tuple(sorted(known))
        self.where = where
        listed = ", ".join(self.known) if self.known else "none registered"
        message = f"unknown model {name!r}; known models: {listed}"
        super().__init__(f"{where}: {message}" if where else message)

    def __reduce__(self) -> tuple[Any, ...]:
        # The default reduce would call cls(message) and lose ``known``.
        return _unknown_model, (self.name, self.known, self.where)


def _unknown_model(name: str, known: tuple[str, ...], where: str) -> UnknownModelError:
    return UnknownModelError(name, known, where=where)


class InvalidArgumentError(ModelError, ValueError):
    """An argument is out of range or of the wrong kind (``num_classes=0``, colour ``"purple"``)."""


class CheckpointError(ModelError):
    """A checkpoint file is missing, unreadable, or does not fit the architecture."""


class ImageDecodeError(ModelError, ValueError):
    """Image bytes that cannot (or must not, being too large) be decoded."""


class ImageTooLargeError(ImageDecodeError):
    """An image with more pixels than may be decoded (a limit, or a decompression bomb)."""


class DatasetConfigError(ModelError, ValueError):
    """A dataset config that is missing, malformed, or tuned for another model or checkpoint."""
