"""Where jobs wait and results live: a Redis Stream, or an in-process stand-in.

The API calls :meth:`JobQueue.submit`, ``get``, ``lost`` and ``delete``;
workers call ``claim``, ``touch``, ``save``, ``finish`` and ``ack``. Both
implementations keep the same promises:

- a submission is admitted or refused in one step with the write: the
  caller's rate (a sliding minute), its unfinished jobs and retained bytes,
  the queue's length and Redis's free memory are checked and the job stored
  with nothing in between, so concurrent submissions cannot overrun a limit;
- a job, its images, its result and its heatmap so far share one expiry
  (patient data), and ``delete`` removes them all at once;
- tuned dataset configs are kept without expiry, so that the API and the
  workers share them through the store and nothing else;
- ``save`` and ``finish`` never bring back a deleted or expired job, and with
  an owner they write only while that worker holds the unfinished job:
  ``finish`` writes the result, the document and the acknowledgement in one
  step, so a worker that lost its job cannot overwrite the outcome of the
  worker that took it over;
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
from collections import deque
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
from krypton.service.problems import QueueFull, QuotaExceeded, RateLimited, StoreBusy, StoreFull
from krypton.service.schemas import Job, WorkerInfo, job_created_at, utcnow

__all__ = ["Admission", "Claim", "InMemoryQueue", "JobQueue", "RedisStreamQueue"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    """A job handed to one worker, to be acknowledged when its outcome is stored."""

    job_id: str
    message_id: str


@dataclass(frozen=True)
class Admission:
    """Whose submission this is and the limits it must fit, checked as it is stored."""

    account: str
    """Whose quotas it counts against: an API key's id, or running open an address."""
    rate_per_minute: int = 2**31
    max_backlog: int = 2**31
    """Jobs waiting or running in the whole queue."""
    max_jobs: int = 2**31
    """Jobs of this account waiting or running."""
    max_bytes: int = 2**53
    """Bytes of images this account's unexpired jobs keep."""

    @classmethod
    def unlimited(cls, account: str = "") -> Admission:
        return cls(account=account)


class JobQueue(ABC):
    """The job store and queue shared by the API and the workers."""

    name: str

    def __init__(self, *, ttl_seconds: int, claim_idle_ms: int = constants.CLAIM_IDLE_MS,
                 heartbeat_ttl_seconds: int = constants.HEARTBEAT_TTL_SECONDS,
                 memory_reserve_bytes: int = constants.REDIS_MEMORY_RESERVE_BYTES) -> None:
        self.ttl_seconds = ttl_seconds
        self.claim_idle_ms = claim_idle_ms
        self.heartbeat_ttl_seconds = heartbeat_ttl_seconds
        self.memory_reserve_bytes = memory_reserve_bytes

    def _stamp(self, job: Job, images: Sequence[bytes], admission: Admission) -> Job:
        return job.model_copy(update={
            "expires_at": utcnow() + dt.timedelta(seconds=self.ttl_seconds),
            "images": len(images), "account": admission.account or None})

    @abstractmethod
    async def submit(self, job: Job, images: Sequence[bytes],
                     admission: Admission | None = None) -> Job:
        """Admit, store and queue the job and its images; returns the stored job.

        Raises:
            RateLimited: the account submitted ``rate_per_minute`` jobs in the last minute.
            QuotaExceeded: the account has ``max_jobs`` unfinished jobs, or its
                images would pass ``max_bytes``.
            QueueFull: ``max_backlog`` jobs wait or run.
            StoreFull: Redis has too little memory left before its ``maxmemory``.
        """

    @abstractmethod
    async def get(self, job_id: str) -> Job | None:
        """The job, or ``None`` when unknown, expired or deleted."""

    async def lost(self, job_id: str) -> dt.datetime | None:
        """When the store started afresh without ``job_id``, if it would still live.

        A job that ``get`` no longer finds was deleted, expired, never existed,
        or was lost with the store's data (a Redis restarted without
        persistence). For the last, the time the store started afresh;
        otherwise ``None``.
        """
        return None

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
    async def finish(self, claim: Claim, job: Job, result: bytes | None, *, owner: str) -> bool:
        """Store a finished job's document and result and acknowledge its claim, in one step.

        Only while the stored job is unfinished and names ``owner`` as its
        worker; ``False``, and nothing written, otherwise.
        """

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
        """The job's outcome is stored (or the job is gone): never deliver it again."""

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

    async def claimable(self) -> bool:
        """Whether workers can claim from the store now (it holds the queue to claim from)."""
        return True

    async def make_claimable(self) -> bool:
        """Make what workers claim from where it is missing, and say whether it exists now.

        Workers make it when they first claim; the API makes it too, so that it
        exists before any worker has started (an autoscaler reads its backlog to
        start the first) and again after Redis lost its data.
        """
        return await self.claimable()

    @abstractmethod
    async def dataset_config(self, dataset: str) -> DatasetConfig | None:
        """The dataset's tuned config, or ``None`` before it is tuned."""

    @abstractmethod
    async def save_dataset_config(self, config: DatasetConfig) -> None:
        """Keep ``config`` as its dataset's tuned config, replacing any earlier one."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def _refusal(reason: str, admission: Admission, *, retry_after: int, amount: int,
             size: int) -> Exception:
    """The error a refused submission raises, with what to do about it."""
    if reason == "rate":
        return RateLimited(f"more than {admission.rate_per_minute} jobs a minute from this "
                           f"caller; try again in {retry_after} s", retry_after=retry_after)
    if reason == "backlog":
        return QueueFull(f"{admission.max_backlog} jobs are waiting or running, the most this "
                         "service queues; try again shortly")
    if reason == "jobs":
        return QuotaExceeded(
            f"this caller has {amount} jobs waiting or running, the most one caller may; "
            "wait for one to finish", retry_after=constants.RETRY_AFTER_SECONDS)
    if reason == "bytes":
        return QuotaExceeded(
            f"this caller's unexpired jobs keep {amount} bytes of images and this upload of "
            f"{size} would pass its quota of {admission.max_bytes}; delete finished jobs "
            f"(DELETE /v1/heatmaps/ID) or wait {retry_after} s for the oldest to expire",
            retry_after=max(1, retry_after))
    return StoreFull(f"the job store has {max(amount, 0)} bytes left before its memory limit, "
                     f"too few for this upload of {size} bytes; room comes back as jobs are "
                     "deleted or expire")


# ---------------------------------------------------------------- in memory


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
class _Account:
    """One account's submissions in the last minute, retained jobs and unfinished ones."""

    submitted: deque[float] = field(default_factory=deque)
    retained: dict[str, tuple[float, int]] = field(default_factory=dict)
    """Job id -> (expiry, bytes of images)."""
    active: set[str] = field(default_factory=set)


