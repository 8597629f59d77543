"""An explanation's result as a DICOM Structured Report, made with highdicom.

A Parametric Map and a Secondary Capture (:mod:`krypton.render.dicom`) show
*where* the model looked; nothing in them says *what* it concluded, which
model concluded it, or that the two belong together. A PACS, a worklist or
an AI-results viewer (IHE AI Results) reads that from a Structured Report:
:func:`measurement_report` writes one Comprehensive 3D SR holding a TID 1500
Measurement Report with one TID 1410 planar ROI measurement group, whose region
is the whole source image (the finding is the image's, not a part's):

* the finding, the predicted class, as the group's *Finding* (DCM 121071),
  coded in Krypton's local scheme ``99KRYPTON`` (code value: the class index,
  meaning: the label);
* the model's probability for it as a numeric measurement (DCM 122157
  "Probability", UCUM ``1``);
* the model as TID 4019 Algorithm Identification: its name, its version, its
  weights and the heatmap settings as Algorithm Parameters;
* the region (DCM 111030 "Image Region"): a closed POLYLINE along the source
  image's edges, in its pixel coordinates, referencing it (a viewer such as
  OHIF reads a group's image and its place from this region, and fails on a
  group without one);
* the Parametric Map and Secondary Capture as the group's visual explanation
  (DCM 130401, a row of TID 1410).

Every instance the tree references is listed, with its series and study, in
the evidence: the report stands in the source's study, beside its results,
in a series of its own. Pure function of its inputs: no patient data is
logged or kept, and no value appears in its errors.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from krypton import __version__
from krypton.render.dicom import IDENTITY, MANUFACTURER, TYPE_2

__all__ = ["CLASS_SCHEME", "REPORT_SERIES", "Algorithm", "Finding", "measurement_report"]

REPORT_SERIES = 9103
"""After the Parametric Map (9101) and the Secondary Capture (9102)."""
CLASS_SCHEME = "99KRYPTON"
"""Local coding scheme of the findings: code value the class index, meaning the label.

The index means something only with the model named beside it in the same group."""
_MODEL_NAME = "krypton occlusion"
_SERIES_DESCRIPTION = "Krypton occlusion report"
_DEVICE_UID = generate_uid(entropy_srcs=["Krypton occlusion explainer"])
"""Device Observer UID: the same in every report, as the device is the same."""
_MAX_MEANING = 64
"""Code Meaning is LO: 64 characters."""


@dataclass(frozen=True)
class Algorithm:
    """The model whose output the report states.

    ``weights`` identifies the checkpoint (``sha256:…``, ``seed:0``); it is written as
    the Algorithm Parameter ``weights=…``, a TEXT item with no length limit, so a long
    hash is kept whole and the Algorithm Version stays the version.
    """

    name: str
    version: str
    weights: str


@dataclass(frozen=True)
class Finding:
    """The predicted class and the model's probability for it (0 to 1)."""

    label: str
    class_index: int
    probability: float


