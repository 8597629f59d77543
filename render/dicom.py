"""Heatmaps as DICOM in the source image's study, made with highdicom.

* :func:`parametric_map`: the heatmap's float values on the source image's
  pixel grid (Parametric Map Storage): a PACS viewer windows it and blends it
  over the image it references.
* :func:`secondary_capture`: the colour overlay as a picture (Secondary
  Capture Image Storage), which every viewer displays.

Both keep the source's patient and study (same Study Instance UID), start a
new series with new UIDs, and reference the source SOP instance. A source
header attribute whose value breaks its value representation (a birth date
of 1999-13-45) is not copied: :func:`repaired` drops it (a patient or study
attribute the standard requires is left empty) and names what it dropped,
so the results stay valid DICOM. Pure functions of their inputs: no patient
data is logged or kept, and no value appears in their errors.
"""

from __future__ import annotations

import io
import math
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from highdicom.utils import is_multiframe_image  # type: ignore[attr-defined]  # not in its __all__
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import validate_value

from krypton import __version__

__all__ = ["IDENTITY", "MANUFACTURER", "MAX_MAP_SIDE", "PARAMETRIC_MAP_SERIES",
           "SECONDARY_CAPTURE_SERIES", "TYPE_2", "map_grid", "parametric_map", "repaired",
           "secondary_capture", "unmade_because"]

MAX_MAP_SIDE = 1024
"""Longest side of a Parametric Map: a heatmap has a few hundred cells at most, so a
finer grid over a large image adds bytes (4 per pixel), not information."""
PARAMETRIC_MAP_SERIES = 9101
SECONDARY_CAPTURE_SERIES = 9102
MANUFACTURER = "Krypton"
"""What Krypton's results say made them: how a PACS rule (and Krypton) tells them apart."""
TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
          "StudyTime", "ReferringPhysicianName", "AccessionNumber", "StudyID")
"""Attributes highdicom copies from the source; the standard lets them be empty."""
_AXES = (("L", "R"), ("P", "A"), ("H", "F"))
_LETTERS = frozenset("LRPAHF")
IDENTITY = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
"""What a source must name for a result to stand in its study and reference it."""
_FUNCTIONAL_GROUPS = {"SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"}
_ENUMERATED = {"PatientSex": frozenset(sex.value for sex in hd.PatientSexValues)}
"""Attributes highdicom writes into the results' modules only with one of these values."""
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST",
                         "TM", "UC", "UI", "UR", "UT"})


def repaired(source: Dataset) -> tuple[Dataset, list[str]]:
    """A copy of the source header without the attributes whose values are invalid, and
    their keywords (never their values: they may be the patient's).

    Such an attribute is removed, or left empty where the standard requires it
    present (the patient and study attributes results copy); pixel data is not
    copied.
    """
    header = Dataset()
    header.file_meta = source.file_meta
    dropped = []
    for element in source:
        if element.tag == 0x7FE00010:
            continue
        if _valid(element.VR, element.value) and _allowed(element.keyword, element.value):
            header.add(element)
            continue
        dropped.append(element.keyword or str(element.tag))
        if element.keyword in TYPE_2:
            setattr(header, element.keyword, "")
    if header.get("PatientIdentityRemoved") == "YES" and not (
            header.get("DeidentificationMethod")
            or header.get("DeidentificationMethodCodeSequence")):
        # Saying so needs the method too (type 1C): without it the results fail their IOD.
        del header.PatientIdentityRemoved
        dropped.append("PatientIdentityRemoved")
    return header, dropped


def _allowed(keyword: str, value: object) -> bool:
    """Whether an attribute the results take into their own modules holds a value those
    modules allow (Patient's Sex: M, F or O; ``U`` is common in hospital files)."""
    allowed = _ENUMERATED.get(keyword)
    return allowed is None or value in ("", None) or value in allowed


