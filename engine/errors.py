"""Errors raised by the engine. One root, so callers can catch all of them."""

from __future__ import annotations

__all__ = ["EngineError", "InvalidParamsError", "RunStopped", "UnsupportedModelError"]


class EngineError(Exception):
    """Root of every error the occlusion engine raises on purpose."""


class InvalidParamsError(EngineError, ValueError):
    """An argument is out of range or inconsistent (patch larger than the image, ...)."""


class UnsupportedModelError(EngineError):
    """The model cannot be traced or does not take one image tensor."""


class RunStopped(EngineError):
    """The caller's ``should_stop`` asked a run to end before its last batch."""