def measurement_report(source: Dataset, results: Sequence[Dataset], *, algorithm: Algorithm,
                       finding: Finding, parameters: Mapping[str, str | int | float]) -> bytes:
    """Encoded SR (Part 10 bytes) in the source's study, new series, referencing the
    source image and each of ``results`` (the Parametric Map and Secondary Capture
    datasets, already built).

    ``source`` is a header that has been through :func:`krypton.render.dicom.repaired`;
    patient and study attributes it lacks are written empty. ``parameters`` (patch size,
    stride, mode, target class, tuned setting) become Algorithm Parameters ``key=value``,
    after ``weights=…``.

    All of ``source`` and ``results`` are the SR's evidence: highdicom lists every one
    of them, whether or not the tree references it, in the Current Requested Procedure
    Evidence Sequence when it is in the report's study (results made here are) and in
    the Pertinent Other Evidence Sequence otherwise, and it refuses a tree that
    references an instance missing from the evidence. The tree references each of them
    too, so a reader of the content alone finds the heatmap: the source as the image of
    the group's region (:func:`_whole_image`), the results as its *Visual explanation*
    images, a row of TID 1410 that highdicom's constructor does not take, so it is
    appended to the group's content.

    Raises ``ValueError`` (naming no value) for a probability outside 0..1, a negative
    class index, an empty label or algorithm name, a source without Rows and Columns,
    or an input without the UIDs that place it in a study.
    """
    _check(source, results, algorithm, finding)
    header = _study_header(source)
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier="Krypton occlusion explanation"),
        referenced_region=_whole_image(header),
        finding_type=_class_code(finding),
        # No Algorithm Family (optional): highdicom reads any coded child of the group
        # but the finding as a qualitative evaluation, and would report that one too.
        algorithm_id=hd.sr.AlgorithmIdentification(
            name=algorithm.name, version=algorithm.version,
            parameters=[f"weights={algorithm.weights}",
                        *(f"{key}={value}" for key, value in parameters.items())]),
        measurements=[hd.sr.Measurement(
            name=codes.DCM.Probability, value=float(finding.probability),
            unit=codes.UCUM.NoUnits)],
    )
    group[0].ContentSequence.extend(_explanation(result) for result in results)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device,
                observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                    uid=_DEVICE_UID, name=MANUFACTURER, manufacturer_name=MANUFACTURER,
                    model_name=_MODEL_NAME))),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=[group],
    )
    document = hd.sr.Comprehensive3DSR(
        evidence=[header, *results], content=report[0], series_instance_uid=generate_uid(),
        series_number=REPORT_SERIES, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,  # everything this explanation found is in it
        is_final=False,  # a model's output that no person has reviewed
        series_description=_SERIES_DESCRIPTION, manufacturer_model_name=_MODEL_NAME,
        software_versions=__version__,
        coding_schemes=[CodingSchemeIdentificationItem(
            designator=CLASS_SCHEME, name="Krypton model class indices",
            responsible_organization=MANUFACTURER)],
    )
    buffer = io.BytesIO()
    document.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _check(source: Dataset, results: Sequence[Dataset], algorithm: Algorithm,
           finding: Finding) -> None:
    """Refuse what would make an invalid or misleading report, before highdicom does
    with a message that may quote the value."""
    if not (isinstance(finding.probability, int | float)
            and math.isfinite(finding.probability) and 0 <= finding.probability <= 1):
        raise ValueError("the finding's probability must be a number from 0 to 1")
    if isinstance(finding.class_index, bool) or finding.class_index < 0:
        raise ValueError("the finding's class index must be a non-negative integer")
    if not finding.label.strip():
        raise ValueError("the finding needs a label")
    if not algorithm.name.strip() or not algorithm.version.strip():
        raise ValueError("the algorithm needs a name and a version")
    if not (source.get("Rows") and source.get("Columns")):
        raise ValueError("the source lacks Rows or Columns, which the report's region needs")
    for role, dataset in [("source", source), *(("result", result) for result in results)]:
        missing = [name for name in IDENTITY if not dataset.get(name)]
        if missing:
            raise ValueError(f"the {role} lacks {', '.join(missing)}, which the report "
                             "needs to reference it")


def _study_header(source: Dataset) -> Dataset:
    """The source's header, without pixel data, with the patient and study attributes
    highdicom copies present (empty where the source lacks them)."""
    header = Dataset()
    header.update({element.tag: element for element in source if element.tag != 0x7FE00010})
    for name in TYPE_2:
        if name not in header:
            setattr(header, name, "")
    return header


def _whole_image(header: Dataset) -> hd.sr.ImageRegion:
    """The source image's outline as a region of it: a closed POLYLINE along its edges.

    SCOORD coordinates are (column, row) with sub-pixel resolution: 0,0 is the top left
    corner of the top left pixel, Columns,Rows the bottom right corner of the bottom
    right one (PS3.3 C.18.6, SCOORD Graphic Data), so these corners enclose every
    pixel. A source has one frame; one of a multi-frame IOD (an enhanced CT) is
    referenced as frame 1, as a region lies in a frame."""
    rows, columns = float(header.Rows), float(header.Columns)
    corners = [(0.0, 0.0), (columns, 0.0), (columns, rows), (0.0, rows), (0.0, 0.0)]
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array(corners),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=header.SOPClassUID,
            referenced_sop_instance_uid=header.SOPInstanceUID,
            referenced_frame_numbers=[1] if "NumberOfFrames" in header else None))


def _class_code(finding: Finding) -> hd.sr.CodedConcept:
    """The predicted class as a code of :data:`CLASS_SCHEME`, its meaning cut to fit LO."""
    return hd.sr.CodedConcept(value=str(finding.class_index), scheme_designator=CLASS_SCHEME,
                              meaning=finding.label.strip()[:_MAX_MEANING].rstrip())


def _explanation(result: Dataset) -> hd.sr.ImageContentItem:
    """A reference to a result image as the group's visual explanation (the whole of it:
    no frame numbers, as each result has one frame)."""
    return hd.sr.ImageContentItem(
        name=codes.DCM.VisualExplanation, referenced_sop_class_uid=result.SOPClassUID,
        referenced_sop_instance_uid=result.SOPInstanceUID,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
