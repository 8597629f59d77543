"""Redis mode end to end: the API enqueues on a Redis Stream, separate workers compute.

Workers run either in a thread of this process (a real :class:`Worker` on its
own event loop) or as ``krypton worker`` subprocesses, which is what a crash
test needs: SIGKILL leaves no chance to clean up.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from fastapi.testclient import TestClient

from krypton.core.plans import HeatmapPlan
from krypton.models import DatasetConfig, DatasetStore
from krypton.models.deployment import Deployment
from krypton.service import constants
from krypton.service.schemas import Job, new_job_id
from krypton.service.store import Store
from krypton.service.store.redis import RedisStreamQueue
from tests.service import helpers
from tests.service.conftest import ClientFactory, start_redis, stop_redis
from tests.service.helpers import FAST, SLOW, ThreadedWorker

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]

TTL_SECONDS = 600


@pytest.fixture
def client(make_client: ClientFactory, redis_url: str) -> TestClient:
    """The API in Redis mode: it enqueues and serves, and runs no worker itself."""
    return make_client(redis_url=redis_url, result_ttl_seconds=TTL_SECONDS)


def _keys(redis_client: redis.Redis, job_id: str) -> dict[str, str]:
    return {"job": constants.JOB_KEY.format(job_id),
            "image": f"{constants.IMAGE_KEY.format(job_id)}:0",
            "result": constants.RESULT_KEY.format(job_id)}


def _pending(redis_client: redis.Redis) -> int:
    summary: dict[str, Any] = redis_client.xpending(constants.STREAM, constants.GROUP)
    return int(summary["pending"])


# ---------------------------------------------------------------- life cycle


def test_redis_job_succeeds_through_a_separate_worker(client: TestClient, redis_url: str,
                                                      deployment: Deployment,
                                                      retina_png: bytes) -> None:
    with ThreadedWorker(redis_url, deployment, name="thread-1"):
        job = helpers.finished(client, retina_png, **FAST)
    assert job["status"] == "succeeded", job["error"]
    assert job["run"]["heatmap_shape"] == [4, 4]


def test_redis_job_results_are_served_by_the_api(client: TestClient, redis_url: str,
                                                 deployment: Deployment,
                                                 retina_png: bytes) -> None:
    with ThreadedWorker(redis_url, deployment, name="thread-1"):
        job = helpers.finished(client, retina_png, **FAST)
    for result, media_type in (("heatmap.png", "image/png"),
                               ("heatmap.json", "application/json"),
                               ("heatmap.npy", "application/octet-stream")):
        response = client.get(f"/v1/heatmaps/{job['id']}/{result}")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == media_type


def test_redis_job_records_its_worker_and_one_attempt(client: TestClient, redis_url: str,
                                                      redis_client: redis.Redis,
                                                      deployment: Deployment,
                                                      retina_png: bytes) -> None:
    with ThreadedWorker(redis_url, deployment, name="thread-1"):
        job = helpers.finished(client, retina_png, **FAST)
    stored = helpers.job_document(redis_client, job["id"])
    assert (stored["worker"], stored["attempts"]) == ("thread-1", 1)
    assert _pending(redis_client) == 0


def test_redis_job_waits_queued_until_a_worker_comes(client: TestClient, redis_url: str,
                                                     deployment: Deployment,
                                                     retina_png: bytes) -> None:
    response = helpers.submit(client, retina_png, prefer="wait=1", **FAST)
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    with ThreadedWorker(redis_url, deployment, name="late"):
        job = helpers.wait_for_job(client, response.headers["Location"])
    assert job["status"] == "succeeded", job["error"]


def test_redis_two_workers_run_every_job_exactly_once(client: TestClient, redis_url: str,
                                                      redis_client: redis.Redis,
                                                      deployment: Deployment,
                                                      retina_png: bytes) -> None:
    count = 6
    with ThreadedWorker(redis_url, deployment, name="left") as left, \
            ThreadedWorker(redis_url, deployment, name="right") as right:
        urls = [helpers.submit(client, retina_png, **FAST).headers["Location"]
                for _ in range(count)]
        jobs = [helpers.wait_for_job(client, url) for url in urls]
    # Read once both stopped: a worker counts a job after saving and acknowledging it.
    done = left.jobs_done + right.jobs_done
    assert [job["status"] for job in jobs] == ["succeeded"] * count
    stored = [helpers.job_document(redis_client, job["id"]) for job in jobs]
    assert [(s["attempts"], s["worker"] in ("left", "right")) for s in stored] == [
        (1, True)] * count
    assert done == count
    assert _pending(redis_client) == 0


# ---------------------------------------------------------------- crashes


def _spawn_worker(registry: Path, redis_url: str, log: Path, **env: str
                  ) -> subprocess.Popen[bytes]:
    environment = {**os.environ, "KRYPTON_REDIS_URL": redis_url,
                   "KRYPTON_REGISTRY": str(registry), "KRYPTON_LOG_LEVEL": "INFO", **env}
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-c", "from krypton.cli import app; app()", "worker"],
            env=environment, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """``krypton worker`` processes this test started; killed if still running at the end."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(30)


