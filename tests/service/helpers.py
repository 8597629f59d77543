"""Helpers for service tests: images, a small registry, polling with deadlines, workers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import httpx2
import numpy as np
import torch
from PIL import Image
from skimage import data

from krypton.models import DatasetConfig, DatasetStore, build_model
from krypton.models.deployment import Deployment
from krypton.service import constants
from krypton.service.problems import PROBLEM_MEDIA_TYPE
from krypton.service.store import JobQueue, Store, WorkerRegistry
from krypton.service.store.configs import MemoryConfigs
from krypton.service.store.memory import InMemoryWorkers
from krypton.service.store.redis import RedisConfigs, RedisStreamQueue, RedisWorkers
from krypton.service.worker import Worker

T = TypeVar("T")

MODEL = "retina-resnet18"
"""The deployed model every test job runs: ResNet18 at 64 px with a fine-tuned-like head."""
DEMO_MODEL = "demo-resnet18"
DEMO_WINDOW = (40.0, 400.0)
"""The demo model's own window for grayscale DICOM (a CT soft-tissue window)."""
"""A second deployed model with seeded random weights (listed, rarely run)."""
LABELS = ("healthy", "retinopathy", "glaucoma")
INPUT_SIZE = 64
RETINA_SIZE = (160, 120)
"""Width and height of the test photo: not square, so a swapped axis shows."""
FAST = {"patch_size": "16", "stride": "16"}
"""16 positions on the 64 px input: a job takes a fraction of a second."""
SLOW = {"patch_size": "8", "stride": "1"}
"""57 x 57 positions: a job runs for seconds, long enough to catch it running."""
TUNED_DATASET = "fundus-tuned"
STALE_DATASET = "fundus-stale"
UNTUNED_DATASET = "fundus"
TUNING_DATASET = "fundus-tuning"
TUNED_TAU = 0.8
TUNED_TOLERANCE = 0.2
"""The tuned dataset's drill-down refines by bisection to this tolerance."""
DEADLINE = 60.0
"""Seconds a poll may take before the test fails (jobs take well under one)."""


# ---------------------------------------------------------------- images


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def retina_image() -> Image.Image:
    """scikit-image's fundus photograph, shrunk to :data:`RETINA_SIZE`."""
    return Image.fromarray(data.retina()).resize(RETINA_SIZE, Image.Resampling.BILINEAR)


def microaneurysms_16bit() -> Image.Image:
    """A grayscale fundus crop widened to 16 bits (255 -> 65535)."""
    return Image.fromarray(data.microaneurysms().astype(np.uint16) * 257)


# ---------------------------------------------------------------- deployment


def calibrated_checkpoint(path: Path) -> Path:
    """A state_dict of the deployed architecture whose logits spread out.

    A random head gives nearly uniform probabilities and an almost flat
    heatmap, which would let a service that loses precision pass; scaling
    the head makes patches move the probability visibly.
    """
    network = build_model("resnet18", num_classes=len(LABELS), seed=3)
    head = network.get_submodule("fc")
    assert isinstance(head, torch.nn.Linear)
    with torch.no_grad():
        head.weight.mul_(10.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    return path


def build_deployed(deployment: Deployment, name: str) -> torch.nn.Module:
    """The deployed model built independently of the service's model cache."""
    deployed = deployment.model(name)
    return build_model(deployed.architecture, num_classes=deployed.num_classes,
                       weights=deployed.checkpoint, seed=deployed.seed)


def write_registry(folder: Path, *, datasets_dir: Path) -> Path:
    """A deployment TOML: the calibrated model (relative checkpoint path) and four datasets."""
    calibrated_checkpoint(folder / "weights" / f"{MODEL}.pt")
    datasets = "\n".join(
        f'[[datasets]]\nname = "{name}"\nmodel = "{MODEL}"\ndescription = "{name} photos"\n'
        for name in (UNTUNED_DATASET, TUNED_DATASET, STALE_DATASET, TUNING_DATASET))
    labels = ", ".join(f'"{label}"' for label in LABELS)
    path = folder / "registry.toml"
    path.write_text(f"""\
datasets_dir = "{datasets_dir}"

[[models]]
name = "{MODEL}"
architecture = "resnet18"
checkpoint = "weights/{MODEL}.pt"
labels = [{labels}]
input_size = {INPUT_SIZE}
description = "fundus classifier for tests"

[[models]]
name = "{DEMO_MODEL}"
architecture = "resnet18"
labels = ["no", "yes"]
input_size = {INPUT_SIZE}
window = {{ center = {DEMO_WINDOW[0]}, width = {DEMO_WINDOW[1]} }}

{datasets}""", encoding="utf-8")
    return path


def write_broken_registry(folder: Path, registry: Path) -> Path:
    """``registry`` copied into ``folder``, where the model's checkpoint is not a checkpoint."""
    (folder / "weights").mkdir(parents=True, exist_ok=True)
    (folder / "weights" / f"{MODEL}.pt").write_bytes(b"not a checkpoint")
    broken = folder / "registry.toml"
    broken.write_text(registry.read_text(encoding="utf-8"), encoding="utf-8")
    return broken


def write_dataset_config(deployment: Deployment, dataset: str, *, checkpoint: str) -> Path:
    """A tuned config for ``dataset`` at the FAST geometry, pinned to ``checkpoint``."""
    deployed = deployment.model(deployment.dataset(dataset).model)
    config = DatasetConfig(
        dataset=dataset, model=deployed.architecture, checkpoint=checkpoint,
        patch_size=int(FAST["patch_size"]), stride=int(FAST["stride"]), tau=TUNED_TAU,
        drilldown_ratio=0.5, coarse_stride=2 * int(FAST["stride"]),
        drilldown_tolerance=TUNED_TOLERANCE, target_ssim=0.9, achieved_ssim=0.95)
    return DatasetStore(deployment.datasets_dir).save(config)


# ---------------------------------------------------------------- time


class FakeClock:
    """Monotonic seconds that move only when a test says so (for expiry and idle claims)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ---------------------------------------------------------------- polling


def wait_until(condition: Callable[[], T | None], *, timeout: float = DEADLINE,
               interval: float = 0.02, what: str = "the condition") -> T:
    """``condition()``'s first truthy value, polling; fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def wait_for_job(client: Any, url: str, *, statuses: tuple[str, ...] = ("succeeded", "failed"),
                 timeout: float = DEADLINE) -> dict[str, Any]:
    """Poll ``GET url`` until the job's status is one of ``statuses``; the job document."""
    last: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        nonlocal last
        response = client.get(url)
        assert response.status_code == 200, response.text
        last = response.json()
        return last if last["status"] in statuses else None

    try:
        return wait_until(reached, timeout=timeout, what=f"{url} to be {'/'.join(statuses)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {last}") from None


