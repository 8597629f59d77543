"""A job as Server-Sent Events: progress, the heatmap so far, then the outcome.

The stream reads the store, never the worker: it works the same embedded and
with Redis, from any API process. It polls every ``EVENT_POLL_SECONDS`` and
sends only what changed:

* ``progress``: ``{"status", "progress"}``;
* ``partial``: the heatmap so far, ``{"shape", "heatmap"}`` with ``null`` in
  cells not computed yet (for approximate mode, the coarse stage row by row,
  then its interpolation, then the refined cells), at most ``PARTIAL_SIDE``
  cells a side and a few a second;
* ``succeeded`` or ``failed``: the job document, and the stream ends.

A client that goes away ends the generator at its next wait: nothing keeps
running for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
from fastapi.sse import ServerSentEvent

from krypton import render
from krypton.service import constants
from krypton.service.queue import JobQueue
from krypton.service.schemas import Job, JobStatus, JobView

__all__ = ["EVENT_POLL_SECONDS", "job_events"]

EVENT_POLL_SECONDS = 0.25


async def job_events(queue: JobQueue, job: Job, view: Callable[[Job], JobView]
                     ) -> AsyncIterator[ServerSentEvent]:
    """The events of ``job`` until it has finished (or is gone)."""
    sent_progress: tuple[str, float] | None = None
    sent_partial: bytes | None = None
    current: Job | None = job
    while current is not None:
        progress = (current.status.value, current.progress)
        if progress != sent_progress:
            sent_progress = progress
            yield ServerSentEvent(event="progress", data={
                "status": current.status.value, "progress": current.progress})
        if not current.status.finished:
            partial = await queue.partial(job.id)
            if partial is not None and partial != sent_partial:
                sent_partial = partial
                yield ServerSentEvent(event="partial", data=_partial_document(partial))
        if current.status.finished:
            outcome = "succeeded" if current.status is JobStatus.succeeded else "failed"
            yield ServerSentEvent(event=outcome, data=view(current).model_dump(mode="json"))
            return
        await asyncio.sleep(EVENT_POLL_SECONDS)
        current = await queue.get(job.id)
    yield ServerSentEvent(event="failed", data={
        "id": job.id, "status": "failed",
        "error": {"type": "urn:krypton:problem:job-not-found", "title": "No such job",
                  "status": 404, "detail": "the job was deleted or expired"}})


def _partial_document(data: bytes) -> dict[str, Any]:
    values = render.read_npy(data)
    rows = [[None if np.isnan(v) else round(float(v), 5) for v in row] for row in values]
    return {"shape": list(values.shape), "max_side": constants.PARTIAL_SIDE, "heatmap": rows}
