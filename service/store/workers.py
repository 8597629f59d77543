"""Which workers are alive: the heartbeats readiness and the weights check read."""

from __future__ import annotations

from abc import ABC, abstractmethod

from krypton.service import constants
from krypton.service.schemas import WorkerInfo

__all__ = ["WorkerRegistry"]


class WorkerRegistry(ABC):
    """Workers' heartbeats, each live for ``heartbeat_ttl_seconds`` after it was sent."""

    def __init__(self, *, heartbeat_ttl_seconds: int = constants.HEARTBEAT_TTL_SECONDS) -> None:
        self.heartbeat_ttl_seconds = heartbeat_ttl_seconds

    @abstractmethod
    async def beat(self, info: WorkerInfo) -> None:
        """Record that a worker is alive, for ``heartbeat_ttl_seconds``."""

    @abstractmethod
    async def retire(self, worker: str) -> None:
        """Remove a stopping worker's heartbeat (and what the queue keeps of it)."""

    @abstractmethod
    async def live(self) -> list[WorkerInfo]:
        """Workers whose heartbeat is live, by name."""

    async def prune(self) -> list[str]:
        """Forget workers whose heartbeat expired and who hold no job; their names."""
        return []