def submit(client: Any, image: bytes, *, filename: str = "retina.png",
           prefer: str | None = None, **fields: str) -> httpx2.Response:
    """``POST /v1/heatmaps`` with ``image`` as the file part and ``fields`` as form fields."""
    headers = {"Prefer": prefer} if prefer else {}
    response: httpx2.Response = client.post(
        "/v1/heatmaps", files={"image": (filename, image, "image/png")}, data=fields,
        headers=headers)
    return response


def finished(client: Any, image: bytes, **fields: str) -> dict[str, Any]:
    """Submit and wait: the job document once it has finished."""
    response = submit(client, image, **fields)
    assert response.status_code == 202, response.text
    return wait_for_job(client, response.headers["Location"])


def assert_problem(response: httpx.Response | httpx2.Response, status: int) -> dict[str, Any]:
    """The response is an RFC 9457 problem with ``status``; its document."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    document: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= set(document)
    assert document["status"] == status
    assert document["type"].startswith("urn:krypton:problem:")
    assert document["title"] and document["detail"]
    return document


def job_document(redis_client: Any, job_id: str) -> dict[str, Any]:
    """The job as the queue stores it (with ``attempts`` and ``worker``, which the API hides)."""
    raw = redis_client.get(constants.JOB_KEY.format(job_id))
    assert raw is not None, f"job {job_id} is not in Redis"
    document: dict[str, Any] = json.loads(raw)
    return document


# ---------------------------------------------------------------- workers


def store_around(queue: JobQueue, workers: WorkerRegistry | None = None) -> Store:
    """A store of ``queue``, with a worker registry and a config store of its kind beside
    it: for tests that give a worker a queue of their own making."""
    if isinstance(queue, RedisStreamQueue):
        return Store(jobs=queue, workers=workers or RedisWorkers(queue.client),
                     configs=RedisConfigs(queue.client))
    return Store(jobs=queue, workers=workers or InMemoryWorkers(), configs=MemoryConfigs())


class ThreadedWorker:
    """A real :class:`Worker` on a :class:`RedisStreamQueue`, in a thread with its own loop."""

    def __init__(self, redis_url: str, deployment: Deployment, *, name: str,
                 claim_idle_ms: int = constants.CLAIM_IDLE_MS) -> None:
        self.redis_url = redis_url
        self.deployment = deployment
        self.name = name
        self.claim_idle_ms = claim_idle_ms
        self.worker: Worker | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def __enter__(self) -> ThreadedWorker:
        self._thread.start()
        assert self._started.wait(30), f"worker {self.name} did not start"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def jobs_done(self) -> int:
        assert self.worker is not None
        return self.worker.jobs_done

    @property
    def current(self) -> str | None:
        assert self.worker is not None
        return self.worker.current

    def stop(self) -> None:
        if self._loop is not None and self.worker is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.worker.stop)
        self._thread.join(60)
        assert not self._thread.is_alive(), f"worker {self.name} did not stop"
        if self.error is not None:
            raise AssertionError(f"worker {self.name} crashed") from self.error

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by stop()
            self.error = exc
            self._started.set()

    async def _run(self) -> None:
        store = Store.redis(self.redis_url, ttl_seconds=3600, claim_idle_ms=self.claim_idle_ms)
        self.worker = Worker(store, self.deployment, name=self.name)
        self._loop = asyncio.get_running_loop()
        self._started.set()
        try:
            await self.worker.run(block_ms=100)
        finally:
            await store.close()


# ---------------------------------------------------------------- a real server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(registry: Path, *, log: Path | None = None, port: int | None = None,
            **environment: str) -> Iterator[str]:
    """``krypton serve`` as a user starts it (embedded, on a free port unless ``port``); its
    URL once ready.

    ``environment`` adds ``KRYPTON_*`` settings (none of the test run's own leak in).
    Its output goes to ``log`` (a file, so a busy server never blocks on a full pipe).
    """
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRYPTON_")
           and k != "REDIS_URL"} | {"KRYPTON_REGISTRY": str(registry)} | environment
    krypton = Path(sys.executable).with_name("krypton")
    with contextlib.ExitStack() as stack:
        if log is None:
            log = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "serve.log"
        output = stack.enter_context(log.open("wb"))
        process = subprocess.Popen([str(krypton), "serve", "--port", str(port)], env=env,
                                   stdout=output, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                with contextlib.suppress(OSError), urllib.request.urlopen(
                        f"{url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"krypton serve did not start: "
                                         f"{log.read_text(errors='replace')[-3000:]}")
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)
