"""Time from an image arriving in a PACS to Krypton's results back in its study.

A real Orthanc (Debian's packages) whose Lua rule forwards each new instance
to Krypton's STOW-RS route, as a hospital's auto-routing rule would, and a
real ``krypton serve`` (embedded, on the CPU) with ``KRYPTON_PACS_URL``
pointing back at that Orthanc: no routes, so each instance is explained by
the deployment's first model (ResNet18 in the demo deployment) with the
default patch 16 and stride 8, and its results go back to the only PACS.

For each image the clock starts as the image is stored in Orthanc and stops
when Orthanc's QIDO-RS finds the measurement report in the image's study;
polled every 0.1 s. The model is loaded and traced before the first image.

    .venv/bin/python -m krypton.benchmarks.pacs_round_trip
    .venv/bin/python -m krypton.benchmarks.pacs_round_trip --json pacs.json
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
import pydicom
import typer
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from skimage import data

from krypton.benchmarks import samples
from krypton.benchmarks.orthanc import Orthanc, free_port, orthanc_binary
from krypton.benchmarks.provenance import run_record

app = typer.Typer(add_completion=False)

REPORT_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SHIPPED = ("CT_small.dcm", "MR_small.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm")
"""pydicom's own test files: CT, MR, a JPEG photograph, a JPEG 2000 image."""
FORWARD = Path(__file__).resolve().parents[1] / "deploy" / "orthanc" / "route-to-krypton.lua"
"""The forwarding rule Krypton ships: every new instance but Krypton's own results."""
JOB_DONE = re.compile(r"job \w+: heatmap on \S+ succeeded in ([0-9.]+) s")
"""The worker's log line of a finished heatmap: its time from claim to outcome stored,
the PACS delivery included."""
DELIVERED = re.compile(r"job \w+: results stored in PACS \S+ in ([0-9.]+) s")
"""The worker's log line of a delivery: making the three DICOM results and storing them."""


def images() -> Iterator[tuple[str, Dataset]]:
    """The images sent: pydicom's test files and the retina photograph as DICOM."""
    for name in SHIPPED:
        path = get_testdata_file(name, download=False)
        if path is not None:
            yield name, pydicom.dcmread(str(path))
    retina = samples.secondary_capture(np.asarray(data.retina()), "RGB")
    yield "retina.dcm (SC, 1411 x 1411 RGB)", pydicom.dcmread(io.BytesIO(retina))


@contextlib.contextmanager
def krypton(folder: Path, orthanc: Orthanc, port: int,
            registry: Path | None) -> Iterator[str]:
    """``krypton serve`` with the Orthanc as its PACS; its URL once a model is ready."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRYPTON_")} | {
        "KRYPTON_PACS_URL": orthanc.dicomweb_url}
    if registry is not None:
        env["KRYPTON_REGISTRY"] = str(registry)
    command = Path(sys.executable).with_name("krypton")
    with (folder / "krypton.log").open("wb") as log:
        process = subprocess.Popen([str(command), "serve", "--port", str(port)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        else:
            raise RuntimeError("krypton serve did not become ready: see "
                               f"{folder / 'krypton.log'}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def round_trip(orthanc: Orthanc, dataset: Dataset, *, timeout: float = 600.0) -> float:
    """Seconds from storing ``dataset`` in Orthanc to its report being found in its study."""
    began = time.monotonic()
    orthanc.client().store_instances([dataset])
    while time.monotonic() - began < timeout:
        found = orthanc.client().search_for_instances(
            study_instance_uid=dataset.StudyInstanceUID)
        if any(item["00080016"]["Value"][0] == REPORT_CLASS for item in found):
            return time.monotonic() - began
        time.sleep(0.1)
    raise RuntimeError(f"no report within {timeout:.0f} s")


@app.command()
def main(
    registry: Annotated[Path | None, typer.Option(help="A deployment registry; default "
                                                       "the demo models.")] = None,
    output: Annotated[Path | None, typer.Option("--json", help="Write the figures here.")
                      ] = None,
) -> None:
    """Store each image in Orthanc and time its results' way back into its study."""
    binary = orthanc_binary()
    if binary is None:
        raise typer.BadParameter("Orthanc is not installed (apt-get install orthanc "
                                 "orthanc-dicomweb)")
    with tempfile.TemporaryDirectory(prefix="pacs-round-trip-") as scratch:
        folder = Path(scratch)
        port = free_port()
        (folder / "orthanc").mkdir()
        orthanc = Orthanc(binary, folder / "orthanc", {
            "LuaScripts": [str(FORWARD)],
            "DicomWeb": {"Servers": {"krypton": [f"http://127.0.0.1:{port}/dicomweb/"]}}})
        orthanc.start()
        try:
            with krypton(folder, orthanc, port, registry):
                rows = [(name, round_trip(orthanc, dataset)) for name, dataset in images()]
            log = (folder / "krypton.log").read_text(errors="replace")
            jobs = [float(seconds) for seconds in JOB_DONE.findall(log)]
            deliveries = [float(seconds) for seconds in DELIVERED.findall(log)]
        finally:
            orthanc.stop()
    typer.echo(f"{'image':32} {'in to back':>10} {'job':>8} {'of which results':>16}")
    for (name, seconds), job, delivery in zip(rows, jobs, deliveries, strict=False):
        typer.echo(f"{name:32} {seconds:8.2f} s {job:6.2f} s {delivery:14.2f} s")
    worst = max(rows, key=lambda row: row[1])
    typer.echo(f"worst: {worst[0]} {worst[1]:.2f} s")
    if output is not None:
        output.write_text(json.dumps(run_record("cpu") | {
            "benchmark": "pacs_round_trip", "seconds": dict(rows),
            "job_seconds": dict(zip([name for name, _ in rows], jobs, strict=False)),
            "delivery_seconds": dict(zip([name for name, _ in rows], deliveries, strict=False))},
            indent=2))


if __name__ == "__main__":
    app()
