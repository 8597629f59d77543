"""What a script at the PACS side uses: ``krypton.client`` and ``krypton pacs``, end to end."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from krypton.client import Client, KryptonError, stored_results
from tests import dicom_files as files
from tests.pacs.conftest import Orthanc
from tests.pacs.helpers import in_study

pytestmark = pytest.mark.pacs

KRYPTON = Path(sys.executable).with_name("krypton")


@pytest.fixture
def source(orthanc: Orthanc) -> Dataset:
    dataset = pydicom.dcmread(io.BytesIO(files.shipped("CT_small.dcm")))
    orthanc.client().store_instances([dataset])
    return dataset


def run(*arguments: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(KRYPTON), "pacs", *arguments, "--url", url],
                          capture_output=True, text=True, timeout=300)


def test_the_client_explains_an_instance_and_lists_what_the_pacs_now_holds(
        krypton: httpx.Client, orthanc: Orthanc, source: Dataset) -> None:
    with Client(str(krypton.base_url)) as client:
        job = client.wait(client.explain_instance(
            "orthanc", source.StudyInstanceUID, source.SeriesInstanceUID,
            source.SOPInstanceUID, patch_size=16, stride=16))
    stored = stored_results(job)
    assert [item["role"] for item in stored] == ["parametric_map", "overlay", "report"]
    held = in_study(orthanc, source.StudyInstanceUID)
    assert all(item["sop_instance_uid"] in held for item in stored)


def test_the_client_says_why_a_job_kept_out_of_the_pacs_stored_nothing(
        krypton: httpx.Client, source: Dataset) -> None:
    with Client(str(krypton.base_url)) as client:
        job = client.wait(client.explain_instance(
            "orthanc", source.StudyInstanceUID, source.SeriesInstanceUID,
            source.SOPInstanceUID, patch_size=16, stride=16, store_results=False))
    with pytest.raises(KryptonError, match="stores no results in a PACS"):
        stored_results(job)


def test_the_client_raises_the_services_problem_for_an_unknown_pacs(
        krypton: httpx.Client, source: Dataset) -> None:
    with Client(str(krypton.base_url)) as client, pytest.raises(KryptonError) as raised:
        client.explain_instance("nowhere", source.StudyInstanceUID, source.SeriesInstanceUID,
                                source.SOPInstanceUID)
    assert raised.value.status == 404 and "orthanc" in str(raised.value)


def test_krypton_pacs_explain_prints_the_prediction_and_each_stored_result(
        krypton: httpx.Client, source: Dataset) -> None:
    done = run("explain", source.StudyInstanceUID, source.SeriesInstanceUID,
               source.SOPInstanceUID, "--pacs", "orthanc", "--patch-size", "16",
               "--stride", "16", url=str(krypton.base_url))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"study {source.StudyInstanceUID}" in lines[1]
    assert [line.split()[0] for line in lines[2:]] == ["parametric_map", "overlay", "report"]


def test_krypton_pacs_results_lists_a_jobs_stored_results(
        krypton: httpx.Client, source: Dataset) -> None:
    with Client(str(krypton.base_url)) as client:
        job = client.wait(client.explain_instance(
            "orthanc", source.StudyInstanceUID, source.SeriesInstanceUID,
            source.SOPInstanceUID, patch_size=16, stride=16))
    done = run("results", job["id"], url=str(krypton.base_url))
    assert done.returncode == 0, done.stderr
    listed = {line.split()[-1] for line in done.stdout.splitlines()[1:]}
    assert listed == {item["sop_instance_uid"] for item in stored_results(job)}


def test_krypton_pacs_explain_exits_1_saying_why_when_the_pacs_is_down(
        krypton: httpx.Client, orthanc: Orthanc, source: Dataset) -> None:
    orthanc.stop(kill=True)
    done = run("explain", source.StudyInstanceUID, source.SeriesInstanceUID,
               source.SOPInstanceUID, "--pacs", "orthanc", url=str(krypton.base_url))
    assert done.returncode != 0
    assert "PACS unavailable" in done.stderr and "did not answer" in done.stderr


def test_krypton_pacs_list_names_the_services_pacs(krypton: httpx.Client) -> None:
    done = run("list", url=str(krypton.base_url))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["orthanc", "results", "stored", "back"]