def _valid(vr: str, value: object) -> bool:
    """Whether a top-level element's value fits its value representation."""
    if vr not in _STRING_VRS:
        return True
    values = value if isinstance(value, MultiValue | list | tuple) else [value]
    for item in values:
        if item is None or item == "":
            continue
        try:
            validate_value(vr, item if isinstance(item, str | bytes) else str(item),
                           pydicom_config.RAISE)
        except (ValueError, TypeError):
            return False
    return True


def unmade_because(source: Dataset) -> str | None:
    """Why no DICOM result is made over this source header; ``None`` when one is."""
    if int(source.get("NumberOfFrames") or 1) > 1:
        return ("it explains one frame of a multi-frame image, and DICOM results are made "
                "for single-frame images")
    missing = [name for name in IDENTITY if not source.get(name)]
    if missing:
        return (f"its source header lacks {', '.join(missing)}, which a DICOM result needs "
                "to stand in the source's study and reference it")
    if _multi_frame_iod(source) and not _FUNCTIONAL_GROUPS & set(source.dir()):
        return ("its source is of a multi-frame IOD without functional groups (such as RT "
                "Dose), which a Parametric Map cannot take its planes from")
    described = len(source.get("PerFrameFunctionalGroupsSequence") or [None])
    if described != 1:
        return (f"its source's functional groups describe {described} frames where it holds "
                "one")
    return None


def _multi_frame_iod(source: Dataset) -> bool:
    """Whether the source's IOD has frames (highdicom's reading, by its SOP class)."""
    try:
        return bool(is_multiframe_image(source))
    except (AttributeError, KeyError, ValueError):  # no SOP class, or one it does not know
        return False


def map_grid(rows: int, columns: int) -> tuple[int, int]:
    """The Parametric Map's grid for a source of ``rows x columns``: the source's own up
    to :data:`MAX_MAP_SIDE` a side, else the same field of view a whole factor coarser."""
    factor = max(1, math.ceil(max(rows, columns) / MAX_MAP_SIDE))
    return -(-rows // factor), -(-columns // factor)


def parametric_map(source: Dataset, values: npt.NDArray[np.floating], *, label: str,
                   explanation: str) -> bytes:
    """``values`` on the source's field of view as a Parametric Map, encoded.

    ``values`` has the source's rows and columns, or a coarser grid over the
    same field of view (:func:`map_grid`): then the map states its own pixel
    spacing and the position of its first pixel, so a viewer lays it over the
    source exactly. A source without a patient coordinate system (a
    photograph, a secondary capture) is given one for its pixel grid (a new
    frame of reference, axial, spacing from the source or 1 mm), as the
    Parametric Map IOD needs one.
    """
    reference = _completed(source)
    low, high = float(np.min(values)), float(np.max(values))
    width = max(high - low, 1e-6)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=label[:16], lut_explanation=explanation[:64], unit=codes.UCUM.NoUnits,
        value_range=(low, high), intercept=0, slope=1)
    frames = np.asarray(values, dtype=np.float32)
    if _multi_frame_iod(reference):  # an enhanced image: frames, here one
        frames = frames[None]
    document = hd.pm.ParametricMap(
        [reference], frames, generate_uid(),
        PARAMETRIC_MAP_SERIES, generate_uid(), 1, MANUFACTURER, "krypton occlusion",
        __version__, "none", contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping], content_label="OCCLUSION",
        content_description=explanation[:64],
        voi_lut_transformations=[hd.VOILUTTransformation(
            window_center=low + width / 2, window_width=width,
            voi_lut_function="LINEAR_EXACT"),  # probabilities: a window under 1 wide
        ], **_coarser_geometry(reference, values.shape[:2]))
    document.SeriesDescription = "Krypton occlusion heatmap"
    _state_laterality(document, source)
    return _encoded(document)


