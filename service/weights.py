"""Which weights a deployed model is served with, as the API can know it without loading them.

A tuned dataset config is pinned to the weights it was tuned on; run on other
weights its knobs hold no promised quality. Seeded random weights are named
by their seed and head size, so the API knows them outright; a checkpoint's
fingerprint is its SHA-256, which only a process that reads the file knows:
workers report it for each model they have loaded with their heartbeat. The
API refuses a stale config when a request is made, and the worker checks
again before it runs (a job accepted before any worker had reported).
"""

from __future__ import annotations

from krypton.models.deployment import DeployedModel
from krypton.service.store import WorkerRegistry

__all__ = ["served_weights"]


async def served_weights(workers: WorkerRegistry, deployed: DeployedModel) -> str | None:
    """The weights id ``deployed`` is served with; ``None`` while no live worker has said."""
    if deployed.random_weights:
        return deployed.weights_id()
    for worker in await workers.live():
        if deployed.name in worker.weights:
            return worker.weights[deployed.name]
    return None
