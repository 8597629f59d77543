"""Jobs and the queue they wait in: the interface both stores keep.

Every implementation keeps the same promises:

- a submission is admitted or refused in one step with the write: the
  caller's rate (a sliding minute), its unfinished jobs and retained bytes,
  the queue's length and the store's free memory are checked and the job
  stored with nothing in between, so concurrent submissions cannot overrun a
  limit (which is why the rate limiter lives here and not in a store of its
  own: a separate limiter could not be checked in the same step as the write);
- a job, its images, its result and its heatmap so far share one expiry
  (patient data), and ``delete`` removes them all at once;
- ``save`` and ``finish`` never bring back a deleted or expired job, and with
  an owner they write only while that worker holds the unfinished job:
  ``finish`` writes the result, the document and the acknowledgement in one
  step, so a worker that lost its job cannot overwrite the outcome of the
  worker that took it over;
- a claimed job is delivered to one worker; if that worker stops touching it
  for ``claim_idle_ms`` (it died), ``claim`` hands it to another;
- every write to a job wakes whoever waits on its ``changes``.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from krypton.service import constants
from krypton.service.problems import QueueFull, QuotaExceeded, RateLimited, StoreFull
from krypton.service.schemas import Job, utcnow
from krypton.service.store.changes import ChangeBoard, Changes

__all__ = ["Admission", "Claim", "JobQueue", "image_key", "refusal"]


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
    """Jobs and their queue, shared by the API and the workers.

    The API calls ``submit``, ``get``, ``lost``, ``delete`` and waits on
    ``changes``; workers call ``claim``, ``touch``, ``save``, ``finish`` and
    ``ack``.
    """

    name: str

    def __init__(self, *, ttl_seconds: int, claim_idle_ms: int = constants.CLAIM_IDLE_MS,
                 memory_reserve_bytes: int = constants.REDIS_MEMORY_RESERVE_BYTES) -> None:
        self.ttl_seconds = ttl_seconds
        self.claim_idle_ms = claim_idle_ms
        self.memory_reserve_bytes = memory_reserve_bytes
        self._board = ChangeBoard(constants.CHANGES_FALLBACK_SECONDS)
        """This process's waiters; each implementation wakes them as a job is written."""

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

    def changes(self, job_id: str) -> AbstractAsyncContextManager[Changes]:
        """Be told when ``job_id`` may have changed, from before the first read on.

        Enter it, then read the job, then ``await changes.next(timeout)`` before
        each further read: a write made between the read and the wait is not
        missed. Waiting costs no reads of the store.
        """
        return self._board.watch(job_id)

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def refusal(reason: str, admission: Admission, *, retry_after: int, amount: int,
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


def image_key(job_id: str, index: int) -> str:
    """Where a job's ``index``-th image is kept (both stores name it alike)."""
    return f"{constants.IMAGE_KEY.format(job_id)}:{index}"
