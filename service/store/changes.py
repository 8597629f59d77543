"""Waiting for a job to change without reading the store in a loop.

Each store wakes this process's waiters when a job is written: the
embedded store as it writes, Redis through a pub/sub channel that one
listener per process follows. A waiter still reads the job itself after
each wake-up; a notification only says when to read. Since Redis's pub/sub
delivers at most once and an expiry writes nothing, no waiter goes longer
than ``fallback_seconds`` without reading.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["ChangeBoard", "Changes"]


class Changes:
    """One waiter's notice of writes to one job."""

    def __init__(self, fallback_seconds: float) -> None:
        self._written = asyncio.Event()
        self._fallback_seconds = fallback_seconds

    def wake(self) -> None:
        self._written.set()

    async def next(self, timeout: float) -> bool:
        """Wait for a write since the last call (or since the watch began), at most
        ``timeout`` seconds and never more than the fallback; whether one came."""
        try:
            await asyncio.wait_for(self._written.wait(),
                                   max(0.0, min(timeout, self._fallback_seconds)))
        except TimeoutError:
            return False
        self._written.clear()
        return True


class ChangeBoard:
    """This process's waiters, by job id."""

    def __init__(self, fallback_seconds: float) -> None:
        self.fallback_seconds = fallback_seconds
        self._waiters: dict[str, set[Changes]] = {}

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[Changes]:
        changes = Changes(self.fallback_seconds)
        self._waiters.setdefault(job_id, set()).add(changes)
        try:
            yield changes
        finally:
            waiters = self._waiters.get(job_id, set())
            waiters.discard(changes)
            if not waiters:
                self._waiters.pop(job_id, None)

    def wake(self, job_id: str) -> None:
        for changes in self._waiters.get(job_id, ()):
            changes.wake()

    def wake_all(self) -> None:
        """Every waiter reads again: notifications may have been lost."""
        for waiters in self._waiters.values():
            for changes in waiters:
                changes.wake()
