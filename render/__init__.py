"""What people open: a heatmap as PNG, overlay PNG, JSON or NPY. Pure functions.

DICOM output (a Parametric Map and a Secondary Capture in the source study)
is in :mod:`krypton.render.dicom`, imported where it is needed.

Used by the command line and by the service alike; knows nothing of how the
heatmap was computed. Heatmap cell ``(i, j)`` describes the patch whose
top-left corner is at model-input pixel ``(i * S, j * S)``.
"""

from krypton.render.arrays import (
    View,
    heatmap_json,
    heatmap_npy,
    read_npy,
    shrink,
    view_values,
)
from krypton.render.images import (
    COLORMAP,
    UNTRAINED_WARNING,
    HeatmapGeometry,
    colorize,
    heatmap_png,
    overlay_png,
    overlay_rgb,
    resample_to_image,
)

__all__ = [
    "COLORMAP",
    "UNTRAINED_WARNING",
    "HeatmapGeometry",
    "View",
    "colorize",
    "heatmap_json",
    "heatmap_npy",
    "heatmap_png",
    "overlay_png",
    "overlay_rgb",
    "read_npy",
    "resample_to_image",
    "shrink",
    "view_values",
]