@dataclass
class _Memory:
    entries: dict[str, _Entry] = field(default_factory=dict)
    pending: dict[str, _Pending] = field(default_factory=dict)
    configs: dict[str, DatasetConfig] = field(default_factory=dict)
    accounts: dict[str, _Account] = field(default_factory=dict)


class InMemoryQueue(JobQueue):
    """The embedded default: dictionaries with expiry and an ``asyncio.Queue``.

    Lives and dies with the API process, so it needs none of Redis's recovery;
    it still honours admission, expiry, deletion and claims so behaviour
    matches. Each method runs without awaiting between its checks and its
    writes, which on one event loop makes it one step. Jobs, images and
    results are lost when the process ends; tuned dataset configs are kept in
    ``configs`` (a folder of files) when one is given, since they cost
    minutes to make.

    Args:
        configs: where dataset configs persist; ``None`` keeps them in memory.
        clock: monotonic seconds, for expiry, rates and idle claims (tests inject one).
        **kwargs: :class:`JobQueue`'s.
    """

    name = "memory"

    def __init__(self, *, configs: DatasetStore | None = None,
                 clock: Callable[[], float] = time.monotonic, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._memory = _Memory()
        self._waiting: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._queued: set[str] = set()
        """Ids of the jobs in ``_waiting`` not deleted since (the backlog counts these)."""
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

    def _admit(self, admission: Admission, size: int) -> _Account:
        """The account, once the submission fits every limit; raises the refusal otherwise."""
        now = self._clock()
        account = self._memory.accounts.setdefault(admission.account, _Account())
        window = constants.RATE_WINDOW_SECONDS
        while account.submitted and account.submitted[0] <= now - window:
            account.submitted.popleft()
        for job_id, (expires, _) in list(account.retained.items()):
            if expires <= now:
                del account.retained[job_id]
        account.active = {job_id for job_id in account.active
                          if self._live(constants.JOB_KEY.format(job_id)) is not None}
        used = sum(bytes_ for _, bytes_ in account.retained.values())
        reason, retry_after, amount = "", 0, 0
        if len(account.submitted) >= admission.rate_per_minute:
            reason = "rate"
            retry_after = max(1, math.ceil(account.submitted[0] + window - now))
        elif self._backlog() >= admission.max_backlog:
            reason = "backlog"
        elif len(account.active) >= admission.max_jobs:
            reason, amount = "jobs", len(account.active)
        elif used + size > admission.max_bytes:
            oldest = min((expires for expires, _ in account.retained.values()), default=now)
            reason, amount, retry_after = "bytes", used, math.ceil(oldest - now)
        if reason:
            raise _refusal(reason, admission, retry_after=retry_after, amount=amount, size=size)
        return account

    def _backlog(self) -> int:
        return len(self._queued) + len(self._memory.pending)

    async def submit(self, job: Job, images: Sequence[bytes],
                     admission: Admission | None = None) -> Job:
        admission = admission or Admission.unlimited()
        self._purge_expired()
        size = sum(len(image) for image in images)
        account = self._admit(admission, size)
        job = self._stamp(job, images, admission)
        now = self._clock()
        expires = now + self.ttl_seconds
        self._memory.entries[constants.JOB_KEY.format(job.id)] = _Entry(job, expires)
        for index, image in enumerate(images):
            self._memory.entries[_image_key(job.id, index)] = _Entry(image, expires)
        account.submitted.append(now)
        account.retained[job.id] = (expires, size)
        account.active.add(job.id)
        self._sequence += 1
        self._waiting.put_nowait((f"{self._sequence}-0", job.id))
        self._queued.add(job.id)
        return job

    async def get(self, job_id: str) -> Job | None:
        job: Job | None = self._live(constants.JOB_KEY.format(job_id))
        return job

    def _owned(self, job_id: str, owner: str | None) -> Job | None:
        """The stored job, if ``owner`` (when given) may write it."""
        current: Job | None = self._live(constants.JOB_KEY.format(job_id))
        if current is None:
            return None
        if owner is not None and (current.status.finished or (current.worker or "") != owner):
            return None
        return current

    async def save(self, job: Job, *, owner: str | None = None) -> bool:
        if self._owned(job.id, owner) is None:
            return False
        self._memory.entries[constants.JOB_KEY.format(job.id)].value = job
        return True

    async def images(self, job_id: str, count: int) -> list[bytes] | None:
        found = [self._live(_image_key(job_id, i)) for i in range(count)]
        return None if any(f is None for f in found) else found

    async def finish(self, claim: Claim, job: Job, result: bytes | None, *, owner: str) -> bool:
        current = self._owned(job.id, owner)
        if current is None:
            return False
        entry = self._memory.entries[constants.JOB_KEY.format(job.id)]
        if result is not None:
            self._memory.entries[constants.RESULT_KEY.format(job.id)] = _Entry(
                result, entry.expires)
        entry.value = job
        self._memory.entries.pop(constants.PARTIAL_KEY.format(job.id), None)
        self._account(current).active.discard(job.id)
        self._memory.pending.pop(claim.message_id, None)
        return True

    def _account(self, job: Job) -> _Account:
        return self._memory.accounts.get(job.account or "", _Account())

    async def result(self, job_id: str) -> bytes | None:
        data: bytes | None = self._live(constants.RESULT_KEY.format(job_id))
        return data

    async def put_partial(self, job_id: str, data: bytes) -> bool:
        job_key = constants.JOB_KEY.format(job_id)
        if self._live(job_key) is None:
            return False
        self._memory.entries[constants.PARTIAL_KEY.format(job_id)] = _Entry(
            data, self._memory.entries[job_key].expires)
        return True

    async def partial(self, job_id: str) -> bytes | None:
        data: bytes | None = self._live(constants.PARTIAL_KEY.format(job_id))
        return data

    async def delete(self, job_id: str) -> bool:
        job: Job | None = self._live(constants.JOB_KEY.format(job_id))
        doomed = (constants.JOB_KEY.format(job_id), constants.RESULT_KEY.format(job_id),
                  constants.PARTIAL_KEY.format(job_id))
        images = constants.IMAGE_KEY.format(job_id) + ":"
        for key in [k for k in self._memory.entries if k in doomed or k.startswith(images)]:
            del self._memory.entries[key]
        if job is not None:
            account = self._account(job)
            account.retained.pop(job_id, None)
            account.active.discard(job_id)
        self._queued.discard(job_id)
        for message_id in [m for m, p in self._memory.pending.items() if p.job_id == job_id]:
            del self._memory.pending[message_id]
        return job is not None

    async def claim(self, consumer: str, block_ms: int) -> Claim | None:
        self._purge_expired()  # workers claim often: expired patient data goes promptly
        now = self._clock()
        for message_id, pending in self._memory.pending.items():
            if (now - pending.touched) * 1000 >= self.claim_idle_ms:
                pending.consumer, pending.touched = consumer, now
                return Claim(pending.job_id, message_id)
        deadline = time.monotonic() + block_ms / 1000
        while True:  # past the messages of jobs deleted while they waited
            try:
                message_id, job_id = await asyncio.wait_for(
                    self._waiting.get(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return None
            if job_id in self._queued:
                break
        self._queued.discard(job_id)
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


# ---------------------------------------------------------------- Redis


class _Pool(aioredis.BlockingConnectionPool):
    """redis-py's blocking pool, telling a wait that ran out (:class:`StoreBusy`) from an
    unreachable server: the one is overload, the other an outage."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except RedisConnectionError as exc:
            if isinstance(exc.__cause__, asyncio.TimeoutError | TimeoutError):
                raise StoreBusy(f"all {self.max_connections} connections to Redis stayed in "
                                f"use for {self.timeout:g} s") from exc
            raise


class RedisStreamQueue(JobQueue):
    """Jobs in a Redis Stream read by a consumer group; documents in keys with a TTL.

    ``claim`` first takes over messages idle for ``claim_idle_ms``
    (``XAUTOCLAIM``: their worker died), then reads new ones (``XREADGROUP``).
    Working workers ``touch`` their claim (``XCLAIM ... JUSTID``, only while
    ``XPENDING`` still names them) so it never looks idle. Admission,
    owner-checked saves, ``finish`` and ``delete`` are Lua scripts: each is one
    step for Redis. A Redis that comes back empty loses the consumer group
    too; ``claim`` creates it again, and jobs submitted before then are
    answered as lost (:meth:`lost`) rather than as never having existed.
    """

    name = "redis"

    def __init__(self, client: aioredis.Redis, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # redis-py's response types depend on decode_responses; this client returns bytes.
        self.client: Any = client
        self._group_ready = False

    @classmethod
    def from_url(cls, url: str, *, max_connections: int = constants.REDIS_MAX_CONNECTIONS,
                 **kwargs: Any) -> RedisStreamQueue:
        """A queue on a blocking pool of at most ``max_connections``: a burst of requests
        waits its turn for a connection instead of failing. Idle connections are checked
        and a command is retried once Redis is back (a restart leaves pooled ones dead)."""
        pool = _Pool.from_url(
            url, max_connections=max_connections, timeout=constants.REDIS_POOL_WAIT_SECONDS,
            decode_responses=False, health_check_interval=15, socket_keepalive=True,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError])
        return cls(aioredis.Redis(connection_pool=pool), **kwargs)

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

    async def _grouped(self, command: Callable[[], Any]) -> Any:
        """Run a consumer-group command, creating the group again if Redis lost it."""
        await self._ensure_group()
        try:
            return await command()
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            logger.warning("the consumer group is gone (Redis lost its data); creating it again")
            self._group_ready = False
            await self._ensure_group()
            return await command()

    async def submit(self, job: Job, images: Sequence[bytes],
                     admission: Admission | None = None) -> Job:
        admission = admission or Admission.unlimited()
        job = self._stamp(job, images, admission)
        size = sum(len(image) for image in images)
        account = admission.account
        keys = [constants.STREAM, constants.JOB_KEY.format(job.id),
                constants.RATE_KEY.format(account), constants.ACCOUNT_JOBS_KEY.format(account),
                constants.ACCOUNT_BYTES_KEY.format(account),
                constants.ACCOUNT_ACTIVE_KEY.format(account), constants.EPOCH_KEY,
                *(_image_key(job.id, i) for i in range(len(images)))]
        arguments = [job.model_dump_json(), self.ttl_seconds * 1000,
                     constants.RATE_WINDOW_SECONDS * 1000, admission.rate_per_minute,
                     admission.max_backlog, admission.max_jobs, admission.max_bytes, size,
                     self.memory_reserve_bytes, constants.GROUP, job.id,
                     constants.JOB_KEY.format(""), *images]
        reason, retry_after, amount = await self.client.eval(
            _ADMIT_AND_SUBMIT, len(keys), *keys, *arguments)
        if _text(reason) != "ok":
            raise _refusal(_text(reason), admission, retry_after=int(retry_after),
                           amount=int(amount), size=size)
        return job

    async def get(self, job_id: str) -> Job | None:
        raw = await self.client.get(constants.JOB_KEY.format(job_id))
        return None if raw is None else Job.model_validate_json(raw)

    async def lost(self, job_id: str) -> dt.datetime | None:
        created = job_created_at(job_id)
        if created is None:
            return None
        now_ms = int(time.time() * 1000)
        await self.client.set(constants.EPOCH_KEY, now_ms, nx=True)
        epoch = dt.datetime.fromtimestamp(int(await self.client.get(constants.EPOCH_KEY)) / 1000,
                                          dt.UTC)
        would_live = created > utcnow() - dt.timedelta(seconds=self.ttl_seconds)
        return epoch if created < epoch and would_live else None

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

    async def finish(self, claim: Claim, job: Job, result: bytes | None, *, owner: str) -> bool:
        keys = [constants.JOB_KEY.format(job.id), constants.RESULT_KEY.format(job.id),
                constants.PARTIAL_KEY.format(job.id), constants.STREAM,
                constants.ACCOUNT_ACTIVE_KEY.format(job.account or "")]
        finished = await self.client.eval(
            _FINISH_IF_OWNER, len(keys), *keys, job.model_dump_json(), owner,
            b"" if result is None else result, "0" if result is None else "1",
            constants.GROUP, claim.message_id, job.id)
        return bool(finished)

    async def result(self, job_id: str) -> bytes | None:
        data: bytes | None = await self.client.get(constants.RESULT_KEY.format(job_id))
        return data

    async def put_partial(self, job_id: str, data: bytes) -> bool:
        # One script, so a DELETE cannot slip between reading the TTL and writing.
        stored = await self.client.eval(_PUT_BESIDE_JOB, 2, constants.JOB_KEY.format(job_id),
                                        constants.PARTIAL_KEY.format(job_id), data)
        return bool(stored)

    async def partial(self, job_id: str) -> bytes | None:
        data: bytes | None = await self.client.get(constants.PARTIAL_KEY.format(job_id))
        return data

    async def delete(self, job_id: str) -> bool:
        job = await self.get(job_id)
        images = 1 if job is None else job.images
        account = "" if job is None else job.account or ""
        keys = [constants.JOB_KEY.format(job_id), constants.RESULT_KEY.format(job_id),
                constants.PARTIAL_KEY.format(job_id),
                constants.ACCOUNT_JOBS_KEY.format(account),
                constants.ACCOUNT_BYTES_KEY.format(account),
                constants.ACCOUNT_ACTIVE_KEY.format(account), constants.STREAM,
                *(_image_key(job_id, i) for i in range(max(images, 1)))]
        await self.client.eval(_DELETE, len(keys), *keys, job_id, constants.GROUP)
        return job is not None

    async def claim(self, consumer: str, block_ms: int) -> Claim | None:
        _, taken, *_ = await self._grouped(lambda: self.client.xautoclaim(
            constants.STREAM, constants.GROUP, consumer, min_idle_time=self.claim_idle_ms,
            start_id="0-0", count=1))
        if taken:
            message_id, fields = taken[0]
            logger.info("reclaimed message %s from an idle worker", _text(message_id))
            return Claim(_text(fields[b"job_id"]), _text(message_id))
        read = await self._grouped(lambda: self.client.xreadgroup(
            constants.GROUP, consumer, {constants.STREAM: ">"}, count=1, block=block_ms))
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
        found = await self._grouped(
            lambda: self.client.xinfo_consumers(constants.STREAM, constants.GROUP))
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

    async def claimable(self) -> bool:
        try:
            groups = await self.client.xinfo_groups(constants.STREAM)
        except ResponseError:  # no stream: Redis lost it, and no worker made it again
            return False
        except (RedisError, OSError):
            return False
        return any(_text(group["name"]) == constants.GROUP for group in groups)

    async def make_claimable(self) -> bool:
        self._group_ready = False  # what this process saw before may be gone
        try:
            await self._ensure_group()
        except (RedisError, OSError):
            return False
        return True

    async def dataset_config(self, dataset: str) -> DatasetConfig | None:
        raw = await self.client.get(constants.DATASET_KEY.format(dataset))
        return None if raw is None else DatasetConfig.from_json(_text(raw))

    async def save_dataset_config(self, config: DatasetConfig) -> None:
        await self.client.set(constants.DATASET_KEY.format(config.dataset), config.to_json())

    async def close(self) -> None:
        await self.client.aclose()


_ADMIT_AND_SUBMIT = """
-- KEYS: stream, job, rate, account jobs, account bytes, account active, epoch, images...
-- ARGV: document, ttl ms, window ms, rate, backlog, jobs, bytes, size, reserve, group,
--       job id, job key prefix, images...
local ttl, window, size = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[8])
-- Memory first, before any write: the upload already sits in this client's buffer.
local info = redis.call('INFO', 'memory')
local maxmemory = tonumber(string.match(info, 'maxmemory:(%d+)') or '0')
if maxmemory > 0 then
  local free = maxmemory - tonumber(string.match(info, 'used_memory:(%d+)'))
  if free < size + tonumber(ARGV[9]) then return {'memory', 0, free} end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[7], now, 'NX')
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) then
  local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  return {'rate', math.max(1, math.ceil((tonumber(oldest[2]) + window - now) / 1000)), 0}
