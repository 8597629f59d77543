"""The Redis store: what several API processes and workers on other machines share.

Jobs wait in a Redis Stream read by a consumer group; documents, images and
results are keys with the job's TTL; heartbeats and tuned configs are keys
of their own. One client (one connection pool) serves all three parts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from krypton.models import DatasetConfig
from krypton.service import constants
from krypton.service.problems import StoreBusy
from krypton.service.schemas import Job, WorkerInfo, job_created_at, utcnow
from krypton.service.store.changes import Changes
from krypton.service.store.configs import ConfigStore
from krypton.service.store.jobs import Admission, Claim, JobQueue, image_key, refusal
from krypton.service.store.workers import WorkerRegistry

__all__ = ["RedisConfigs", "RedisStreamQueue", "RedisWorkers", "connect"]

logger = logging.getLogger(__name__)


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


def connect(url: str, *, max_connections: int = constants.REDIS_MAX_CONNECTIONS) -> Any:
    """A client on a blocking pool of at most ``max_connections``: a burst of requests
    waits its turn for a connection instead of failing. Idle connections are checked
    and a command is retried once Redis is back (a restart leaves pooled ones dead); a
    command Redis does not answer in time is not retried (it may have run), so a Redis
    that hangs costs a request one timeout."""
    pool = _Pool.from_url(
        url, max_connections=max_connections, timeout=constants.REDIS_POOL_WAIT_SECONDS,
        decode_responses=False, health_check_interval=15, socket_keepalive=True,
        socket_timeout=constants.REDIS_SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=constants.REDIS_SOCKET_TIMEOUT_SECONDS,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=3,
                    supported_errors=(RedisConnectionError,)),
        retry_on_error=[RedisConnectionError])
    return aioredis.Redis(connection_pool=pool)


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

    Every write to a job publishes its id on ``krypton:changes`` in the same
    script; one listener per process (started by the first waiter) wakes
    that process's waiters.
    """

    name = "redis"

    def __init__(self, client: aioredis.Redis, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # redis-py's response types depend on decode_responses; this client returns bytes.
        self.client: Any = client
        self._group_ready = False
        self._listener: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, *, max_connections: int = constants.REDIS_MAX_CONNECTIONS,
                 **kwargs: Any) -> RedisStreamQueue:
        """The job queue alone, on its own pool (:class:`~krypton.service.store.Store`
        makes the three parts on one)."""
        return cls(connect(url, max_connections=max_connections), **kwargs)

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
                *(image_key(job.id, i) for i in range(len(images)))]
        arguments = [job.model_dump_json(), self.ttl_seconds * 1000,
                     constants.RATE_WINDOW_SECONDS * 1000, admission.rate_per_minute,
                     admission.max_backlog, admission.max_jobs, admission.max_bytes, size,
                     self.memory_reserve_bytes, constants.GROUP, job.id,
                     constants.JOB_KEY.format(""), *images]
        reason, retry_after, amount = await self.client.eval(
            _ADMIT_AND_SUBMIT, len(keys), *keys, *arguments)
        if _text(reason) != "ok":
            raise refusal(_text(reason), admission, retry_after=int(retry_after),
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
        script = _SAVE if owner is None else _SAVE_IF_OWNER
        return bool(await self.client.eval(script, 1, key, job.model_dump_json(), owner or "",
                                           constants.CHANGES_CHANNEL, job.id))

    async def images(self, job_id: str, count: int) -> list[bytes] | None:
        if count == 0:
            return []
        found = await self.client.mget([image_key(job_id, i) for i in range(count)])
        return None if any(f is None for f in found) else list(found)

    async def finish(self, claim: Claim, job: Job, result: bytes | None, *, owner: str) -> bool:
        keys = [constants.JOB_KEY.format(job.id), constants.RESULT_KEY.format(job.id),
                constants.PARTIAL_KEY.format(job.id), constants.STREAM,
                constants.ACCOUNT_ACTIVE_KEY.format(job.account or "")]
        finished = await self.client.eval(
            _FINISH_IF_OWNER, len(keys), *keys, job.model_dump_json(), owner,
            b"" if result is None else result, "0" if result is None else "1",
            constants.GROUP, claim.message_id, job.id, constants.CHANGES_CHANNEL)
        return bool(finished)

    async def result(self, job_id: str) -> bytes | None:
        data: bytes | None = await self.client.get(constants.RESULT_KEY.format(job_id))
        return data

    async def put_partial(self, job_id: str, data: bytes) -> bool:
        # One script, so a DELETE cannot slip between reading the TTL and writing.
        stored = await self.client.eval(_PUT_BESIDE_JOB, 2, constants.JOB_KEY.format(job_id),
                                        constants.PARTIAL_KEY.format(job_id), data,
                                        constants.CHANGES_CHANNEL, job_id)
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
                *(image_key(job_id, i) for i in range(max(images, 1)))]
        await self.client.eval(_DELETE, len(keys), *keys, job_id, constants.GROUP,
                               constants.CHANGES_CHANNEL)
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

    def changes(self, job_id: str) -> AbstractAsyncContextManager[Changes]:
        if self._listener is None or self._listener.done():  # the first waiter starts it
            self._listener = asyncio.create_task(self._listen())
        return super().changes(job_id)

    async def _listen(self) -> None:
        """Follow the changes channel for this process's waiters, subscribing again when
        Redis drops; every waiter reads again after a gap (what it missed is lost)."""
        delay, lost = 0.1, False
        while True:
            try:
                async with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(constants.CHANGES_CHANNEL)
                    if lost:
                        logger.info("job changes: listening again")
                    delay, lost = 0.1, False
                    self._board.wake_all()
                    while True:  # a bounded read: a quiet channel is not a lost Redis
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True,
                            timeout=constants.CHANGES_FALLBACK_SECONDS)
                        if message is not None and isinstance(message["data"], bytes):
                            # Job ids are hex; anything else is no job of ours.
                            self._board.wake(message["data"].decode("ascii", "replace"))
            except (RedisError, OSError) as exc:
                if not lost:  # once an outage, not every retry
                    logger.warning("job changes: listener lost Redis (%s); waiters read "
                                   "every %g s until it is back", type(exc).__name__,
                                   constants.CHANGES_FALLBACK_SECONDS)
                lost = True
                self._board.wake_all()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.wait({self._listener}, timeout=constants.SHUTDOWN_WAIT_SECONDS)
        await self.client.aclose()


