"""DICOM files for the fault runs and the tests: built from pixels, marked, compressed.

Built files carry a patient's name and ID, so runs can check that none of it
leaks; :func:`marked` fills every text and date attribute a hospital's files
carry with markers, and gives the birth date an invalid month.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

__all__ = ["BAD_DATE", "MARK", "PATIENT_ID", "PATIENT_NAME", "deflate_bomb", "marked",
           "radiograph", "secondary_capture"]

PATIENT_NAME = "Doe^Jane^Q"
PATIENT_ID = "MRN-8675309"
MARK = "ZQXMARK"
"""Every marker starts with this; none of Krypton's own words does."""
BAD_DATE = "19991345"
"""A date in month 13: invalid as DICOM DA, and a marker in itself."""
_MARKED = ["PatientName", "PatientID", "OtherPatientIDs", "PatientAddress",
           "PatientTelephoneNumbers", "EthnicGroup", "PatientComments", "InstitutionName",
           "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName",
           "OperatorsName", "StudyDescription", "SeriesDescription", "AccessionNumber",
           "StudyID", "ImageComments", "ProtocolName", "StationName", "BodyPartExamined",
           "Manufacturer", "ManufacturerModelName", "DeviceSerialNumber",
           "AdmittingDiagnosesDescription", "MedicalRecordLocator", "Occupation"]
_DATES = ["PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"]


def secondary_capture(pixels: npt.NDArray[np.generic], photometric: str, *,
                      signed: bool = False, rescale: tuple[float, float] | None = None,
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
    return _encoded(dataset)


def radiograph(side: int, *, bits: int = 16, compression: str | None = None) -> bytes:
    """A ``side`` x ``side`` grayscale image with smooth content (a checkerboard of 500-pixel
    squares, brightening down the rows), compressed with ``compression`` if given."""
    rows = np.arange(side, dtype=np.uint32)
    pixels = ((rows[:, None] // 500 + rows[None, :] // 500) % 2 * (900 if bits == 16 else 200)
              + rows[:, None] // 100).astype(np.uint16 if bits == 16 else np.uint8)
    data = secondary_capture(pixels, "MONOCHROME2")
    if compression is None:
        return data
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.compress(compression)
    return _encoded(dataset)


def deflate_bomb(inflated_mib: int) -> bytes:
    """A small image in the Deflated Explicit VR Little Endian transfer syntax, trailed by a
    private element of ``inflated_mib`` MiB of zeros: a file of about a thousandth of that,
    which a reader that inflates it whole holds in full.

    The zeros are compressed as they are made, so building it costs little memory.
    """
    dataset = pydicom.dcmread(io.BytesIO(secondary_capture(
        np.zeros((64, 64), dtype=np.uint8), "MONOCHROME2")))
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = _encoded(dataset)
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    plain = _encoded(dataset)
    body = plain[_meta_end(plain):]
    size = inflated_mib * 2**20
    creator = struct.pack("<HH2sH", 0x7FE1, 0x0010, b"LO", 4) + b"PAD "
    padding = struct.pack("<HH2sHI", 0x7FE1, 0x1001, b"OB", 0, size)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = [compressor.compress(body + creator + padding)]
    zeros = bytes(2**20)
    stream += [compressor.compress(zeros) for _ in range(inflated_mib)]
    stream.append(compressor.flush())
    return deflated[:_meta_end(deflated)] + b"".join(stream)


def _meta_end(data: bytes) -> int:
    """Where a Part 10 file's meta group ends: its group length follows the preamble."""
    return 144 + int(struct.unpack("<I", data[140:144])[0])


def marked(data: bytes) -> bytes:
    """``data`` with a marker in every text attribute a hospital's files carry and in a
    private one, and an invalid date in every date attribute."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    for number, keyword in enumerate(_MARKED):
        dataset.add_new(keyword, pydicom.datadict.dictionary_VR(keyword),
                        f"{MARK}{number:02d}")
    for keyword in _DATES:
        setattr(dataset, keyword, BAD_DATE)
    block = dataset.private_block(0x0011, f"{MARK} CREATOR", create=True)
    block.add_new(0x01, "LO", f"{MARK}-private")
    return _encoded(dataset)


def _encoded(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
