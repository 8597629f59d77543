"""Where the service keeps its state, one interface per concern.

- :class:`JobQueue` (``jobs.py``): jobs, their images and results, the queue
  workers claim from, admission (rates and quotas, checked in the same step
  as the write) and notice of each job's changes;
- :class:`WorkerRegistry` (``workers.py``): workers' heartbeats;
- :class:`ConfigStore` (``configs.py``): tuned dataset configs.

Each has an embedded implementation (``memory.py``: the API's own process,
one machine, no Redis) and a Redis one (``redis.py``: API processes and
workers anywhere). A :class:`Store` holds one of each, made together.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from krypton.models import DatasetStore
from krypton.service import constants
from krypton.service.store.changes import Changes
from krypton.service.store.configs import ConfigStore, FileConfigs, MemoryConfigs
from krypton.service.store.jobs import Admission, Claim, JobQueue
from krypton.service.store.memory import InMemoryQueue, InMemoryWorkers
from krypton.service.store.redis import RedisConfigs, RedisStreamQueue, RedisWorkers, connect
from krypton.service.store.workers import WorkerRegistry

__all__ = ["Admission", "Changes", "Claim", "ConfigStore", "JobQueue", "Store", "WorkerRegistry"]


@dataclass(frozen=True)
class Store:
    """The service's state: jobs and their queue, workers' heartbeats, tuned configs."""

    jobs: JobQueue
    workers: WorkerRegistry
    configs: ConfigStore

    @property
    def name(self) -> str:
        """``memory`` or ``redis``."""
        return self.jobs.name

    @classmethod
    def memory(cls, *, ttl_seconds: int, configs: DatasetStore | None = None,
               claim_idle_ms: int = constants.CLAIM_IDLE_MS,
               heartbeat_ttl_seconds: int = constants.HEARTBEAT_TTL_SECONDS,
               clock: Callable[[], float] = time.monotonic) -> Store:
        """The embedded store; tuned configs go to ``configs`` (a folder of files) when
        given, since they cost minutes to make, else they live in memory too."""
        return cls(jobs=InMemoryQueue(ttl_seconds=ttl_seconds, claim_idle_ms=claim_idle_ms,
                                      clock=clock),
                   workers=InMemoryWorkers(heartbeat_ttl_seconds=heartbeat_ttl_seconds,
                                           clock=clock),
                   configs=MemoryConfigs() if configs is None else FileConfigs(configs))

    @classmethod
    def redis(cls, url: str, *, ttl_seconds: int,
              max_connections: int = constants.REDIS_MAX_CONNECTIONS,
              claim_idle_ms: int = constants.CLAIM_IDLE_MS,
              heartbeat_ttl_seconds: int = constants.HEARTBEAT_TTL_SECONDS,
              memory_reserve_bytes: int = constants.REDIS_MEMORY_RESERVE_BYTES) -> Store:
        """The Redis store at ``url``, its three parts on one connection pool."""
        client = connect(url, max_connections=max_connections)
        return cls(jobs=RedisStreamQueue(client, ttl_seconds=ttl_seconds,
                                         claim_idle_ms=claim_idle_ms,
                                         memory_reserve_bytes=memory_reserve_bytes),
                   workers=RedisWorkers(client, heartbeat_ttl_seconds=heartbeat_ttl_seconds),
                   configs=RedisConfigs(client))

    async def close(self) -> None:
        """Release connections (the parts share them: the job queue closes them)."""
        await self.jobs.close()