end
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[5]) then
  return {'backlog', 0, 0}
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)) do
  redis.call('HINCRBY', KEYS[5], '_total', -tonumber(redis.call('HGET', KEYS[5], id) or '0'))
  redis.call('HDEL', KEYS[5], id)
  redis.call('SREM', KEYS[6], id)
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local active = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[6])) do
  if redis.call('EXISTS', ARGV[12] .. id) == 1 then
    active = active + 1
  else
    redis.call('SREM', KEYS[6], id)
  end
end
if active >= tonumber(ARGV[6]) then return {'jobs', 0, active} end
local used = tonumber(redis.call('HGET', KEYS[5], '_total') or '0')
if used + size > tonumber(ARGV[7]) then
  local oldest = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  local wait = 60
  if #oldest > 0 then wait = math.ceil((tonumber(oldest[2]) - now) / 1000) end
  return {'bytes', wait, used}
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
for i = 8, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 5], 'PX', ttl) end
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[10], '0', 'MKSTREAM')
redis.call('XADD', KEYS[1], '*', 'job_id', ARGV[11])
redis.call('ZADD', KEYS[3], now, ARGV[11])
redis.call('PEXPIRE', KEYS[3], window)
redis.call('ZADD', KEYS[4], now + ttl, ARGV[11])
redis.call('HSET', KEYS[5], ARGV[11], size)
redis.call('HINCRBY', KEYS[5], '_total', size)
redis.call('SADD', KEYS[6], ARGV[11])
for i = 4, 6 do redis.call('PEXPIRE', KEYS[i], ttl) end
return {'ok', 0, 0}
"""

_OWNED = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local current = cjson.decode(raw)
local worker = current['worker']
if worker == cjson.null or worker == nil then worker = '' end
if worker ~= ARGV[2] then return 0 end
if current['status'] == 'succeeded' or current['status'] == 'failed' then return 0 end
"""
"""The head of an owner-checked script: stop unless worker ARGV[2] holds unfinished KEYS[1]."""

