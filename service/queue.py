"""Where jobs wait and results live: a Redis Stream, or an in-process stand-in.

The API calls :meth:`JobQueue.submit`, ``get`` and ``delete``; workers call
``claim``, ``touch``, ``save``, ``put_result`` and ``ack``. Both
implementations keep the same promises:

- a job, its images, its result and its heatmap so far share one expiry
  (patient data), and ``delete`` removes them all at once;
- tuned dataset configs are kept without expiry, so that the API and the
  workers share them through the store and nothing else;
- ``save`` never brings back a deleted or expired job: it returns ``False``
  and the worker drops the work;
- a claimed job is delivered to one worker; if that worker stops touching it
  for ``claim_idle_ms`` (it died), ``claim`` hands it to another.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from krypton.models import DatasetConfig, DatasetStore
from krypton.service import constants
from krypton.service.schemas import Job, WorkerInfo, utcnow

__all__ = ["Claim", "InMemoryQueue", "JobQueue", "RedisStreamQueue"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    """A job handed to one worker, to be acknowledged when its outcome is stored."""

    job_id: str
    message_id: str


class JobQueue(ABC):
    """The job store and queue shared by the API and the workers."""

    name: str

    def __init__(self, *, ttl_seconds: int, claim_idle_ms: int = constants.CLAIM_IDLE_MS,
                 heartbeat_ttl_seconds: int = constants.HEARTBEAT_TTL_SECONDS) -> None:
        self.ttl_seconds = ttl_seconds
        self.claim_idle_ms = claim_idle_ms
        self.heartbeat_ttl_seconds = heartbeat_ttl_seconds

    def _stamp(self, job: Job, images: Sequence[bytes]) -> Job:
        return job.model_copy(update={
            "expires_at": utcnow() + dt.timedelta(seconds=self.ttl_seconds),
            "images": len(images)})

    @abstractmethod
    async def submit(self, job: Job, images: Sequence[bytes]) -> Job:
        """Store the job and its images, then queue it; returns the stored job."""

    @abstractmethod
    async def get(self, job_id: str) -> Job | None:
        """The job, or ``None`` when unknown, expired or deleted."""

    @abstractmethod
    async def save(self, job: Job, *, owner: str | None = None) -> bool:
        """Overwrite an existing job, keeping its expiry; ``False`` when it is gone.

        With ``owner``, only while the stored job is unfinished and names
        ``owner`` as its worker (``""``: no worker yet), checked and written in
        one step: a worker never overwrites a job another worker took over or
        finished.
        """

    @abstractmethod
    async def images(self, job_id: str, count: int) -> list[bytes] | None:
        """The job's uploaded images, or ``None`` when any is gone."""

    @abstractmethod
    async def put_result(self, job_id: str, data: bytes) -> bool:
        """Store the result with the job's expiry; ``False`` when the job is gone."""

    @abstractmethod
    async def result(self, job_id: str) -> bytes | None:
        """The stored result, or ``None``."""

    @abstractmethod
    async def put_partial(self, job_id: str, data: bytes) -> bool:
        """Store the heatmap so far (replacing the last one) with the job's expiry."""

    @abstractmethod
    async def partial(self, job_id: str) -> bytes | None:
        """The last heatmap so far a worker stored, or ``None``."""

    @abstractmethod
    async def delete(self, job_id: str) -> bool:
        """Purge the job, its images and its result now; ``False`` when there was none."""

    @abstractmethod
    async def claim(self, consumer: str, block_ms: int) -> Claim | None:
        """The next job for ``consumer``: a dead worker's first, else a new one."""

    @abstractmethod
    async def touch(self, claim: Claim, consumer: str) -> bool:
        """Tell the queue ``consumer`` is still working on ``claim``.

        ``False``, and nothing changed, when the claim is no longer
        ``consumer``'s: another worker took it over while this one stalled, or
        it was acknowledged. A stalled worker must not take a job back.
        """

    @abstractmethod
    async def ack(self, claim: Claim) -> None:
        """The job's outcome is stored: never deliver it again."""

    @abstractmethod
    async def beat(self, info: WorkerInfo) -> None:
        """Record that a worker is alive, for ``heartbeat_ttl_seconds``."""

    @abstractmethod
    async def retire(self, worker: str) -> None:
        """Remove a stopping worker's heartbeat."""

    @abstractmethod
    async def workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat is live."""

    async def prune(self) -> list[str]:
        """Forget workers whose heartbeat expired and who hold no job; their names."""
        return []

    @abstractmethod
    async def ping(self) -> bool:
        """Whether the store answers."""

    @abstractmethod
    async def backlog(self) -> int:
        """Jobs submitted and not yet acknowledged: waiting or running."""

    @abstractmethod
    async def count(self, bucket: str, window_seconds: int) -> tuple[int, int]:
        """Count one more event in ``bucket``'s current window (rate limits).

        Returns the events in this window so far, this one included, and the
        seconds until the window ends.
        """

    @abstractmethod
    async def dataset_config(self, dataset: str) -> DatasetConfig | None:
        """The dataset's tuned config, or ``None`` before it is tuned."""

    @abstractmethod
    async def save_dataset_config(self, config: DatasetConfig) -> None:
        """Keep ``config`` as its dataset's tuned config, replacing any earlier one."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


@dataclass
class _Entry:
    value: Any
    expires: float


@dataclass
class _Pending:
    job_id: str
    consumer: str
    touched: float


@dataclass
class _Memory:
    entries: dict[str, _Entry] = field(default_factory=dict)
    pending: dict[str, _Pending] = field(default_factory=dict)
    configs: dict[str, DatasetConfig] = field(default_factory=dict)


class InMemoryQueue(JobQueue):
    """The embedded default: dictionaries with expiry and an ``asyncio.Queue``.

    Lives and dies with the API process, so it needs none of Redis's recovery;
    it still honours expiry, deletion and claims so behaviour matches. Jobs,
    images and results are lost when the process ends; tuned dataset configs
    are kept in ``configs`` (a folder of files) when one is given, since they
    cost minutes to make.

    Args:
        configs: where dataset configs persist; ``None`` keeps them in memory.
        clock: monotonic seconds, for expiry and idle claims (tests inject one).
        **kwargs: :class:`JobQueue`'s.
    """

    name = "memory"

    def __init__(self, *, configs: DatasetStore | None = None,
                 clock: Callable[[], float] = time.monotonic, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._memory = _Memory()
        self._waiting: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._sequence = 0
        self._configs = configs
        self._clock = clock

    def _live(self, key: str) -> Any:
        entry = self._memory.entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del self._memory.entries[key]
            return None
        return entry.value

    def _purge_expired(self) -> None:
        now = self._clock()
        for key in [k for k, e in self._memory.entries.items() if e.expires <= now]:
            del self._memory.entries[key]

    async def submit(self, job: Job, images: Sequence[bytes]) -> Job:
        self._purge_expired()
        job = self._stamp(job, images)
        expires = self._clock() + self.ttl_seconds
        self._memory.entries[constants.JOB_KEY.format(job.id)] = _Entry(job, expires)
        for index, image in enumerate(images):
            self._memory.entries[_image_key(job.id, index)] = _Entry(image, expires)
        self._sequence += 1
        await self._waiting.put((f"{self._sequence}-0", job.id))
        return job

    async def get(self, job_id: str) -> Job | None:
        job: Job | None = self._live(constants.JOB_KEY.format(job_id))
        return job

    async def save(self, job: Job, *, owner: str | None = None) -> bool:
        key = constants.JOB_KEY.format(job.id)
        current: Job | None = self._live(key)
        if current is None:
            return False
        if owner is not None and (current.status.finished or (current.worker or "") != owner):
            return False
        self._memory.entries[key].value = job
        return True

    async def images(self, job_id: str, count: int) -> list[bytes] | None:
        found = [self._live(_image_key(job_id, i)) for i in range(count)]
        return None if any(f is None for f in found) else found

    async def put_result(self, job_id: str, data: bytes) -> bool:
        return self._put_beside_job(job_id, constants.RESULT_KEY.format(job_id), data)

    async def result(self, job_id: str) -> bytes | None:
        data: bytes | None = self._live(constants.RESULT_KEY.format(job_id))
        return data

    async def put_partial(self, job_id: str, data: bytes) -> bool:
        return self._put_beside_job(job_id, constants.PARTIAL_KEY.format(job_id), data)

    async def partial(self, job_id: str) -> bytes | None:
        data: bytes | None = self._live(constants.PARTIAL_KEY.format(job_id))
        return data

    def _put_beside_job(self, job_id: str, key: str, data: bytes) -> bool:
        job_key = constants.JOB_KEY.format(job_id)
        if self._live(job_key) is None:
            return False
        self._memory.entries[key] = _Entry(data, self._memory.entries[job_key].expires)
        return True

    async def delete(self, job_id: str) -> bool:
        existed = self._live(constants.JOB_KEY.format(job_id)) is not None
        doomed = (constants.JOB_KEY.format(job_id), constants.RESULT_KEY.format(job_id),
                  constants.PARTIAL_KEY.format(job_id))
        images = constants.IMAGE_KEY.format(job_id) + ":"
        for key in [k for k in self._memory.entries if k in doomed or k.startswith(images)]:
            del self._memory.entries[key]
        return existed

    async def claim(self, consumer: str, block_ms: int) -> Claim | None:
        self._purge_expired()  # workers claim often: expired patient data goes promptly
        now = self._clock()
        for message_id, pending in self._memory.pending.items():
            if (now - pending.touched) * 1000 >= self.claim_idle_ms:
                pending.consumer, pending.touched = consumer, now
                return Claim(pending.job_id, message_id)
        try:
            message_id, job_id = await asyncio.wait_for(self._waiting.get(), block_ms / 1000)
        except TimeoutError:
            return None
        self._memory.pending[message_id] = _Pending(job_id, consumer, self._clock())
        return Claim(job_id, message_id)

    async def touch(self, claim: Claim, consumer: str) -> bool:
        pending = self._memory.pending.get(claim.message_id)
        if pending is None or pending.consumer != consumer:
            return False
        pending.touched = self._clock()
        return True

    async def ack(self, claim: Claim) -> None:
        self._memory.pending.pop(claim.message_id, None)

    async def beat(self, info: WorkerInfo) -> None:
        self._memory.entries[constants.WORKER_KEY.format(info.name)] = _Entry(
            info, self._clock() + self.heartbeat_ttl_seconds)

    async def retire(self, worker: str) -> None:
        self._memory.entries.pop(constants.WORKER_KEY.format(worker), None)

    async def workers(self) -> list[WorkerInfo]:
        prefix = constants.WORKER_KEY.format("")
        found = [self._live(k) for k in list(self._memory.entries) if k.startswith(prefix)]
        return sorted((w for w in found if w is not None), key=lambda w: w.name)

    async def ping(self) -> bool:
        return True

    async def backlog(self) -> int:
        return self._waiting.qsize() + len(self._memory.pending)

    async def count(self, bucket: str, window_seconds: int) -> tuple[int, int]:
        now = self._clock()
        window = int(now // window_seconds)
        key = constants.RATE_KEY.format(bucket, window)
        ends = (window + 1) * window_seconds
        entry = self._memory.entries.setdefault(key, _Entry(0, ends))
        entry.value += 1
        return entry.value, max(1, math.ceil(ends - now))

    async def dataset_config(self, dataset: str) -> DatasetConfig | None:
        if self._configs is not None:
            return await asyncio.to_thread(self._configs.find, dataset)
        config: DatasetConfig | None = self._memory.configs.get(dataset)
        return config

    async def save_dataset_config(self, config: DatasetConfig) -> None:
        if self._configs is not None:
            await asyncio.to_thread(self._configs.save, config)
        else:
            self._memory.configs[config.dataset] = config


class RedisStreamQueue(JobQueue):
    """Jobs in a Redis Stream read by a consumer group; documents in keys with a TTL.

    ``claim`` first takes over messages idle for ``claim_idle_ms``
    (``XAUTOCLAIM``: their worker died), then reads new ones (``XREADGROUP``).
    Working workers ``touch`` their claim (``XCLAIM ... JUSTID``, only while
    ``XPENDING`` still names them) so it never looks idle. Saves use
    ``SET ... XX KEEPTTL`` so a deleted job stays deleted.
    """

    name = "redis"

    def __init__(self, client: aioredis.Redis, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # redis-py's response types depend on decode_responses; this client returns bytes.
        self.client: Any = client
        self._group_ready = False

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisStreamQueue:
        """A queue on a pooled client that checks idle connections and retries a command
        once Redis is back (a restart leaves pooled connections dead)."""
        client = aioredis.Redis.from_url(
            url, decode_responses=False, health_check_interval=15, socket_keepalive=True,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError])
        return cls(client, **kwargs)

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.client.xgroup_create(constants.STREAM, constants.GROUP, id="0",
                                            mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def submit(self, job: Job, images: Sequence[bytes]) -> Job:
        job = self._stamp(job, images)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(constants.JOB_KEY.format(job.id), job.model_dump_json(), ex=self.ttl_seconds)
            for index, image in enumerate(images):
                pipe.set(_image_key(job.id, index), image, ex=self.ttl_seconds)
            pipe.xadd(constants.STREAM, {"job_id": job.id})
            await pipe.execute()
        return job

    async def get(self, job_id: str) -> Job | None:
        raw = await self.client.get(constants.JOB_KEY.format(job_id))
        return None if raw is None else Job.model_validate_json(raw)

    async def save(self, job: Job, *, owner: str | None = None) -> bool:
        key = constants.JOB_KEY.format(job.id)
        if owner is None:
            stored = await self.client.set(key, job.model_dump_json(), xx=True, keepttl=True)
            return bool(stored)
        return bool(await self.client.eval(_SAVE_IF_OWNER, 1, key, job.model_dump_json(), owner))

    async def images(self, job_id: str, count: int) -> list[bytes] | None:
        if count == 0:
            return []
        found = await self.client.mget([_image_key(job_id, i) for i in range(count)])
        return None if any(f is None for f in found) else list(found)

    async def put_result(self, job_id: str, data: bytes) -> bool:
        return await self._put_beside_job(job_id, constants.RESULT_KEY.format(job_id), data)

    async def result(self, job_id: str) -> bytes | None:
        data: bytes | None = await self.client.get(constants.RESULT_KEY.format(job_id))
        return data

    async def put_partial(self, job_id: str, data: bytes) -> bool:
        return await self._put_beside_job(job_id, constants.PARTIAL_KEY.format(job_id), data)

    async def partial(self, job_id: str) -> bytes | None:
        data: bytes | None = await self.client.get(constants.PARTIAL_KEY.format(job_id))
        return data

    async def _put_beside_job(self, job_id: str, key: str, data: bytes) -> bool:
        # One script, so a DELETE cannot slip between reading the TTL and writing.
        stored = await self.client.eval(_PUT_BESIDE_JOB, 2, constants.JOB_KEY.format(job_id),
                                        key, data)
        return bool(stored)

    async def delete(self, job_id: str) -> bool:
        job = await self.get(job_id)
        images = 1 if job is None else job.images
        keys = [constants.JOB_KEY.format(job_id), constants.RESULT_KEY.format(job_id),
                constants.PARTIAL_KEY.format(job_id),
                *(_image_key(job_id, i) for i in range(max(images, 1)))]
        removed = await self.client.delete(*keys)
        return bool(removed) and job is not None

    async def claim(self, consumer: str, block_ms: int) -> Claim | None:
        await self._ensure_group()
        _, taken, *_ = await self.client.xautoclaim(
            constants.STREAM, constants.GROUP, consumer, min_idle_time=self.claim_idle_ms,
            start_id="0-0", count=1)
        if taken:
            message_id, fields = taken[0]
            logger.info("reclaimed message %s from an idle worker", _text(message_id))
            return Claim(_text(fields[b"job_id"]), _text(message_id))
        read = await self.client.xreadgroup(constants.GROUP, consumer, {constants.STREAM: ">"},
                                            count=1, block=block_ms)
        if not read:
            return None
        message_id, fields = read[0][1][0]
        return Claim(_text(fields[b"job_id"]), _text(message_id))

    async def touch(self, claim: Claim, consumer: str) -> bool:
        # One script: check the owner and reset the idle time with nothing in between.
        touched = await self.client.eval(_TOUCH_IF_OWNER, 1, constants.STREAM, constants.GROUP,
                                         claim.message_id, consumer)
        return bool(touched)

    async def ack(self, claim: Claim) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xack(constants.STREAM, constants.GROUP, claim.message_id)
            pipe.xdel(constants.STREAM, claim.message_id)
            await pipe.execute()

    async def beat(self, info: WorkerInfo) -> None:
        # The key holds the details and expires with a silent worker; the sorted set
        # indexes live workers so readiness never scans the keyspace.
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(constants.WORKER_KEY.format(info.name), info.model_dump_json(),
                     ex=self.heartbeat_ttl_seconds)
            pipe.zadd(constants.WORKERS_KEY, {info.name: time.time()})
            await pipe.execute()

    async def retire(self, worker: str) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(constants.WORKER_KEY.format(worker))
            pipe.zrem(constants.WORKERS_KEY, worker)
            await pipe.execute()
        await self._forget_consumers({worker})

    async def prune(self) -> list[str]:
        live = {worker.name for worker in await self.workers()}
        consumers = await self._consumers()
        return await self._forget_consumers(set(consumers) - live)

    async def _consumers(self) -> dict[str, int]:
        """The consumer group's members and how many messages each holds."""
        await self._ensure_group()
        found = await self.client.xinfo_consumers(constants.STREAM, constants.GROUP)
        return {_text(c["name"]): int(c["pending"]) for c in found}

    async def _forget_consumers(self, names: set[str]) -> list[str]:
        """Delete those of ``names`` that hold no message (a held one is reclaimed first)."""
        if not names:
            return []
        holding = await self._consumers()
        forgotten = sorted(n for n in names if holding.get(n) == 0)
        for name in forgotten:
            await self.client.xgroup_delconsumer(constants.STREAM, constants.GROUP, name)
        return forgotten

    async def workers(self) -> list[WorkerInfo]:
        oldest = time.time() - self.heartbeat_ttl_seconds
        await self.client.zremrangebyscore(constants.WORKERS_KEY, "-inf", oldest)
        names = await self.client.zrangebyscore(constants.WORKERS_KEY, oldest, "+inf")
        if not names:
            return []
        found = await self.client.mget([constants.WORKER_KEY.format(_text(n)) for n in names])
        workers = [WorkerInfo.model_validate_json(raw) for raw in found if raw is not None]
        return sorted(workers, key=lambda w: w.name)

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    async def backlog(self) -> int:
        # Acknowledged entries are deleted from the stream, so its length is the backlog.
        return int(await self.client.xlen(constants.STREAM))

    async def count(self, bucket: str, window_seconds: int) -> tuple[int, int]:
        now = time.time()
        window = int(now // window_seconds)
        key = constants.RATE_KEY.format(bucket, window)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, window_seconds + 1)
            events, _ = await pipe.execute()
        return int(events), max(1, math.ceil((window + 1) * window_seconds - now))

    async def dataset_config(self, dataset: str) -> DatasetConfig | None:
        raw = await self.client.get(constants.DATASET_KEY.format(dataset))
        return None if raw is None else DatasetConfig.from_json(_text(raw))

    async def save_dataset_config(self, config: DatasetConfig) -> None:
        await self.client.set(constants.DATASET_KEY.format(config.dataset), config.to_json())

    async def close(self) -> None:
        await self.client.aclose()


_SAVE_IF_OWNER = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local current = cjson.decode(raw)
local worker = current['worker']
if worker == cjson.null or worker == nil then worker = '' end
if worker ~= ARGV[2] then return 0 end
if current['status'] == 'succeeded' or current['status'] == 'failed' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
return 1
"""

_TOUCH_IF_OWNER = """
local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #entry == 0 or entry[1][2] ~= ARGV[3] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"""

_PUT_BESIDE_JOB = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
return 1
"""


def _image_key(job_id: str, index: int) -> str:
    return f"{constants.IMAGE_KEY.format(job_id)}:{index}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
