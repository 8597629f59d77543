"""The embedded store: the service's state in the API's own process, for one machine.

Nothing here survives the process but tuned configs, which
:class:`~krypton.service.store.configs.FileConfigs` keeps as files.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from krypton.service import constants
from krypton.service.schemas import Job, WorkerInfo
from krypton.service.store.jobs import Admission, Claim, JobQueue, image_key, refusal
from krypton.service.store.workers import WorkerRegistry

__all__ = ["InMemoryQueue", "InMemoryWorkers"]


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
    accounts: dict[str, _Account] = field(default_factory=dict)


class InMemoryQueue(JobQueue):
    """The embedded default: dictionaries with expiry and an ``asyncio.Queue``.

    Lives and dies with the API process, so it needs none of Redis's recovery;
    it still honours admission, expiry, deletion and claims so behaviour
    matches. Each method runs without awaiting between its checks and its
    writes, which on one event loop makes it one step. Jobs, images and
    results are lost when the process ends.

    Args:
        clock: monotonic seconds, for expiry, rates and idle claims (tests inject one).
        **kwargs: :class:`JobQueue`'s.
    """

    name = "memory"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._memory = _Memory()
        self._waiting: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._queued: set[str] = set()
        """Ids of the jobs in ``_waiting`` not deleted since (the backlog counts these)."""
        self._sequence = 0
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
            raise refusal(reason, admission, retry_after=retry_after, amount=amount, size=size)
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
            self._memory.entries[image_key(job.id, index)] = _Entry(image, expires)
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
        self._board.wake(job.id)
        return True

    async def images(self, job_id: str, count: int) -> list[bytes] | None:
        found = [self._live(image_key(job_id, i)) for i in range(count)]
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
        self._board.wake(job.id)
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
        self._board.wake(job_id)
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
        self._board.wake(job_id)
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

    async def ping(self) -> bool:
        return True

class InMemoryWorkers(WorkerRegistry):
    """Heartbeats in a dictionary, for workers in the API's process."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._beats: dict[str, tuple[WorkerInfo, float]] = {}
        self._clock = clock

    async def beat(self, info: WorkerInfo) -> None:
        self._beats[info.name] = (info, self._clock() + self.heartbeat_ttl_seconds)

    async def retire(self, worker: str) -> None:
        self._beats.pop(worker, None)

    async def live(self) -> list[WorkerInfo]:
        now = self._clock()
        for name in [n for n, (_, expires) in self._beats.items() if expires <= now]:
            del self._beats[name]
        return sorted((info for info, _ in self._beats.values()), key=lambda w: w.name)