class RedisWorkers(WorkerRegistry):
    """Heartbeats as expiring keys, indexed by a sorted set of names by last beat.

    A worker is also a consumer of the job stream's group; ``retire`` and
    ``prune`` delete a gone worker's consumer there once it holds no job (a
    held one is reclaimed by a live worker first), so the group does not
    grow with every worker that ever ran.
    """

    def __init__(self, client: aioredis.Redis, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client: Any = client

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
        live = {worker.name for worker in await self.live()}
        consumers = await self._consumers()
        return await self._forget_consumers(set(consumers) - live)

    async def _consumers(self) -> dict[str, int]:
        """The consumer group's members and how many messages each holds."""
        try:
            found = await self.client.xinfo_consumers(constants.STREAM, constants.GROUP)
        except ResponseError:  # no stream or group (Redis lost them): no one to forget
            return {}
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

    async def live(self) -> list[WorkerInfo]:
        oldest = time.time() - self.heartbeat_ttl_seconds
        await self.client.zremrangebyscore(constants.WORKERS_KEY, "-inf", oldest)
        names = await self.client.zrangebyscore(constants.WORKERS_KEY, oldest, "+inf")
        if not names:
            return []
        found = await self.client.mget([constants.WORKER_KEY.format(_text(n)) for n in names])
        workers = [WorkerInfo.model_validate_json(raw) for raw in found if raw is not None]
        return sorted(workers, key=lambda w: w.name)


class RedisConfigs(ConfigStore):
    """Configs as keys without expiry."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client: Any = client

    async def get(self, dataset: str) -> DatasetConfig | None:
        key = constants.DATASET_KEY.format(dataset)
        raw = await self.client.get(key)
        return None if raw is None else DatasetConfig.from_json(
            raw.decode("utf-8", "replace"), source=f"dataset config {key} in Redis")

    async def save(self, config: DatasetConfig) -> None:
        await self.client.set(constants.DATASET_KEY.format(config.dataset), config.to_json())


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

_SAVE = """
-- KEYS: job; ARGV: document, owner (unused), changes channel, job id
if not redis.call('SET', KEYS[1], ARGV[1], 'XX', 'KEEPTTL') then return 0 end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

_SAVE_IF_OWNER = _OWNED + """
-- KEYS: job; ARGV: document, owner, changes channel, job id
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

_FINISH_IF_OWNER = _OWNED + """
-- KEYS: job, result, partial, stream, account active
-- ARGV: document, owner, result, has result, group, message id, job id, changes channel
if ARGV[4] == '1' then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', math.max(redis.call('PTTL', KEYS[1]), 1))
end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[5], ARGV[7])
redis.call('XACK', KEYS[4], ARGV[5], ARGV[6])
redis.call('XDEL', KEYS[4], ARGV[6])
redis.call('PUBLISH', ARGV[8], ARGV[7])
return 1
"""

_DELETE = """
-- KEYS: job, result, partial, account jobs, account bytes, account active, stream, images...
-- ARGV: job id, group, changes channel
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
redis.call('PUBLISH', ARGV[3], ARGV[1])
return removed
"""

_TOUCH_IF_OWNER = """
local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #entry == 0 or entry[1][2] ~= ARGV[3] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"""

_PUT_BESIDE_JOB = """
-- KEYS: job, partial; ARGV: heatmap so far, changes channel, job id
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
