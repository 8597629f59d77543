"""How much memory decoding images may hold at once in one process.

A 49-megapixel upload decodes to hundreds of megabytes before it is reduced;
three at once would take a process past what a small host has. Every decode
estimates its peak from the image's header and reserves it here first: while
the reservations in flight would pass the capacity, it waits its turn, and
one that alone would pass it is refused before a byte is decoded.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator

from krypton.models.errors import ImageTooLargeError

__all__ = ["DEFAULT_DECODE_MEMORY_BYTES", "DECODING", "MemoryBudget", "return_freed_memory"]

DEFAULT_DECODE_MEMORY_BYTES = 256 * 1024**2


class MemoryBudget:
    """A capacity in bytes that decodes reserve from, waiting while it is taken."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._used = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, cost: int, what: str) -> Iterator[None]:
        """Hold ``cost`` bytes of the capacity for the block; ``what`` names the work.

        Raises:
            ImageTooLargeError: ``cost`` alone is more than the capacity.
        """
        if cost > self.capacity:
            raise ImageTooLargeError(
                f"{what} would take about {cost // 2**20} MiB to decode, more than the "
                f"{self.capacity // 2**20} MiB this service decodes at once")
        with self._changed:
            self._changed.wait_for(lambda: self._used + cost <= self.capacity)
            self._used += cost
        try:
            yield
        finally:
            with self._changed:
                self._used -= cost
                self._changed.notify_all()

    @property
    def used(self) -> int:
        """Bytes reserved now."""
        return self._used


DECODING = MemoryBudget(DEFAULT_DECODE_MEMORY_BYTES)
"""The process's budget: every decode in :mod:`krypton.models` reserves from it.
A deployment sets its capacity (``KRYPTON_DECODE_MEMORY_BYTES``) at start."""

_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 128 * 1024


def return_freed_memory() -> bool:
    """Have glibc give large freed blocks back to the system at once; whether it could.

    glibc serves blocks over 128 KiB with their own mappings and returns them on
    free, but after freeing one it raises that threshold to the block's size
    (up to 32 MiB), so the next decode's megabyte-sized arrays stay in the heap
    after they are freed: a service drawing results one after another then
    grew by 90 MiB without holding anything. Fixing the threshold stops that.
    Elsewhere than glibc (musl, macOS) nothing changes.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False
