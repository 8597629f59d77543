"""The explanation's Structured Report, read back as a PACS or an AI-results viewer would."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom.sr.utils import find_content_items
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import Comprehensive3DSRStorage, generate_uid

from krypton.render import dicom
from krypton.render.report import Algorithm, Finding, measurement_report
from tests import dicom_files as files

ALGORITHM = Algorithm(name="resnet18-demo", version="0.1.0", weights="sha256:" + "ab12" * 16)
FINDING = Finding(label="diabetic retinopathy", class_index=3, probability=0.8125)
PARAMETERS: dict[str, str | int | float] = {
    "patch_size": 16, "stride": 4, "mode": "exact", "target_class": 3, "setting": "balanced"}


@dataclass(frozen=True)
class Made:
    """A source header, its two results, and the report over them as read back."""

    source: Dataset
    results: list[Dataset]
    report: Dataset


def _source(name: str) -> Dataset:
    data = (files.shipped(name) if name.endswith(".dcm")
            else files.build(files.example_pixels(), "RGB"))
    header, _ = dicom.repaired(pydicom.dcmread(io.BytesIO(data)))
    return header


def _made(source: Dataset, *, finding: Finding = FINDING) -> Made:
    rows, columns = int(source.Rows), int(source.Columns)
    grid = dicom.map_grid(rows, columns)
    values = np.linspace(0, 1, grid[0] * grid[1], dtype=np.float32).reshape(grid)
    parametric = dicom.parametric_map(source, values, label="probability",
                                      explanation="class probability, occluded")
    capture = dicom.secondary_capture(source, np.zeros((rows, columns, 3), np.uint8))
    results: list[Dataset] = [pydicom.dcmread(io.BytesIO(data)) for data in (parametric, capture)]
    report = measurement_report(source, results, algorithm=ALGORITHM, finding=finding,
                                parameters=PARAMETERS)
    return Made(source, results, pydicom.dcmread(io.BytesIO(report)))


@pytest.fixture(scope="module", params=["CT_small.dcm", "secondary capture"])
def made(request: pytest.FixtureRequest) -> Made:
    """A CT with a patient coordinate system, and a photograph-like Secondary Capture
    without one (no Frame of Reference)."""
    return _made(_source(request.param))


def _group(report: Dataset) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    document = hd.sr.Comprehensive3DSR.from_dataset(report)
    content = document.content
    assert isinstance(content, hd.sr.MeasurementReport)
    [group] = content.get_planar_roi_measurement_groups()
    return group


def _texts(group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations,
           name: Code) -> list[str]:
    return [str(item.value) for item in find_content_items(group[0], name=name)]


def _encoded(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_report_is_a_comprehensive_3d_sr_holding_a_tid_1500_measurement_report(
        made: Made) -> None:
    report = made.report
    assert report.SOPClassUID == Comprehensive3DSRStorage and report.Modality == "SR"
    assert report.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    content = hd.sr.Comprehensive3DSR.from_dataset(report).content
    assert isinstance(content, hd.sr.MeasurementReport)
    [observer] = content.get_observer_contexts(observer_type=codes.DCM.Device)
    assert [item.value for item in observer
            if item.name == codes.DCM.DeviceObserverName] == ["Krypton"]
    procedures = find_content_items(content[0], name=codes.DCM.ProcedureReported)
    assert [item.value for item in procedures] == [codes.SCT.ImagingProcedure]
    assert len(content.get_planar_roi_measurement_groups()) == 1
    assert content.get_image_measurement_groups() == []
    [group] = find_content_items(content[0], name=codes.DCM.ImagingMeasurements)
    [template] = group.ContentSequence[0].ContentTemplateSequence  # the measurement group
    assert template.TemplateIdentifier == "1410"


def test_report_names_the_algorithm_its_version_and_weights(made: Made) -> None:
    group = _group(made.report)
    assert _texts(group, codes.DCM.AlgorithmName) == [ALGORITHM.name]
    assert _texts(group, codes.DCM.AlgorithmVersion) == [ALGORITHM.version]
    parameters = _texts(group, codes.DCM.AlgorithmParameters)
    assert parameters[0] == f"weights={ALGORITHM.weights}"


def test_report_states_the_heatmap_settings_as_algorithm_parameters(made: Made) -> None:
    parameters = _texts(_group(made.report), codes.DCM.AlgorithmParameters)
    assert parameters[1:] == ["patch_size=16", "stride=4", "mode=exact", "target_class=3",
                              "setting=balanced"]


def test_report_states_the_finding_and_its_probability(made: Made) -> None:
    group = _group(made.report)
    finding = group.finding_type
    assert finding is not None
    assert (finding.value, finding.scheme_designator, finding.meaning) == (
        "3", "99KRYPTON", "diabetic retinopathy")
    [probability] = group.get_measurements(name=codes.DCM.Probability)
    assert probability.value == pytest.approx(FINDING.probability)
    assert probability.unit == codes.UCUM.NoUnits


def test_report_describes_its_local_coding_scheme(made: Made) -> None:
    [scheme] = made.report.CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == "99KRYPTON" and scheme.CodingSchemeName


def test_a_label_longer_than_a_code_meaning_is_cut_to_64_characters() -> None:
    label = "moderate non-proliferative diabetic retinopathy with macular oedema, left eye"
    made = _made(_source("CT_small.dcm"), finding=Finding(label, 7, 0.5))
    finding = _group(made.report).finding_type
    assert finding is not None
    assert len(label) > 64 and finding.meaning == label[:64].rstrip()


def test_report_references_the_source_and_both_results(made: Made) -> None:
    parametric, capture = made.results
    instances = {(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID)
                 for ds in (made.source, parametric, capture)}
    document = hd.sr.Comprehensive3DSR.from_dataset(made.report)
    assert set(document.get_evidence(current_procedure_only=True)) == instances
    group = _group(made.report)
    region = group.roi
    assert region is not None
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        made.source.SOPInstanceUID)
    explanations = find_content_items(group[0], name=codes.DCM.VisualExplanation)
    assert {(item.referenced_sop_class_uid, item.referenced_sop_instance_uid)
            for item in explanations} == {
        (ds.SOPClassUID, ds.SOPInstanceUID) for ds in (parametric, capture)}


def test_the_group_s_region_outlines_the_whole_source_image(made: Made) -> None:
    region = _group(made.report).roi
    assert isinstance(region, hd.sr.ImageRegion)
    assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    rows, columns = int(made.source.Rows), int(made.source.Columns)
    # Pixel edges, not centres: 0,0 is the top left pixel's top left corner.
    assert region.value.tolist() == [[0, 0], [columns, 0], [columns, rows], [0, rows], [0, 0]]
    [image] = region.ContentSequence
    [reference] = image.ReferencedSOPSequence
    assert (reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID) == (
        made.source.SOPClassUID, made.source.SOPInstanceUID)
    assert "ReferencedFrameNumber" not in reference  # single-frame sources


def test_report_stands_in_the_source_study_in_a_new_series(made: Made) -> None:
    report, source = made.report, made.source
    assert report.StudyInstanceUID == source.StudyInstanceUID
    assert (report.PatientID, str(report.PatientName)) == (
        source.PatientID, str(source.PatientName))
    taken = {ds.SeriesInstanceUID for ds in (source, *made.results)}
    assert report.SeriesInstanceUID not in taken
    assert report.SOPInstanceUID not in {ds.SOPInstanceUID for ds in (source, *made.results)}
    assert (report.SeriesNumber, report.SeriesDescription, report.Manufacturer) == (
        9103, "Krypton occlusion report", "Krypton")


def test_each_report_has_uids_of_its_own() -> None:
    source = _source("CT_small.dcm")
    first, second = _made(source).report, _made(source).report
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.SeriesInstanceUID != second.SeriesInstanceUID


def test_report_passes_dciodvfy(made: Made, tmp_path: Path) -> None:
    path = tmp_path / "report.dcm"
    path.write_bytes(_encoded(made.report))
    assert files.dciodvfy_errors(path) == []


def test_a_source_without_patient_and_study_details_gets_a_valid_report(
        tmp_path: Path) -> None:
    source = _source("secondary capture")
    absent = ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
              "ReferringPhysicianName", "AccessionNumber", "StudyID")
    for name in absent:
        if name in source:
            delattr(source, name)
    assert "FrameOfReferenceUID" not in source
    made = _made(source)
    assert all(made.report.get(name, None) == "" for name in absent)
    path = tmp_path / "report.dcm"
    path.write_bytes(_encoded(made.report))
    assert files.dciodvfy_errors(path) == []


@pytest.mark.parametrize("probability", [-0.1, 1.5, float("nan")])
def test_a_probability_outside_0_to_1_is_refused(probability: float) -> None:
    with pytest.raises(ValueError, match="probability"):
        _made(_source("CT_small.dcm"), finding=Finding("x", 0, probability))


def test_a_source_without_a_pixel_grid_is_refused() -> None:
    source = _source("CT_small.dcm")
    del source.Rows
    with pytest.raises(ValueError, match="Rows or Columns"):
        measurement_report(source, [], algorithm=ALGORITHM, finding=FINDING,
                           parameters=PARAMETERS)


def test_the_region_over_a_one_frame_image_of_a_multi_frame_iod_names_its_frame() -> None:
    ct = pydicom.dcmread(io.BytesIO(files.shipped("CT_small.dcm")))
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        [ct], series_instance_uid=generate_uid(), series_number=5,
        sop_instance_uid=generate_uid(), instance_number=1)
    source, _ = dicom.repaired(pydicom.dcmread(io.BytesIO(_encoded(enhanced))))
    report = measurement_report(source, [], algorithm=ALGORITHM, finding=FINDING,
                                parameters=PARAMETERS)
    region = _group(pydicom.dcmread(io.BytesIO(report))).roi
    assert region is not None
    [reference] = region.ContentSequence[0].ReferencedSOPSequence
    assert (reference.ReferencedSOPInstanceUID, reference.ReferencedFrameNumber) == (
        source.SOPInstanceUID, 1)
