"""A heatmap's DICOM results, made from the job's source image and its heatmap.

Three objects stand in the source's study, each in a new series:

* the Parametric Map: the heatmap's values on the source's pixel grid;
* the Secondary Capture: the colour overlay, which every viewer shows;
* the measurement report (SR, TID 1500): which algorithm said what (the
  predicted class and its probability), with which settings, referencing
  the source and the two images above. It is what IHE's AI Results profile
  asks of an imaging AI.

The HTTP routes make the first two on request; a worker makes all three to
store them in the PACS the image came from. Both go through here, so a PACS
and a caller get the same objects. Pure functions of their inputs; nothing
is logged, and no error quotes a header value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

from krypton import __version__, render
from krypton.core.plans import HeatmapPlan
from krypton.core.records import Prediction
from krypton.models import decode_image
from krypton.models.dicom import is_dicom, read_dicom
from krypton.models.windows import AppliedWindow
from krypton.render import dicom as dicom_render
from krypton.render.report import Algorithm, Finding, measurement_report
from krypton.run_stats import RunStats

__all__ = ["DicomSource", "Heatmap", "dicom_source", "heatmap_geometry", "overlay",
           "parametric_map", "report"]

FloatArray = npt.NDArray[np.floating]


@dataclass(frozen=True)
class DicomSource:
    """The header the results copy, repaired, and the attributes the repair left out."""

    header: Dataset
    dropped: list[str]


@dataclass(frozen=True)
class Heatmap:
    """A finished heatmap job, as its DICOM results need it."""

    plan: HeatmapPlan
    run: RunStats
    prediction: Prediction
    values: FloatArray
    """The heatmap in the view the results show (drop, or probability)."""
    view: render.View = "drop"
    random_weights: bool = False
    window: AppliedWindow | None = None

    @property
    def geometry(self) -> render.HeatmapGeometry:
        return heatmap_geometry(self.plan, self.run)


def heatmap_geometry(plan: HeatmapPlan, run: RunStats) -> render.HeatmapGeometry:
    """Where a heatmap's cells sit on the model input its run saw."""
    return render.HeatmapGeometry(plan.patch_size, plan.stride, *run.input_shape)


def dicom_source(image: bytes) -> DicomSource | str:
    """The header of a DICOM image the results copy; or why no DICOM result is made."""
    header = read_dicom(image, pixels=False)
    unmade = dicom_render.unmade_because(header)
    if unmade is not None:
        return unmade
    repaired, dropped = dicom_render.repaired(header)
    return DicomSource(repaired, dropped)


def parametric_map(source: DicomSource, heatmap: Heatmap) -> bytes:
    """The heatmap on the source's grid (coarser beyond 1024 pixels a side)."""
    rows, columns = dicom_render.map_grid(int(source.header.Rows),
                                          int(source.header.Columns))
    grid = render.resample_to_image(heatmap.values, heatmap.geometry, rows, columns)
    what = ("drop of p(class) with the patch" if heatmap.view == "drop"
            else "p(class) with the patch")
    return dicom_render.parametric_map(source.header, grid, label=heatmap.view.upper(),
                                       explanation=f"Occlusion: {what}")


def overlay(source: DicomSource, heatmap: Heatmap, image: bytes, *, max_side: int) -> bytes:
    """The colour overlay over ``image`` (the source, or its reduced copy), as a
    Secondary Capture at most ``max_side`` on its longer side."""
    pixels = decode_image(image, max_pixels=None, max_side=max_side,
                          frame=heatmap.plan.frame if is_dicom(image) else None,
                          window=heatmap.window.replay() if heatmap.window is not None
                          else None)
    rgb = render.overlay_rgb(heatmap.values, pixels, heatmap.geometry,
                             untrained=heatmap.random_weights)
    return dicom_render.secondary_capture(source.header, rgb)


def report(source: DicomSource, heatmap: Heatmap, results: list[bytes], *,
           weights: str) -> bytes:
    """The measurement report of ``heatmap``, referencing the source and ``results``
    (the encoded Parametric Map and Secondary Capture)."""
    prediction, plan = heatmap.prediction, heatmap.plan
    parameters: dict[str, str | int | float] = {
        "patch_size": plan.patch_size, "stride": plan.stride, "patch_color": plan.patch_color,
        "mode": plan.mode, "target_class": prediction.target_class, "view": heatmap.view}
    if plan.dataset is not None:
        parameters["dataset"] = plan.dataset
    if heatmap.random_weights:
        parameters["random_weights"] = "true (a demo model: not a diagnosis)"
    if plan.mode == "approximate":
        parameters |= {name: value for name, value in plan.approximation.knobs().items()
                       if value is not None}
    return measurement_report(
        source.header, [_read(result) for result in results],
        algorithm=Algorithm(name=plan.model, version=__version__, weights=weights),
        finding=Finding(label=prediction.predicted_label,
                        class_index=prediction.predicted_class,
                        probability=prediction.predicted_probability),
        parameters=parameters)


def _read(document: bytes) -> Dataset:
    return dcmread(DicomBytesIO(document))