_SAVE_IF_OWNER = _OWNED + """
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
return 1
"""

_FINISH_IF_OWNER = _OWNED + """
-- KEYS: job, result, partial, stream, account active
-- ARGV: document, owner, result, has result, group, message id, job id
if ARGV[4] == '1' then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', math.max(redis.call('PTTL', KEYS[1]), 1))
end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[5], ARGV[7])
redis.call('XACK', KEYS[4], ARGV[5], ARGV[6])
redis.call('XDEL', KEYS[4], ARGV[6])
return 1
"""

_DELETE = """
-- KEYS: job, result, partial, account jobs, account bytes, account active, stream, images...
-- ARGV: job id, group
local removed = 0
for i = 1, 3 do removed = removed + redis.call('DEL', KEYS[i]) end
for i = 8, #KEYS do redis.call('DEL', KEYS[i]) end
-- Its message leaves the stream (the backlog) now, not when a worker meets it: the
-- stream holds only unfinished jobs, at most the backlog limit of them.
for _, entry in ipairs(redis.call('XRANGE', KEYS[7], '-', '+')) do
  if entry[2][2] == ARGV[1] then
    redis.pcall('XACK', KEYS[7], ARGV[2], entry[1])
    redis.call('XDEL', KEYS[7], entry[1])
  end
end
if redis.call('ZREM', KEYS[4], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[5], '_total', -tonumber(redis.call('HGET', KEYS[5], ARGV[1]) or '0'))
  redis.call('HDEL', KEYS[5], ARGV[1])
end
redis.call('SREM', KEYS[6], ARGV[1])
return removed
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
