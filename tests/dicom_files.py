"""DICOM files for tests: pydicom's own test files, and files built from the example images.

Built files carry a patient's name and ID, so tests can check that none of it
leaks; their pixels are the examples' own, so their heatmaps can be compared
with the PNG's.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PATIENT_NAME = "Doe^Jane^Q"
PATIENT_ID = "MRN-8675309"


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
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.PatientName, dataset.PatientID = PATIENT_NAME, PATIENT_ID
    dataset.PatientBirthDate, dataset.PatientSex = "19700101", "F"
    dataset.StudyDate, dataset.StudyTime, dataset.Modality = "20260101", "120000", "OT"
    dataset.StudyID, dataset.AccessionNumber, dataset.ReferringPhysicianName = "1", "A1", ""
    dataset.SeriesNumber = dataset.InstanceNumber = 1
    dataset.ConversionType = "WSD"
    dataset.Rows, dataset.Columns = pixels.shape[:2]
    dataset.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    dataset.PhotometricInterpretation = photometric
    if pixels.ndim == 3:
        dataset.PlanarConfiguration = 0
    dataset.BitsAllocated = dataset.BitsStored = pixels.dtype.itemsize * 8
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 1 if signed else 0
    if rescale is not None:
        dataset.RescaleSlope, dataset.RescaleIntercept = rescale
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = window
    dataset.PixelData = np.ascontiguousarray(pixels).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def with_transfer_syntax(data: bytes, uid: str) -> bytes:
    """``data`` relabelled with another transfer syntax (to make one nothing decodes)."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.file_meta.TransferSyntaxUID = uid
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()
