"""Heatmaps as pictures: the colour-mapped map and the overlay on the image. Pure functions.

Heatmap cell ``(i, j)`` describes the patch whose top-left corner is at
model-input pixel ``(i * S, j * S)``; it is drawn at the patch centre. The
model input is the image resized to ``size x size``, so mapping back to the
original image is a scale per axis.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

__all__ = ["COLORMAP", "UNTRAINED_WARNING", "HeatmapGeometry", "colorize", "heatmap_png",
           "overlay_png", "overlay_rgb", "resample_to_image"]

COLORMAP = "inferno"
"""Perceptually uniform, readable in grayscale print, and colour-blind safe."""

FloatArray = npt.NDArray[np.floating[Any]]


@dataclass(frozen=True)
class HeatmapGeometry:
    """Where the heatmap's cells sit on the model input (input pixels)."""

    patch_size: int
    stride: int
    input_height: int
    input_width: int


def colorize(values: FloatArray, *, vmin: float | None = None,
             vmax: float | None = None) -> npt.NDArray[np.uint8]:
    """``(H, W, 3)`` uint8 RGB of ``values`` through :data:`COLORMAP`, min to max.

    Looks each value up in the colormap's own 256-entry table, as matplotlib
    does, without its float64 RGBA copy of the whole picture.
    """
    low = float(np.min(values)) if vmin is None else vmin
    high = float(np.max(values)) if vmax is None else vmax
    span = high - low
    scaled = ((np.asarray(values, dtype=np.float32) - low) / span if span > 0
              else np.zeros(np.shape(values), dtype=np.float32))
    index = np.minimum((np.clip(scaled, 0.0, 1.0) * _COLORS).astype(np.intp), _COLORS - 1)
    return _lookup_table()[index]


_COLORS = 256


@functools.cache
def _lookup_table() -> npt.NDArray[np.uint8]:
    rgba = matplotlib.colormaps[COLORMAP].resampled(_COLORS)(np.arange(_COLORS))
    table: npt.NDArray[np.uint8] = (rgba[:, :3] * 255).round().astype(np.uint8)
    return table


UNTRAINED_WARNING = "UNTRAINED MODEL (random weights): not a diagnosis"
"""Written on every picture of a model with random weights, and in its PNG metadata."""
SHORT_UNTRAINED_WARNING = "UNTRAINED MODEL"
"""What a picture too narrow for the whole warning carries instead."""


def heatmap_png(values: FloatArray, *, cell_pixels: int = 8, untrained: bool = False) -> bytes:
    """The colour-mapped heatmap, each cell drawn as a ``cell_pixels`` square.

    ``untrained`` marks the picture of a model with random weights, in the
    pixels and in a PNG text chunk, so that no copy of it passes for a finding.
    """
    rgb = colorize(values)
    rgb = np.repeat(np.repeat(rgb, cell_pixels, axis=0), cell_pixels, axis=1)
    return _png(rgb, untrained)


def overlay_png(values: FloatArray, image: FloatArray, geometry: HeatmapGeometry, *,
                alpha: float = 0.5, untrained: bool = False) -> bytes:
    """The heatmap blended over ``image`` (``(H, W, 3)`` in [0, 1]) at the image's size."""
    return _png(overlay_rgb(values, image, geometry, alpha=alpha), untrained)


def overlay_rgb(values: FloatArray, image: FloatArray, geometry: HeatmapGeometry, *,
                alpha: float = 0.5, untrained: bool = False) -> npt.NDArray[np.uint8]:
    """The overlay's pixels, ``(H, W, 3)`` uint8, with the untrained-model band if asked."""
    height, width = image.shape[:2]
    colours = colorize(resample_to_image(values, geometry, height, width))
    blended = np.clip(image[..., :3], 0.0, 1.0, dtype=np.float32) * ((1.0 - alpha) * 255.0)
    blended += colours * np.float32(alpha)
    rgb: npt.NDArray[np.uint8] = blended.round().astype(np.uint8)
    if not untrained:
        return rgb
    picture = Image.fromarray(rgb)
    _banner(picture, UNTRAINED_WARNING)
    marked: npt.NDArray[np.uint8] = np.asarray(picture)
    return marked


def resample_to_image(values: FloatArray, geometry: HeatmapGeometry, height: int,
                      width: int) -> FloatArray:
    """Bilinear heatmap value at every pixel of an ``height x width`` image.

    A pixel's centre is mapped to model-input coordinates, then to fractional
    heatmap indices by the patch centres; past the outermost centres the edge
    value holds. Bilinear interpolation is separable: one small weight matrix
    per axis, so memory grows with the picture, not with the picture times
    the heatmap.
    """
    g = geometry
    centre = (g.patch_size - 1) / 2.0
    rows = ((np.arange(height) + 0.5) * g.input_height / height - 0.5 - centre) / g.stride
    cols = ((np.arange(width) + 0.5) * g.input_width / width - 0.5 - centre) / g.stride
    grid = np.asarray(values, dtype=np.float32)
    resampled: FloatArray = (_linear_weights(rows, grid.shape[0]) @ grid
                             @ _linear_weights(cols, grid.shape[1]).T)
    return resampled


def _linear_weights(positions: npt.NDArray[np.float64], cells: int) -> npt.NDArray[np.float32]:
    """``(len(positions), cells)`` weights of linear interpolation, edges held."""
    clamped = np.clip(positions, 0.0, cells - 1)
    low = np.floor(clamped).astype(np.intp)
    high = np.minimum(low + 1, cells - 1)
    fraction = (clamped - low).astype(np.float32)
    weights = np.zeros((len(positions), cells), dtype=np.float32)
    steps = np.arange(len(positions))
    np.add.at(weights, (steps, low), 1.0 - fraction)
    np.add.at(weights, (steps, high), fraction)
    return weights


def _png(rgb: npt.NDArray[np.uint8], untrained: bool = False) -> bytes:
    """PNG with Krypton's text chunks; an untrained model's gets the warning (and band)."""
    picture = Image.fromarray(rgb)
    metadata = PngInfo()
    metadata.add_text("Software", "Krypton occlusion heatmap")
    if untrained:
        metadata.add_text("Warning", UNTRAINED_WARNING)
        _banner(picture, UNTRAINED_WARNING)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=metadata)
    return buffer.getvalue()


def _banner(picture: Image.Image, text: str) -> None:
    """``text`` in white on a red band across the top of ``picture``; on a picture too
    narrow for it, its first words (the PNG's text keeps the whole warning)."""
    draw = ImageDraw.Draw(picture)
    size = max(8, picture.width // 40)
    font = ImageFont.load_default(size=size)
    if draw.textlength(text, font=font) > picture.width - 8:
        text = SHORT_UNTRAINED_WARNING
    while size > 4 and draw.textlength(text, font=font) > picture.width - 8:
        size -= 1
        font = ImageFont.load_default(size=size)
    *_, bottom = draw.textbbox((4, 2), text, font=font)
    draw.rectangle((0, 0, picture.width, bottom + 2), fill=(180, 0, 0))
    draw.text((4, 2), text, fill=(255, 255, 255), font=font)
