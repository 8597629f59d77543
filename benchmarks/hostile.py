"""What a hostile hospital network does to the service, against real processes.

Scenarios for ``benchmarks/faults.py`` (which runs them: ``python
benchmarks/faults.py memory redis-empty ...``); each starts its own Redis, API
and workers, does one kind of harm, and returns what it measured, with
``ok`` saying whether the service held the line the README promises:

- ``memory``: the API's and a worker's resident memory over their warm idle
  for three 7000x7000 RLE DICOM uploads at once, their DICOM and overlay
  results, and a 5600x5600 uncompressed DICOM (bound: 300 MiB each, 450 MiB for
  the three uploads at once, as the README says);
- ``redis-empty``: Redis run without persistence, killed with jobs in flight
  and started empty: what the lost jobs' owners are told, whether workers
  take new jobs, and what ``/readyz`` says meanwhile;
- ``crowd``: 500 simultaneous submissions and 500 event streams of one job
  (no 503 with Redis healthy; every stream ends with a terminal event);
- ``quotas``: 60 simultaneous submissions against a queue limit of 20; a rate
  limit across a calendar-minute boundary; one key's job and byte quotas; an
  upload Redis has no memory for;
- ``door``: a 200 MB body without a key, a body declared larger than its
  route takes, a chunked body past its limit: when the answer comes;
- ``phi-logs``: marked DICOM files through every route, embedded and on
  Redis with a worker, logging at DEBUG: marker lines in the logs, 5xx;
- ``sigterm``: workers stopped with SIGTERM at random moments, 40 times:
  how long each took to exit, and whether any heartbeat outlived it;
- ``stale-worker``: a worker frozen (SIGSTOP) mid-job until another takes
  the job over and finishes it, then thawed: whose outcome stays;
- ``small``: ``Prefer: wait`` of 5000 digits, corrupt JPEG 2000, a revoked
  key added again, an event stream outliving its key, a 100 KB parameter,
  and a DELETE'd image in the append-only file.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import httpx_sse
import numpy as np
import pydicom
import redis
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless

from krypton.benchmarks import samples
from krypton.benchmarks.faults import Client, Cluster, cluster

MiB = 2**20
MEMORY_BOUND = 300 * MiB
THREE_AT_ONCE_BOUND = 450 * MiB
"""The README's bound for three large uploads at once: they decode in turn, and the
allocator keeps part of what each freed."""
TERMINAL = ("succeeded", "failed", "error")

Scenario = Callable[[argparse.Namespace, dict[str, str]], dict[str, Any]]


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def _reset_peak(pid: int) -> int:
    """Start the process's ``VmHWM`` again from its resident memory; that memory."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status(pid, "VmHWM")


def _report(name: str, **facts: Any) -> dict[str, Any]:
    result = {"scenario": name} | facts
    print(json.dumps(result, indent=1), flush=True)  # noqa: T201 - the run's record
    return result


def _http(running: Cluster, key: str | None = None) -> httpx.Client:
    token = running.user_key if key is None else key
    return httpx.Client(base_url=running.url, timeout=300,
                        headers={"Authorization": f"Bearer {token}"})


def _submit(http: httpx.Client, data: bytes, form: dict[str, str], **headers: str
            ) -> httpx.Response:
    return http.post("/v1/heatmaps", files={"image": ("image", data)}, data=form,
                     headers=headers)


