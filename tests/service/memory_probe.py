"""Peak resident memory of an API or a worker process handling large images (run as a script).

``python memory_probe.py api REGISTRY SMALL.png SPEC.json`` starts the API in
this process (embedded, no worker), warms it with a small job, then submits
the spec's ``uploads`` (at once, from threads, when ``concurrent``), finishes
the first job as a worker would, fetches the spec's ``fetch`` results of it,
and prints the peak (``VmHWM``) over the warm process after each step, in
bytes, as JSON.

``python memory_probe.py worker REGISTRY SMALL.png IMAGE`` runs a worker in
this process on the in-memory queue: a small job to load the model, then the
heatmap of ``IMAGE``; it prints the peak over the warm worker.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from krypton.core.plans import HeatmapPlan
from krypton.core.records import Prediction
from krypton.models.deployment import load_deployment
from krypton.render import heatmap_npy
from krypton.run_stats import RunStats
from krypton.service.app import create_app
from krypton.service.config import Settings
from krypton.service.schemas import Job, JobStatus, new_job_id
from krypton.service.store import Store
from krypton.service.store.memory import InMemoryQueue
from krypton.service.worker import Worker

FAST = {"patch_size": "16", "stride": "16"}


def peak() -> int:
    """The process's peak resident memory so far (``VmHWM``), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    raise LookupError("VmHWM")


def reset_peak() -> None:
    """Start ``VmHWM`` again from the current resident memory."""
    Path("/proc/self/clear_refs").write_text("5")


def probe_api(registry: str, small: bytes, spec: dict[str, Any]) -> dict[str, int]:
    app = create_app(Settings(registry=registry, embedded_workers=0))
    uploads = [Path(path).read_bytes() for path in spec["uploads"]]
    expected = spec.get("status", 202)
    with TestClient(app) as client:
        def submit(data: bytes, status: int = expected) -> str:
            response = client.post("/v1/heatmaps", files={"image": ("i", data)}, data=FAST)
            assert response.status_code == status, response.text
            job_id: str = response.json().get("id", "")
            return job_id

        submit(small, 202)
        reset_peak()
        idle = peak()
        ids: list[str] = []
        if spec.get("concurrent"):
            threads = [threading.Thread(target=lambda d=data: ids.append(submit(d)))
                       for data in uploads]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:
            ids = [submit(data) for data in uploads]
        peaks = {"submit": peak() - idle}
        if expected != 202:
            return peaks
        queue = app.state.store.jobs
        client.portal.call(_finish_first, queue, ids[0])
        for route in spec.get("fetch", []):
            url, params = (f"/v1/heatmaps/{ids[0]}/heatmap.png", {"overlay": "1", "size": "2048"}
                           ) if route == "overlay.png" else (f"/v1/heatmaps/{ids[0]}/{route}", {})
            response = client.get(url, params=params)
            assert response.status_code == 200, response.text
            peaks[route] = peak() - idle
    return peaks


async def _finish_first(queue: InMemoryQueue, job_id: str) -> None:
    """Store a result for the job, through the store's own interface, as a worker would."""
    job = await queue.get(job_id)
    assert job is not None
    while (claim := await queue.claim("probe", 100)) is not None and claim.job_id != job_id:
        pass
    assert claim is not None
    prediction = Prediction(predicted_class=0, predicted_label="a", predicted_probability=0.9,
                            target_class=0, target_label="a", target_probability=0.9)
    run = RunStats(mode="exact", device="cpu", positions=16, batches=1, batch_size=16,
                   seconds=0.1, input_shape=(64, 64), heatmap_shape=(4, 4))
    assert await queue.finish(claim, job.model_copy(update={
        "status": JobStatus.succeeded, "prediction": prediction, "run": run}),
        heatmap_npy(np.random.default_rng(0).random((4, 4))), owner="")


def probe_worker(registry: str, small: bytes, image: bytes) -> dict[str, int]:
    deployment = load_deployment(registry)
    model = deployment.default_model().name

    async def run() -> dict[str, int]:
        store = Store.memory(ttl_seconds=600)
        queue = store.jobs
        worker = Worker(store, deployment, name="probe")

        async def explain(data: bytes) -> None:
            job = await queue.submit(Job(id=new_job_id(), params=HeatmapPlan(
                model=model, patch_size=16, stride=16)), [data])
            await worker.run(burst=True, block_ms=50)
            done = await queue.get(job.id)
            assert done is not None and done.status is JobStatus.succeeded, done

        await explain(small)
        reset_peak()
        idle = peak()
        await explain(image)
        return {"heatmap": peak() - idle}

    return asyncio.run(run())


def main() -> None:
    kind, registry, small = sys.argv[1], sys.argv[2], Path(sys.argv[3]).read_bytes()
    if kind == "api":
        peaks = probe_api(registry, small, json.loads(Path(sys.argv[4]).read_text()))
    else:
        peaks = probe_worker(registry, small, Path(sys.argv[4]).read_bytes())
    sys.stdout.write(json.dumps(peaks) + "\n")


if __name__ == "__main__":
    main()