def _explainer(logs: dict[str, Path]) -> Callable[[str], str]:
    """A failure message followed by the tail of each worker's log."""

    def explain(what: str) -> str:
        return what + "".join(f"\n--- {name} log:\n{path.read_text(errors='replace')[-3000:]}"
                              for name, path in logs.items() if path.exists())

    return explain


def _wait_until_computing(client: TestClient, url: str, explain: Callable[[str], str]
                          ) -> dict[str, Any]:
    """The job once its worker has finished a batch of it, not before it succeeds."""

    def computing() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(url).json()
        assert job["status"] != "succeeded", explain("the job finished too soon")
        return job if job["status"] == "running" and job["progress"] > 0 else None

    job: dict[str, Any] = helpers.wait_until(computing, timeout=120,
                                             what=explain("the job to be computing"))
    return job


def test_redis_job_of_a_killed_worker_is_finished_by_another(
    client: TestClient, redis_url: str, redis_client: redis.Redis, registry: Path,
    retina_png: bytes, tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    logs = {name: tmp_path / f"{name}.log" for name in ("doomed", "rescuer")}
    explain = _explainer(logs)
    doomed = _spawn_worker(registry, redis_url, logs["doomed"])
    spawned.append(doomed)
    url = helpers.submit(client, retina_png, **SLOW).headers["Location"]
    _wait_until_computing(client, url, explain)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(30)
    assert client.get(url).json()["status"] == "running"

    rescuer = _spawn_worker(registry, redis_url, logs["rescuer"], KRYPTON_CLAIM_IDLE_MS="1000")
    spawned.append(rescuer)
    job = helpers.wait_for_job(client, url, timeout=180)
    assert job["status"] == "succeeded", explain(str(job["error"]))
    stored = helpers.job_document(redis_client, job["id"])
    assert stored["attempts"] == 2
    assert f"-{rescuer.pid}-" in stored["worker"]
    helpers.wait_until(lambda: _pending(redis_client) == 0, timeout=30,
                       what="the rescuer to acknowledge the job")


def test_redis_job_of_a_worker_scaled_down_mid_job_is_finished_exactly_once_by_another(
    client: TestClient, redis_url: str, redis_client: redis.Redis, registry: Path,
    retina_png: bytes, tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    """What an autoscaler's scale-down does: SIGTERM to a worker in the middle of a job."""
    logs = {name: tmp_path / f"{name}.log" for name in ("stopping", "rescuer")}
    explain = _explainer(logs)
    stopping = _spawn_worker(registry, redis_url, logs["stopping"])
    spawned.append(stopping)
    url = helpers.submit(client, retina_png, **SLOW).headers["Location"]
    job_id = _wait_until_computing(client, url, explain)["id"]
    stopping.send_signal(signal.SIGTERM)
    # Well within the worker's terminationGracePeriodSeconds in deploy/kubernetes (60 s).
    assert stopping.wait(30) == 0, explain("the worker did not exit cleanly")
    handed_back = client.get(url).json()
    assert (handed_back["status"], handed_back["progress"]) == ("queued", 0.0)
    assert _pending(redis_client) == 1, "the claim stays pending for another worker"

    rescuer = _spawn_worker(registry, redis_url, logs["rescuer"], KRYPTON_CLAIM_IDLE_MS="1000")
    spawned.append(rescuer)
    job = helpers.wait_for_job(client, url, timeout=180)
    assert job["status"] == "succeeded", explain(str(job["error"]))
    stored = helpers.job_document(redis_client, job["id"])
    assert (stored["attempts"], f"-{rescuer.pid}-" in stored["worker"]) == (1, True)
    helpers.wait_until(lambda: _pending(redis_client) == 0, timeout=30,
                       what="the rescuer to acknowledge the job")
    assert redis_client.xlen(constants.STREAM) == 0, "the job's entry is gone, not left twice"
    finished = [line for name in logs for line in logs[name].read_text().splitlines()
                if job_id in line and " succeeded in " in line]
    assert len(finished) == 1, explain(f"finished {len(finished)} times")
    assert "job handed back" in logs["stopping"].read_text()


# ---------------------------------------------------------------- expiry and deletion


def test_redis_job_keys_expire_within_the_result_ttl(client: TestClient, redis_url: str,
                                                     redis_client: redis.Redis,
                                                     deployment: Deployment,
                                                     retina_png: bytes) -> None:
    with ThreadedWorker(redis_url, deployment, name="thread-1"):
        job = helpers.finished(client, retina_png, **FAST)
    ttls = {what: redis_client.ttl(key) for what, key in _keys(redis_client, job["id"]).items()}
    assert all(0 < ttl <= TTL_SECONDS for ttl in ttls.values()), ttls


def test_redis_delete_removes_job_image_and_result_keys(client: TestClient, redis_url: str,
                                                        redis_client: redis.Redis,
                                                        deployment: Deployment,
                                                        retina_png: bytes) -> None:
    with ThreadedWorker(redis_url, deployment, name="thread-1"):
        job = helpers.finished(client, retina_png, **FAST)
    keys = _keys(redis_client, job["id"])
    assert redis_client.exists(*keys.values()) == 3
    assert client.delete(f"/v1/heatmaps/{job['id']}").status_code == 204
    assert redis_client.exists(*keys.values()) == 0


def test_redis_deleted_job_answers_404(client: TestClient, redis_url: str,
                                       deployment: Deployment, retina_png: bytes) -> None:
    with ThreadedWorker(redis_url, deployment, name="thread-1"):
        job = helpers.finished(client, retina_png, **FAST)
    client.delete(f"/v1/heatmaps/{job['id']}")
    helpers.assert_problem(client.get(f"/v1/heatmaps/{job['id']}"), 404)


def test_redis_job_deleted_while_running_is_abandoned_without_recreating_keys(
    client: TestClient, redis_url: str, redis_client: redis.Redis, deployment: Deployment,
    retina_png: bytes
) -> None:
    with ThreadedWorker(redis_url, deployment, name="thread-1") as worker:
        url = helpers.submit(client, retina_png, **SLOW).headers["Location"]
        job_id = url.rsplit("/", 1)[1]

        def computing() -> bool:
            job = client.get(url).json()
            assert job["status"] != "succeeded", "the job finished before it could be deleted"
            return bool(job["status"] == "running" and job["progress"] > 0)

        helpers.wait_until(computing, what="the job to be computing")
        assert client.delete(url).status_code == 204
        deleted = time.monotonic()
        helpers.wait_until(lambda: worker.current is None, what="the worker to drop the job")
        idle_after = time.monotonic() - deleted
        jobs_done = worker.jobs_done
    assert redis_client.exists(*_keys(redis_client, job_id).values()) == 0
    assert jobs_done == 0
    assert _pending(redis_client) == 0
    # The job runs for seconds; the deletion stops it at the next progress write.
    assert idle_after < constants.PROGRESS_INTERVAL_SECONDS + 2.0


def test_redis_predict_leaves_no_job_or_image_behind(client: TestClient, redis_url: str,
                                                     redis_client: redis.Redis,
                                                     deployment: Deployment,
                                                     retina_png: bytes) -> None:
    with ThreadedWorker(redis_url, deployment, name="thread-1"):
        response = client.post("/v1/predict",
                               files={"image": ("retina.png", retina_png, "image/png")})
    assert response.status_code == 200, response.text
    assert redis_client.keys(f"{constants.KEY_PREFIX}:job:*") == []
    assert redis_client.keys(f"{constants.KEY_PREFIX}:image:*") == []


# ---------------------------------------------------------------- readiness


def test_redis_readyz_without_workers_answers_503(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "not ready", "queue": "redis", "queue_ok": True,
                               "claimable": True, "live_workers": 0, "workers": []}


def _groups(redis_client: redis.Redis) -> list[str]:
    try:
        return [group["name"].decode() for group in redis_client.xinfo_groups(constants.STREAM)]
    except redis.ResponseError:  # no stream
        return []


def test_the_api_makes_the_consumer_group_when_it_starts(
        make_client: ClientFactory, redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.flushall()
    make_client(redis_url=redis_url)
    # Before any worker started: an autoscaler reads the group's lag to start the first.
    assert _groups(redis_client) == [constants.GROUP]


def test_readyz_for_the_api_is_ready_while_no_worker_lives(client: TestClient) -> None:
    response = client.get("/readyz", params={"scope": "api"})
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["live_workers"]) == ("ready", 0)


def test_readyz_for_the_api_makes_the_group_again_after_redis_lost_it(
        client: TestClient, redis_client: redis.Redis) -> None:
    redis_client.flushall()
    assert client.get("/readyz").json()["claimable"] is False
    response = client.get("/readyz", params={"scope": "api"})
    assert response.status_code == 200, response.text
    assert _groups(redis_client) == [constants.GROUP]


def test_readyz_for_the_api_with_unreachable_redis_answers_503(make_client: ClientFactory,
                                                              unused_port: int) -> None:
    client = make_client(redis_url=f"redis://127.0.0.1:{unused_port}/0")
    response = client.get("/readyz", params={"scope": "api"})
    assert response.status_code == 503
    assert response.json()["queue_ok"] is False


def test_readyz_refuses_an_unknown_scope(client: TestClient) -> None:
    response = client.get("/readyz", params={"scope": "everything"})
    assert response.status_code == 422
    assert "scope" in response.json()["detail"]


def test_redis_readyz_lists_a_live_worker(client: TestClient, redis_url: str,
                                          deployment: Deployment) -> None:
    def ready() -> dict[str, Any] | None:
        response = client.get("/readyz")
        return response.json() if response.status_code == 200 else None

    with ThreadedWorker(redis_url, deployment, name="thread-1"):
        report = helpers.wait_until(ready, timeout=10, what="/readyz to answer 200")
    assert (report["status"], report["queue_ok"]) == ("ready", True)
    assert [worker["name"] for worker in report["workers"]] == ["thread-1"]


def test_redis_readyz_answers_503_once_the_worker_stopped(client: TestClient, redis_url: str,
                                                          deployment: Deployment) -> None:
    with ThreadedWorker(redis_url, deployment, name="thread-1"):
        helpers.wait_until(lambda: client.get("/readyz").status_code == 200, timeout=10,
                           what="/readyz to answer 200")
    assert client.get("/readyz").status_code == 503


def test_redis_readyz_with_unreachable_redis_answers_503(make_client: ClientFactory,
                                                         unused_port: int) -> None:
    client = make_client(redis_url=f"redis://127.0.0.1:{unused_port}/0")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["queue_ok"] is False


def test_redis_submit_with_unreachable_redis_answers_503(make_client: ClientFactory,
                                                         unused_port: int,
                                                         retina_png: bytes) -> None:
    client = make_client(redis_url=f"redis://127.0.0.1:{unused_port}/0",
                         raise_server_exceptions=False)
    problem = helpers.assert_problem(helpers.submit(client, retina_png, **FAST), 503)
    assert problem["type"] == "urn:krypton:problem:queue-unavailable"


# ---------------------------------------------------------------- tuned configs


def test_redis_api_imports_the_config_files_redis_lacks_on_start(
        client: TestClient, redis_client: redis.Redis) -> None:
    tuned = client.get(f"/v1/datasets/{helpers.TUNED_DATASET}").json()["tuned"]
    assert tuned is not None and tuned["tau"] == helpers.TUNED_TAU
    assert redis_client.exists(constants.DATASET_KEY.format(helpers.TUNED_DATASET))


def test_redis_api_keeps_a_config_redis_already_has_over_the_file(
        make_client: ClientFactory, redis_url: str, redis_client: redis.Redis,
        deployment: Deployment) -> None:
    newer = DatasetStore(deployment.datasets_dir).load(helpers.TUNED_DATASET)
    newer = DatasetConfig(**(newer.as_dict() | {"tau": 0.55}))
    redis_client.set(constants.DATASET_KEY.format(helpers.TUNED_DATASET), newer.to_json())
    client = make_client(redis_url=redis_url)
    assert client.get(f"/v1/datasets/{helpers.TUNED_DATASET}").json()["tuned"]["tau"] == 0.55


def test_redis_that_lost_its_data_serves_the_config_files_again_without_a_restart(
        client: TestClient, redis_url: str, redis_client: redis.Redis, deployment: Deployment,
        retina_png: bytes) -> None:
    redis_client.flushall()
    tuned = client.get(f"/v1/datasets/{helpers.TUNED_DATASET}").json()["tuned"]
    assert tuned is not None and tuned["tau"] == helpers.TUNED_TAU
    with ThreadedWorker(redis_url, deployment, name="w1"):
        job = helpers.finished(client, retina_png, dataset=helpers.TUNED_DATASET,
                               mode="approximate")
    assert job["status"] == "succeeded", job["error"]
    assert job["run"]["approximation"]["tau"] == helpers.TUNED_TAU


def test_redis_approximate_job_runs_the_knobs_redis_holds(
        client: TestClient, redis_url: str, deployment: Deployment, retina_png: bytes) -> None:
    with ThreadedWorker(redis_url, deployment, name="w1"):
        job = helpers.finished(client, retina_png, dataset=helpers.TUNED_DATASET,
                               mode="approximate")
    assert job["status"] == "succeeded", job["error"]
    assert job["run"]["approximation"]["tau"] == helpers.TUNED_TAU


# ---------------------------------------------------------------- consumers and connections


def test_redis_prune_forgets_a_dead_worker_holding_no_job(redis_url: str,
                                                         redis_client: redis.Redis) -> None:
    async def scenario() -> tuple[list[str], set[str]]:
        store = Store.redis(redis_url, ttl_seconds=60)
        queue = store.jobs
        try:
            await queue.submit(Job(id=new_job_id(), params=HeatmapPlan(
                model="m", patch_size=16, stride=8)), [b"image"])
            claim = await queue.claim("ghost", 10)  # a worker finishes a job, then dies
            assert claim is not None
            await queue.ack(claim)
            forgotten = await store.workers.prune()
            names = {c["name"].decode() for c in redis_client.xinfo_consumers(
                constants.STREAM, constants.GROUP)}
            return forgotten, names
        finally:
            await queue.close()

    forgotten, remaining = asyncio.run(scenario())
    assert forgotten == ["ghost"] and "ghost" not in remaining


def test_redis_prune_keeps_a_dead_worker_until_its_job_is_reclaimed(
        redis_url: str, redis_client: redis.Redis) -> None:
    async def scenario() -> list[str]:
        store = Store.redis(redis_url, ttl_seconds=60)
        queue = store.jobs
        try:
            await queue.submit(Job(id=new_job_id(), params=HeatmapPlan(
                model="m", patch_size=16, stride=8)), [b"image"])
            assert await queue.claim("holder", 10) is not None
            return await store.workers.prune()
        finally:
            await queue.close()

    assert asyncio.run(scenario()) == []


def test_redis_queue_answers_again_once_a_restarted_redis_is_back(
        tmp_path: Path, unused_port: int) -> None:
    binary = shutil.which("redis-server")
    assert binary is not None
    process = start_redis(binary, tmp_path, unused_port)

    async def scenario() -> tuple[bool, object]:
        nonlocal process
        queue = RedisStreamQueue.from_url(f"redis://127.0.0.1:{unused_port}/0", ttl_seconds=60)
        try:
            assert await queue.ping()
            stop_redis(process)
            process = start_redis(binary, tmp_path, unused_port)
            # The pooled connection died with the old server: the command must not fail.
            return await queue.ping(), await queue.get("no-such-job")
        finally:
            await queue.close()

    try:
        assert asyncio.run(scenario()) == (True, None)
    finally:
        stop_redis(process)


def _worker_start(registry: Path, redis_url: str, tmp_path: Path, **env: str
                  ) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KRYPTON_")} | {
        "KRYPTON_REGISTRY": str(registry), "KRYPTON_REDIS_URL": redis_url} | env
    return subprocess.run([sys.executable, "-c", "from krypton.cli import app; app()", "worker"],
                          env=environment, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_worker_told_to_use_cuda_without_a_cuda_device_refuses_to_start(
        registry: Path, redis_url: str, tmp_path: Path) -> None:
    started = _worker_start(registry, redis_url, tmp_path, KRYPTON_DEVICE="cuda")
    assert started.returncode == 2
    assert "no CUDA device" in started.stderr


def test_worker_that_can_load_none_of_the_models_refuses_to_start(
        registry: Path, redis_url: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    (broken / "weights").mkdir(parents=True)
    (broken / "weights" / "only.pt").write_bytes(b"not a checkpoint")
    (broken / "registry.toml").write_text(
        '[[models]]\nname = "only"\narchitecture = "resnet18"\ncheckpoint = "weights/only.pt"\n'
        'labels = ["a", "b"]\n', encoding="utf-8")
    started = _worker_start(broken / "registry.toml", redis_url, tmp_path)
    assert started.returncode == 2, started.stderr[-2000:]
    assert "none of the deployed models can be loaded" in started.stderr
    assert "does not" in started.stderr or "not a readable" in started.stderr, (
        "the log says why: the checkpoint's error is not withheld")


@pytest.mark.parametrize("junk", [
    pytest.param(b'{"dataset": "x", "model": "m", "PatientName": "Doe^Jane"}', id="unknown-field"),
    pytest.param(b"\xff\xfe not text", id="not-utf8"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested-past-the-parser"),
])
def test_redis_holding_a_broken_tuned_config_is_the_servers_fault_not_the_callers(
        client: TestClient, redis_client: redis.Redis, retina_png: bytes, junk: bytes) -> None:
    redis_client.set(constants.DATASET_KEY.format(helpers.TUNED_DATASET), junk)
    listing = client.get("/v1/datasets")
    assert listing.status_code == 200, listing.text
    shown = next(d for d in listing.json() if d["name"] == helpers.TUNED_DATASET)
    assert shown["tuned"] is None and "unreadable" in shown["stale"]
    response = helpers.submit(client, retina_png, dataset=helpers.TUNED_DATASET,
                              mode="approximate")
    problem = helpers.assert_problem(response, 500)
    assert problem["type"] == "urn:krypton:problem:dataset-config-unreadable"
    assert "Doe" not in response.text and constants.DATASET_KEY.format("") not in response.text


# A heatmap job's run as 0.1.0 stored it: flat knobs, one input side, no batches.
RUN_OF_0_1_0 = {"positions": 16, "input_size": helpers.INPUT_SIZE, "heatmap_shape": [4, 4],
                "seconds": 0.2, "device": "cpu", "mode": "exact", "flops_ratio": 2.5,
                "tau": 1.0, "drilldown_ratio": None, "coarse_stride": None,
                "drilldown_tolerance": None, "refined_positions": None, "refine_rounds": None}


def test_a_job_stored_before_the_run_record_changed_shape_is_served_and_can_be_deleted(
        client: TestClient, redis_url: str, redis_client: redis.Redis, deployment: Deployment,
        retina_png: bytes) -> None:
    with ThreadedWorker(redis_url, deployment, name="thread-1"):
        job = helpers.finished(client, retina_png)
    key = constants.JOB_KEY.format(job["id"])
    stored = json.loads(redis_client.get(key))  # type: ignore[arg-type]
    redis_client.set(key, json.dumps({**stored, "run": RUN_OF_0_1_0}), keepttl=True)

    served = client.get(f"/v1/heatmaps/{job['id']}")
    assert served.status_code == 200, served.text
    run = served.json()["run"]
    assert run["input_shape"] == [helpers.INPUT_SIZE, helpers.INPUT_SIZE]
    assert (run["approximation"]["tau"], run["flops_ratio"]) == (1.0, None)
    assert client.get(job["links"]["json"]).status_code == 200
    assert client.delete(f"/v1/heatmaps/{job['id']}").status_code == 204
