"""What the PACS tests share: a registry naming an Orthanc, UIDs, and study contents."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from tests.service import helpers

if TYPE_CHECKING:  # conftest imports this module
    from tests.pacs.conftest import Orthanc

PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def pacs_registry(folder: Path, orthanc: Orthanc, *, routes: str = "") -> Path:
    """The service tests' registry, with ``orthanc`` as PACS ``orthanc``, and ``routes``
    (``[[routes]]`` tables) for what a PACS sends."""
    registry = helpers.write_registry(folder, datasets_dir=folder / "datasets")
    with registry.open("a", encoding="utf-8") as file:
        file.write(f'\n[[pacs]]\nname = "orthanc"\nurl = "{orthanc.dicomweb_url}"\n\n{routes}')
    return registry


def uids(dataset: Dataset) -> dict[str, str]:
    """The instance's UIDs as a job by UIDs names them."""
    return {"study_instance_uid": dataset.StudyInstanceUID,
            "series_instance_uid": dataset.SeriesInstanceUID,
            "sop_instance_uid": dataset.SOPInstanceUID}


def in_study(orthanc: Orthanc, study: str) -> dict[str, str]:
    """SOP Instance UID -> SOP Class UID of every instance Orthanc has in ``study``."""
    found = orthanc.client().search_for_instances(study_instance_uid=study)
    return {item["00080018"]["Value"][0]: item["00080016"]["Value"][0] for item in found}

