"""DICOM files for tests: pydicom's own test files, and files built from the example images.

Built files carry a patient's name and ID, so tests can check that none of it
leaks; their pixels are the examples' own, so their heatmaps can be compared
with the PNG's.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from krypton.benchmarks import samples

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PATIENT_NAME, PATIENT_ID = samples.PATIENT_NAME, samples.PATIENT_ID


def shipped(name: str) -> bytes:
    """A test file pydicom ships in its package (only those: nothing is downloaded)."""
    path = get_testdata_file(name)
    assert path is not None, f"pydicom does not ship {name}"
    return Path(str(path)).read_bytes()


def example_pixels(name: str = "retina.jpg", mode: str = "RGB") -> npt.NDArray[np.uint8]:
    return np.asarray(Image.open(EXAMPLES / name).convert(mode))


def png_of(pixels: npt.NDArray[np.generic]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def build(pixels: npt.NDArray[np.generic], photometric: str, *, signed: bool = False,
          rescale: tuple[float, float] | None = None,
          window: tuple[float, float] | None = None) -> bytes:
    """A Secondary Capture DICOM file holding ``pixels`` as they are stored."""
    return samples.secondary_capture(pixels, photometric, signed=signed, rescale=rescale,
                                     window=window)


def with_transfer_syntax(data: bytes, uid: str) -> bytes:
    """``data`` relabelled with another transfer syntax (to make one nothing decodes)."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.file_meta.TransferSyntaxUID = uid
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def dciodvfy_errors(path: Path) -> list[str]:
    """What dicom3tools' IOD validator reports as errors in the file (the test command
    installs it; a missing validator fails, never skips)."""
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy is not installed: the test command installs Debian's dicom3tools "
                    "(`apt-get install dicom3tools`)", pytrace=False)
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (report.stdout + report.stderr).splitlines()
            if line.startswith("Error")]
