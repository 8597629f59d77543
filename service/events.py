"""A job as Server-Sent Events: progress, the heatmap so far, then the outcome.

The stream reads the store, never the worker: it works the same embedded and
with Redis, from any API process. One :class:`Watch` per job per process
reads the store when the store says the job changed (or at its fallback
interval, a second) and shares what it read with every stream of that job
(:class:`EventHub`), so a hundred viewers of one job cost one reader, not a
hundred. Each stream sends only what changed:

* ``progress``: ``{"status", "progress"}``;
* ``partial``: the heatmap so far, ``{"shape", "heatmap"}`` with ``null`` in
  cells not computed yet (for approximate mode, the coarse stage row by row,
  then its interpolation, then the refined cells), at most ``PARTIAL_SIDE``
  cells a side and a few a second;
* then exactly one terminal event, and the stream ends: ``succeeded`` or
  ``failed`` with the job document (``failed`` with a problem when the job
  was deleted or expired), or ``error`` with a problem document when the
  stream cannot go on: the store stopped answering (503, with a ``retry``
  hint in milliseconds for the client's reconnection), or the caller's key
  was revoked (401).

A client that goes away ends its stream at the next event; the reader stops
once the last stream of its job is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi.sse import ServerSentEvent

from krypton import render
from krypton.service import constants
from krypton.service.problems import JobLost, ServiceError, problem, problem_for
from krypton.service.schemas import Job, JobStatus, JobView
from krypton.service.store import JobQueue

__all__ = ["EventHub", "Snapshot", "Watch", "job_events"]

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Snapshot:
    """What one read of the store found: the job (``None``: gone), its heatmap so far as
    an event document, or the problem that stopped the reading."""

    version: int
    job: Job | None = None
    partial: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    gone: dict[str, Any] | None = None
    """Why the job is gone: deleted or expired, or lost with the store's data."""


class Watch:
    """The store's view of one job, read by one task and shared by its streams."""

    def __init__(self, queue: JobQueue, job: Job) -> None:
        self._queue = queue
        self._latest = Snapshot(version=0, job=job)
        self._changed = asyncio.Condition()
        self._partial_raw: bytes | None = None
        self.streams = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=constants.SHUTDOWN_WAIT_SECONDS)

    async def after(self, version: int) -> Snapshot:
        """The first snapshot newer than ``version`` (waits for the next read)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._latest.version > version)
            return self._latest

    async def _publish(self, **fields: Any) -> None:
        async with self._changed:
            self._latest = Snapshot(version=self._latest.version + 1, **fields)
            self._changed.notify_all()

    async def _read(self) -> None:
        job = self._latest.job
        assert job is not None
        await self._publish(job=job)
        async with self._queue.changes(job.id) as changes:
            while True:  # read once the watch began, then after each change
                try:
                    current = await self._queue.get(job.id)
                    partial = gone = None
                    if current is not None and not current.status.finished:
                        partial = await self._partial(job.id)
                    if current is None:
                        gone = await self._why_gone(job.id)
                except Exception as exc:  # the streams end with the problem; none hangs
                    logger.warning("job %s: events stopped: %s", job.id, type(exc).__name__)
                    await self._publish(job=None, error=problem_for(exc))
                    return
                await self._publish(job=current, partial=partial, gone=gone)
                if current is None or current.status.finished:
                    return
                await changes.next(constants.CHANGES_FALLBACK_SECONDS)

    async def _why_gone(self, job_id: str) -> dict[str, Any]:
        since = await self._queue.lost(job_id)
        if since is not None:
            return problem_for(JobLost.of(job_id, since))
        return problem(404, "job-not-found", "No such job", "the job was deleted or expired",
                       job_id=job_id)

    async def _partial(self, job_id: str) -> dict[str, Any] | None:
        """The heatmap so far as an event document, decoded once for every stream."""
        raw = await self._queue.partial(job_id)
        if raw is None:
            return None
        if raw != self._partial_raw:
            self._partial_raw, self._partial_document = raw, _partial_document(raw)
        return self._partial_document


class EventHub:
    """Each job's :class:`Watch` in this process, while a stream follows it."""

    def __init__(self, queue: JobQueue) -> None:
        self._queue = queue
        self._watches: dict[str, Watch] = {}

    @contextlib.asynccontextmanager
    async def watch(self, job: Job) -> AsyncIterator[Watch]:
        watch = self._watches.get(job.id)
        if watch is None:
            watch = self._watches[job.id] = Watch(self._queue, job)
            watch.start()
        watch.streams += 1
        try:
            yield watch
        finally:
            watch.streams -= 1
            if watch.streams == 0 and self._watches.get(job.id) is watch:
                del self._watches[job.id]
                await watch.stop()

    @property
    def readers(self) -> int:
        """Jobs being read for streams now (one reader each, however many streams)."""
        return len(self._watches)


async def job_events(hub: EventHub, job: Job, view: Callable[[Job], JobView], *,
                     authorized: Callable[[], bool] = lambda: True
                     ) -> AsyncIterator[ServerSentEvent]:
    """The events of ``job`` until one terminal event.

    ``authorized`` is asked before each event: a key revoked mid-stream ends
    the stream with a 401 problem.
    """
    sent_progress: tuple[str, float] | None = None
    sent_partial: dict[str, Any] | None = None
    async with hub.watch(job) as watch:
        version = 0
        while True:
            snapshot = await watch.after(version)
            version = snapshot.version
            try:
                still_valid = authorized()
            except ServiceError as exc:  # the keys file broke or went away mid-stream
                yield ServerSentEvent(event="error", data=problem_for(exc) | {"job_id": job.id},
                                      retry=constants.RETRY_AFTER_SECONDS * 1000)
                return
            if not still_valid:
                yield ServerSentEvent(event="error", data=problem(
                    401, "unauthorized", "API key required",
                    "the API key of this stream is no longer valid", job_id=job.id))
                return
            if snapshot.error is not None:
                yield ServerSentEvent(event="error", data=snapshot.error | {"job_id": job.id},
                                      retry=constants.RETRY_AFTER_SECONDS * 1000)
                return
            current = snapshot.job
            if current is None:
                yield ServerSentEvent(event="failed", data={
                    "id": job.id, "status": "failed", "error": snapshot.gone})
                return
            progress = (current.status.value, current.progress)
            if progress != sent_progress:
                sent_progress = progress
                yield ServerSentEvent(event="progress", data={
                    "status": current.status.value, "progress": current.progress})
            if snapshot.partial is not None and snapshot.partial is not sent_partial:
                sent_partial = snapshot.partial
                yield ServerSentEvent(event="partial", data=snapshot.partial)
            if current.status.finished:
                outcome = "succeeded" if current.status is JobStatus.succeeded else "failed"
                yield ServerSentEvent(event=outcome, data=view(current).model_dump(mode="json"))
                return


def _partial_document(data: bytes) -> dict[str, Any]:
    values = render.read_npy(data)
    rows = [[None if np.isnan(v) else round(float(v), 5) for v in row] for row in values]
    return {"shape": list(values.shape), "max_side": constants.PARTIAL_SIDE, "heatmap": rows}