def _finished(http: httpx.Client, job_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        document: dict[str, Any] = http.get(f"/v1/heatmaps/{job_id}").json()
        if document.get("status") in ("succeeded", "failed") or time.monotonic() > deadline:
            return document
        time.sleep(0.3)


# ---------------------------------------------------------------- memory


def memory(args: argparse.Namespace, form: dict[str, str]) -> dict[str, Any]:
    big = samples.radiograph(7000, compression=RLELossless)
    raw = samples.radiograph(5600, bits=8)
    with cluster(args, "memory", workers=1) as running, _http(running) as http:
        assert running.api is not None
        worker = running.worker_procs[0].pid
        small = args.image.read_bytes()
        _finished(http, _submit(http, small, form).json()["id"])  # warm API and worker
        api_idle, worker_idle = _reset_peak(running.api.pid), _reset_peak(worker)
        answers: list[int] = []
        ids: list[str] = []

        def upload() -> None:
            response = _submit(http, big, form)
            answers.append(response.status_code)
            if response.status_code == 202:
                ids.append(response.json()["id"])

        threads = [threading.Thread(target=upload) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        three_at_once = _status(running.api.pid, "VmHWM") - api_idle
        documents = [_finished(http, job_id) for job_id in ids]
        worker_peak = _status(worker, "VmHWM") - worker_idle
        results: dict[str, int] = {}
        sizes: dict[str, int] = {}
        for route, params in (("heatmap.dcm", {}), ("overlay.dcm", {}),
                              ("heatmap.png", {"overlay": "1", "size": "2048"})):
            _reset_peak(running.api.pid)
            answer = http.get(f"/v1/heatmaps/{ids[0]}/{route}", params=params)
            results[route] = _status(running.api.pid, "VmHWM") - api_idle
            sizes[route] = len(answer.content) if answer.status_code == 200 else -answer.status_code
        _reset_peak(running.api.pid)
        raw_answer = _submit(http, raw, form).status_code
        raw_peak = _status(running.api.pid, "VmHWM") - api_idle
        bomb = samples.deflate_bomb(2000)
        _reset_peak(running.api.pid)
        bomb_answers: list[int] = []
        bombs = [threading.Thread(target=lambda: bomb_answers.append(
            _submit(http, bomb, form).status_code)) for _ in range(2)]
        for thread in bombs:
            thread.start()
        for thread in bombs:
            thread.join()
        bomb_peak = _status(running.api.pid, "VmHWM") - api_idle
    peaks = [worker_peak, raw_peak, bomb_peak, *results.values()]
    return _report("memory", upload_bytes=len(big), answers=answers, raw_answer=raw_answer,
                   jobs=[d.get("status") for d in documents],
                   api_mib_three_uploads_at_once=round(three_at_once / MiB),
                   worker_mib=round(worker_peak / MiB),
                   api_mib_results={k: round(v / MiB) for k, v in results.items()},
                   result_bytes=sizes, api_mib_raw_5600=round(raw_peak / MiB),
                   deflate_bomb_bytes=len(bomb), deflate_bomb_answers=bomb_answers,
                   api_mib_two_deflate_bombs=round(bomb_peak / MiB),
                   ok=three_at_once < THREE_AT_ONCE_BOUND
                   and all(p < MEMORY_BOUND for p in peaks))


# ---------------------------------------------------------------- Redis loses its data


def redis_empty(args: argparse.Namespace, form: dict[str, str]) -> dict[str, Any]:
    slow = form | {"stride": "4"}
    with cluster(args, "redis-empty", persistent=False) as running:
        client = Client(running, args.image, slow)
        ids = client.submit(6)
        _wait_for(lambda: any((client.job(i) or {}).get("status") == "running" for i in ids),
                  120)
        assert running.redis is not None
        running.redis.kill()
        running.redis.wait(10)
        running.start_redis()  # empty: it kept nothing
        answers: collections.Counter[str] = collections.Counter()
        with _http(running) as http:
            for job_id in ids:
                response = http.get(f"/v1/heatmaps/{job_id}")
                answers[f"{response.status_code} {response.json().get('type', '')}"] += 1
            readiness = []
            started = time.monotonic()
            while time.monotonic() - started < 15:
                ready = http.get("/readyz").json()
                readiness.append(f"{time.monotonic() - started:.0f} s: {ready['status']}, "
                                 f"{ready['live_workers']} live")
                time.sleep(1)
            fresh = [_submit(http, args.image.read_bytes(), form).json()["id"] for _ in range(4)]
            deadline = time.monotonic() + 90
            outcomes = [_finished(http, job_id, max(1.0, deadline - time.monotonic())
                                  ).get("status") for job_id in fresh]
        logs = running.worker_logs()
    return _report("redis-empty", lost_jobs_answered=dict(answers),
                   readyz_after_restart=readiness[:4] + readiness[-2:],
                   new_jobs=collections.Counter(outcomes),
                   nogroup_lines_in_worker_logs=logs.count("NOGROUP"),
                   ok=all(o == "succeeded" for o in outcomes)
                   and answers == {"404 urn:krypton:problem:job-lost": 6})


def _wait_for(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("not within the deadline")
        time.sleep(0.1)


# ---------------------------------------------------------------- many clients


def crowd(args: argparse.Namespace, form: dict[str, str]) -> dict[str, Any]:
    generous = {"KRYPTON_RATE_LIMIT_PER_MINUTE": "100000", "KRYPTON_MAX_QUEUE_LENGTH": "100000",
                "KRYPTON_MAX_JOBS_PER_KEY": "100000"}
    clients = args.clients
    with cluster(args, "crowd", workers=0, env=generous) as running:
        image = args.image.read_bytes()
        headers = {"Authorization": f"Bearer {running.user_key}"}

        async def run() -> tuple[collections.Counter[str], collections.Counter[str]]:
            limits = httpx.Limits(max_connections=clients + 10)
            async with httpx.AsyncClient(base_url=running.url, timeout=300, headers=headers,
                                         limits=limits) as http:
                accepted: list[str] = []

                async def submit() -> str:
                    try:
                        response = await http.post("/v1/heatmaps", data=form,
                                                   files={"image": ("image", image)})
                    except httpx.HTTPError as exc:
                        return type(exc).__name__
                    if response.status_code == 202:
                        accepted.append(response.json()["id"])
                    return f"{response.status_code} {response.json().get('type', '')}".strip()

                submitted = collections.Counter(await asyncio.gather(
                    *(submit() for _ in range(clients))))
                for job_id in accepted:  # out of the way of the job the streams follow
                    await http.delete(f"/v1/heatmaps/{job_id}")
                job = (await http.post("/v1/heatmaps", data=form,
                                       files={"image": ("image", image)})).json()
                opened = [asyncio.Event() for _ in range(clients)]

                async def follow(flag: asyncio.Event) -> str:
                    last = "none"
                    try:
                        async with httpx_sse.aconnect_sse(
                                http, "GET", job["links"]["events"]) as source:
                            flag.set()
                            async for event in source.aiter_sse():
                                last = event.event
                                if last in TERMINAL:
                                    break
                    except httpx.HTTPError as exc:
                        flag.set()
                        return type(exc).__name__
                    return last

                streams = [asyncio.create_task(follow(flag)) for flag in opened]
                await asyncio.wait_for(asyncio.gather(*(flag.wait() for flag in opened)), 300)
                running.workers = 1
                await asyncio.to_thread(running.start_workers)
                endings = await asyncio.wait_for(asyncio.gather(*streams), 600)
                return submitted, collections.Counter(endings)

        submitted, endings = asyncio.run(run())
    false_503 = sum(n for answer, n in submitted.items() if answer.startswith("503"))
    return _report("crowd", clients=clients, submissions=dict(submitted),
                   stream_endings=dict(endings), false_503=false_503,
                   ok=false_503 == 0 and endings == {"succeeded": clients})


# ---------------------------------------------------------------- quotas


def quotas(args: argparse.Namespace, form: dict[str, str]) -> dict[str, Any]:
    image = args.image.read_bytes()
    found: dict[str, Any] = {}
    with cluster(args, "quota-queue", workers=0,
                 env={"KRYPTON_MAX_QUEUE_LENGTH": "20"}) as running:
        found["queue_limit_20_of_60_at_once"] = _at_once(running, image, form, 60)
    with cluster(args, "quota-rate", workers=0,
                 env={"KRYPTON_RATE_LIMIT_PER_MINUTE": "30"}) as running:
        # 30 just before a calendar minute ends, 30 just after: one minute holds all 60.
        while time.time() % 60 < 58.5:
            time.sleep(0.2)
        first = _at_once(running, image, form, 30)
        while time.time() % 60 > 30:
            time.sleep(0.05)
        found["rate_30_a_minute_across_a_minute_boundary"] = first + _at_once(
            running, image, form, 30)
    quota = {"KRYPTON_MAX_JOBS_PER_KEY": "5", "KRYPTON_MAX_BYTES_PER_KEY": str(40 * MiB)}
    with cluster(args, "quota-key", workers=0, env=quota) as running:
        found["jobs_quota_5_of_8"] = _at_once(running, image, form, 8)
        found["another_key_meanwhile"] = _at_once(running, image, form, 1,
                                                  key=running.admin_key)
    with cluster(args, "quota-bytes", workers=0,
                 env={"KRYPTON_MAX_BYTES_PER_KEY": str(3 * len(image))}) as running:
        found["bytes_quota_3_images_of_4"] = _at_once(running, image, form, 4)
    with cluster(args, "quota-memory", workers=0) as running:
        store = redis.Redis(port=running.redis_port)
        store.config_set("maxmemory", int(store.info("memory")["used_memory"]) + 4 * MiB)
        noise = np.random.default_rng(0).integers(0, 256, (1600, 1600), dtype=np.uint8)
        upload = samples.secondary_capture(noise, "MONOCHROME2")
        with _http(running) as http:
            answer = _submit(http, upload, form)
            found["upload_of_2_5_MB_with_4_MB_left"] = (
                f"{answer.status_code} {answer.json().get('type', '')}")
            found["healthz_after"] = http.get("/healthz").status_code
    ok = (found["queue_limit_20_of_60_at_once"].count("202") == 20
          and found["rate_30_a_minute_across_a_minute_boundary"].count("202") == 30
          and found["jobs_quota_5_of_8"].count("202") == 5
          and found["another_key_meanwhile"] == ["202"]
          and found["bytes_quota_3_images_of_4"].count("202") == 3
          and found["upload_of_2_5_MB_with_4_MB_left"].endswith("store-full"))
    summary = {k: dict(collections.Counter(v)) if isinstance(v, list) else v
               for k, v in found.items()}
    return _report("quotas", **summary, ok=ok)


def _at_once(running: Cluster, image: bytes, form: dict[str, str], count: int, *,
             key: str | None = None) -> list[str]:
    """Submit ``count`` jobs at once (threads); each answer's status, and 4xx/5xx type."""
    answers: list[str] = []
    with _http(running, key) as http:
        def one() -> None:
            response = _submit(http, image, form)
            kind = response.json().get("type", "").rsplit(":", 1)[-1]
            answers.append(str(response.status_code) + (f" {kind}" if kind else ""))

        threads = [threading.Thread(target=one) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return [a.split()[0] if a.startswith("202") else a for a in answers]


# ---------------------------------------------------------------- the door


def door(args: argparse.Namespace, form: dict[str, str]) -> dict[str, Any]:
    with cluster(args, "door", workers=0) as running:
        port = running.api_port
        multipart = "Content-Type: multipart/form-data; boundary=b"
        key = f"Authorization: Bearer {running.user_key}"
        found = {
            "200_MB_without_a_key": _first_answer(port, [multipart], 200 * MiB),
            "40_MiB_declared_with_a_key": _first_answer(port, [multipart, key], 40 * MiB),
            "chunked_past_the_limit": _first_answer(port, [multipart, key], 200 * MiB,
                                                    chunked=True),
        }
    ok = (found["200_MB_without_a_key"]["status"] == 401
          and found["40_MiB_declared_with_a_key"]["status"] == 413
          and found["chunked_past_the_limit"]["status"] == 413
          and all(f["mib_sent"] < 48 for f in found.values()))
    return _report("door", **found, ok=ok)


def _first_answer(port: int, headers: list[str], size: int, *, chunked: bool = False,
                  deadline: float = 120) -> dict[str, Any]:
    """Send a POST /v1/heatmaps of ``size`` body bytes while listening: the status of the
    first answer, when it came, and how much of the body had been sent by then."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    head = "\r\n".join(["POST /v1/heatmaps HTTP/1.1", "Host: krypton", *headers, framing])
    opening = b'--b\r\nContent-Disposition: form-data; name="image"; filename="i"\r\n\r\n'
    piece = b"x" * 65536
    started = time.monotonic()
    sent, answer, pending = 0, b"", b""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(head.encode() + b"\r\n\r\n")
        connection.sendall(f"{len(opening):x}\r\n".encode() + opening + b"\r\n" if chunked
                           else opening)
        connection.setblocking(False)
        while b"\r\n" not in answer and time.monotonic() - started < deadline:
            with contextlib.suppress(BlockingIOError):
                answer += connection.recv(4096)
            if not pending and sent < size:
                pending = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
                sent += len(piece)
            try:
                pending = pending[connection.send(pending):] if pending else pending
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                time.sleep(0.001)
    status = int(answer.split()[1]) if answer.startswith(b"HTTP/1.1 ") else None
    return {"status": status, "seconds": round(time.monotonic() - started, 2),
            "mib_sent": round(sent / MiB, 1)}


# ---------------------------------------------------------------- patient data in logs


def phi_logs(args: argparse.Namespace, form: dict[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    debug = {"KRYPTON_LOG_LEVEL": "DEBUG"}
    for mode, workers, env in (("embedded", 0, debug | {"KRYPTON_REDIS_URL": ""}),
                               ("redis", 1, debug)):
        with cluster(args, f"phi-{mode}", workers=workers, env=env) as running:
            statuses = _every_dicom_path(running, form)
            logs = "\n".join(p.read_text(errors="replace")
                             for p in running.folder.glob("*.log") if p.name != "redis.log")
        leaks = [line for line in logs.splitlines()
                 if samples.MARK in line or samples.BAD_DATE in line]
        found[mode] = {"answers": statuses, "server_errors": sum(
            s >= 500 for s in statuses.values()), "log_lines": len(logs.splitlines()),
            "log_lines_with_a_tag_value": len(leaks), "first_leaks": leaks[:3]}
    return _report("phi-logs", **found, ok=all(
        f["log_lines_with_a_tag_value"] == 0 and f["server_errors"] == 0
        for f in found.values()))


def _shipped(name: str) -> bytes:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom does not ship {name}"
    return Path(str(path)).read_bytes()


def _every_dicom_path(running: Cluster, form: dict[str, str]) -> dict[str, int]:
    pixels = np.add.outer(np.arange(240), np.arange(320)).astype(np.uint8)
    single = samples.marked(samples.secondary_capture(pixels, "MONOCHROME2"))
    multi = samples.marked(_shipped("examples_ybr_color.dcm"))
    unknown = pydicom.dcmread(io.BytesIO(samples.marked(_shipped("MR_small_RLE.dcm"))))
    unknown.file_meta.TransferSyntaxUID = pydicom.uid.UID("1.2.840.10008.1.2.4.100")
    buffer = io.BytesIO()
    unknown.save_as(buffer)
    statuses: dict[str, int] = {}
    with _http(running, running.admin_key) as http:
        def call(name: str, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
            """The answer's document; its status under ``name`` (599: the connection broke)."""
            try:
                response = http.request(method, url, **kwargs)
            except httpx.HTTPError:
                statuses[name] = 599
                return {}
            statuses[name] = response.status_code
            if not response.headers.get("content-type", "").endswith("json"):
                return {}
            document: dict[str, Any] = response.json()
            return document

        def post(name: str, route: str, data: bytes, **fields: str) -> dict[str, Any]:
            return call(name, "POST", route, files={"image": ("scan.dcm", data)}, data=fields,
                        headers={"Prefer": "wait=60"})

        job = post("heatmap", "/v1/heatmaps", single, **form)
        if "links" in job:
            job = _finished(http, job["id"], 120)
            for link, url in job["links"].items():
                call(link, "GET", url)
            call("overlay.png", "GET", job["links"]["png"], params={"overlay": "1"})
        unknown_sex = pydicom.dcmread(io.BytesIO(single))
        unknown_sex.PatientSex = "U"
        sex_buffer = io.BytesIO()
        unknown_sex.save_as(sex_buffer)
        sexed = post("sex U", "/v1/heatmaps", sex_buffer.getvalue(), **form)
        if "links" in sexed:
            sexed = _finished(http, sexed["id"], 120)
            call("sex U dcm", "GET", sexed["links"].get("dcm", "/"))
        post("predict", "/v1/predict", single)
        post("frame", "/v1/heatmaps", multi, frame="2", **form)
        post("no frame", "/v1/heatmaps", multi, **form)
        post("truncated", "/v1/heatmaps", single[:-5000], **form)
        post("transfer syntax", "/v1/heatmaps", buffer.getvalue(), **form)
    return statuses


# ---------------------------------------------------------------- stopping workers


def sigterm(args: argparse.Namespace, form: dict[str, str]) -> dict[str, Any]:
    exits: list[float] = []
    ghosts = 0
    with cluster(args, "sigterm", workers=0) as running:
        store = redis.Redis(port=running.redis_port)
        environment = running._service_env()
        for attempt in range(args.stops):
            process = subprocess.Popen([running.krypton, "worker", "--no-preload"],
                                       env=environment, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
            _wait_for(lambda: bool(store.zcard("krypton:workers")), 60)
            time.sleep(random.Random(attempt).uniform(0.0, 2.0))  # anywhere in a beat
            stopped = time.monotonic()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
                exits.append(time.monotonic() - stopped)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
                exits.append(float("inf"))
            time.sleep(0.5)
            ghosts += sum(1 for _ in store.scan_iter("krypton:worker:*"))
            for name in store.scan_iter("krypton:worker:*"):
                store.delete(name)
            store.delete("krypton:workers")
    slow = [round(s, 1) for s in exits if s > 10]
    return _report("sigterm", stops=len(exits),
                   seconds_to_exit={"median": round(float(np.median(exits)), 2),
                                    "max": round(max(exits), 2)},
                   stuck_over_10_s=len(slow), heartbeats_left_behind=ghosts,
                   ok=not slow and ghosts == 0)


# ---------------------------------------------------------------- a stale worker


def stale_worker(args: argparse.Namespace, form: dict[str, str]) -> dict[str, Any]:
    slow = form | {"stride": "4"}
    with cluster(args, "stale-worker", workers=2) as running, _http(running) as http:
        job_id = _submit(http, args.image.read_bytes(), slow).json()["id"]
        holder: dict[str, Any] = {}

        def computing() -> bool:
            for worker in running.ready().get("workers") or []:
                if worker["current_job"] == job_id:
                    holder.update(worker)
            return bool(holder)

        _wait_for(computing, 120)
        os.kill(int(holder["pid"]), signal.SIGSTOP)  # frozen, holding its claim
        document = _finished(http, job_id, 300)  # the other worker takes it over
        os.kill(int(holder["pid"]), signal.SIGCONT)
        # The thawed worker sees the job taken over at its next progress write and drops
        # its run (or, done by then, tries to store its outcome and is refused).
        with contextlib.suppress(TimeoutError):
            _wait_for(lambda: "taken over" in running.worker_logs(), 60)
        after = http.get(f"/v1/heatmaps/{job_id}").json()
        result = http.get(f"/v1/heatmaps/{job_id}/heatmap.npy").status_code
        logs = running.worker_logs()
    finishes = len(re.findall(rf"job {job_id}: heatmap on \S+ succeeded in", logs))
    return _report("stale-worker", frozen_worker=holder.get("name"),
                   finished_by=document.get("worker"), still_finished_by=after.get("worker"),
                   outcome_stored_times=finishes, result=result,
                   ok=finishes == 1 and after.get("worker") == document.get("worker")
                   != holder.get("name") and result == 200)


# ---------------------------------------------------------------- small ones


def small(args: argparse.Namespace, form: dict[str, str]) -> dict[str, Any]:
    image = args.image.read_bytes()
    found: dict[str, Any] = {}
    def attempt(name: str, call: Callable[[], Any]) -> None:
        """Record what ``call`` gives, or the error it ends with (a broken connection)."""
        try:
            found[name] = call()
        except httpx.HTTPError as exc:
            found[name] = type(exc).__name__

    with cluster(args, "small", workers=0) as running, _http(running) as http:
        attempt("prefer_wait_5000_digits", lambda: _submit(
            http, image, form, Prefer="wait=" + "9" * 5000).status_code)
        j2k = bytearray(_shipped("JPEG2000.dcm"))
        start = j2k.find(b"\xff\x4f\xff\x51")
        j2k[start + 100 : start + 150] = bytes(50)
        attempt("corrupt_jpeg_2000", lambda: _submit(http, bytes(j2k), form).status_code)
        attempt("answer_bytes_to_a_100_KB_model_name", lambda: len(
            _submit(http, image, form | {"model": "m" * 100_000}).content))
        keys = running.folder / "keys.json"
        token = _add_key(running, "again", keys)
        with _http(running, token) as keyed:
            job = _submit(keyed, image, form).json()
            subprocess.run([running.krypton, "keys", "revoke", "again", "--file", str(keys)],
                           check=True, capture_output=True)
            with _http(running, _add_key(running, "again", keys)) as renewed:
                found["old_job_read_by_the_name_added_again"] = renewed.get(
                    f"/v1/heatmaps/{job['id']}").status_code
        found["stream_after_its_key_is_revoked"] = _stream_after_revoke(running, image, form,
                                                                        keys)
        marker = b"KRYPTON-DELETED-IMAGE-" + os.urandom(8).hex().encode()
        gone = _submit(http, image + marker, form).json()["id"]
        http.delete(f"/v1/heatmaps/{gone}")
        time.sleep(1.5)  # Redis writes its append-only file every second
        appendonly = b"".join(p.read_bytes() for p in (running.folder / "redis").rglob("*.aof"))
        found["deleted_image_still_in_the_append_only_file"] = marker in appendonly
    ok = (found["prefer_wait_5000_digits"] in (200, 202) and found["corrupt_jpeg_2000"] == 422
          and found["answer_bytes_to_a_100_KB_model_name"] in range(4000)
          and found["old_job_read_by_the_name_added_again"] == 404
          and found["stream_after_its_key_is_revoked"].startswith("error"))
    return _report("small", **found, ok=ok)


def _add_key(running: Cluster, name: str, keys: Path) -> str:
    done = subprocess.run([running.krypton, "keys", "add", name, "--file", str(keys)],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def _stream_after_revoke(running: Cluster, image: bytes, form: dict[str, str],
                         keys: Path) -> str:
    """Follow a queued job's events, revoke the stream's key: how the stream ended."""
    token = _add_key(running, "streamer", keys)
    with _http(running, token) as http:
        job = _submit(http, image, form).json()
        with httpx_sse.connect_sse(http, "GET", job["links"]["events"]) as source:
            # A deadline of its own: keep-alive comments would reset a read timeout.
            deadline = threading.Timer(20, source.response.close)
            deadline.start()
            started = time.monotonic()
            try:
                for event in source.iter_sse():
                    if event.event == "progress":
                        subprocess.run([running.krypton, "keys", "revoke", "streamer", "--file",
                                        str(keys)], check=True, capture_output=True)
                    if event.event in TERMINAL:
                        return f"{event.event} after {time.monotonic() - started:.1f} s"
            except httpx.HTTPError:
                pass
            finally:
                deadline.cancel()
    return "open until closed 20 s after the revocation, with no terminal event"


SCENARIOS: dict[str, Scenario] = {
    "memory": memory, "redis-empty": redis_empty, "crowd": crowd, "quotas": quotas,
    "door": door, "phi-logs": phi_logs, "sigterm": sigterm, "stale-worker": stale_worker,
    "small": small}