def _coarser_geometry(reference: Dataset, grid: tuple[int, ...]) -> dict[str, Any]:
    """highdicom's plane arguments for a map on ``grid`` over the reference's field of view;
    none when the grid is the reference's own."""
    rows, columns = int(reference.Rows), int(reference.Columns)
    if tuple(grid) == (rows, columns):
        return {}
    down, across = rows / grid[0], columns / grid[1]  # source pixels per map pixel
    spacing = [float(s) for s in reference.PixelSpacing]
    cosines = np.array([float(c) for c in reference.ImageOrientationPatient])
    first = np.array([float(p) for p in reference.ImagePositionPatient])
    # The map's first pixel centre: half a map pixel in from the source's first pixel edge.
    centre = (first + (across - 1) / 2 * spacing[1] * cosines[:3]
              + (down - 1) / 2 * spacing[0] * cosines[3:])
    return {
        "pixel_measures": hd.PixelMeasuresSequence(
            pixel_spacing=[spacing[0] * down, spacing[1] * across],
            slice_thickness=float(reference.SliceThickness)),
        "plane_orientation": hd.PlaneOrientationSequence(
            coordinate_system="PATIENT", image_orientation=[float(c) for c in cosines]),
        "plane_positions": [hd.PlanePositionSequence(
            coordinate_system="PATIENT", image_position=[float(p) for p in centre])],
    }


def secondary_capture(source: Dataset, rgb: npt.NDArray[np.uint8]) -> bytes:
    """The overlay picture (``(H, W, 3)`` uint8) as a Secondary Capture in the source study."""
    reference = _completed(source)
    orientation = _patient_orientation(source)
    document = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference, pixel_array=rgb, photometric_interpretation="RGB",
        bits_allocated=8, coordinate_system="PATIENT", series_instance_uid=generate_uid(),
        series_number=SECONDARY_CAPTURE_SERIES, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer=MANUFACTURER,
        patient_orientation=orientation or ("L", "P"))
    if orientation is None:
        # Unknown for a photograph: the standard allows it empty (type 2C).
        document.PatientOrientation = []
    document.SeriesDescription = "Krypton occlusion overlay"
    document.ReferencedImageSequence = [_reference_to(source)]
    _state_laterality(document, source)
    return _encoded(document)


def _state_laterality(document: Dataset, source: Dataset) -> None:
    """The source series' laterality, or empty: unknown (type 2C, the body part unsaid)."""
    document.Laterality = source.get("Laterality", "")


def _completed(source: Dataset) -> Dataset:
    """A copy of the source header with what highdicom reads filled in where missing."""
    reference = Dataset()
    reference.update({element.tag: element for element in source
                      if element.tag != 0x7FE00010})  # no pixel data
    reference.file_meta = source.file_meta
    for name in TYPE_2:
        if name not in reference:
            setattr(reference, name, "")
    geometry = ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient")
    if not all(name in reference for name in geometry):
        reference.FrameOfReferenceUID = generate_uid()
        reference.ImagePositionPatient = [0.0, 0.0, 0.0]
        reference.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    if "PixelSpacing" not in reference:
        spacing = source.get("ImagerPixelSpacing") or source.get("NominalScannedPixelSpacing")
        reference.PixelSpacing = list(spacing) if spacing else [1.0, 1.0]
    if "SliceThickness" not in reference or not reference.SliceThickness:
        reference.SliceThickness = 1.0
    return reference


def _patient_orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's row and column directions as patient letters, if it says them (an
    oblique direction, ``PF``, by its first letter: DICOM writes the main axis first)."""
    stated = source.get("PatientOrientation")
    if stated and len(stated) == 2 and all(str(value)[:1] in _LETTERS for value in stated):
        return str(stated[0])[0], str(stated[1])[0]
    cosines = source.get("ImageOrientationPatient")
    if not cosines or len(cosines) != 6:
        return None
    return _letter([float(c) for c in cosines[:3]]), _letter([float(c) for c in cosines[3:]])


def _letter(direction: list[float]) -> str:
    axis = int(np.argmax(np.abs(direction)))
    return _AXES[axis][0 if direction[axis] > 0 else 1]


def _reference_to(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def _encoded(document: Any) -> bytes:
    buffer = io.BytesIO()
    document.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
