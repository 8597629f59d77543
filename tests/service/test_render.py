"""Rendering heatmaps to PNG, overlay PNG, JSON and NPY."""

from __future__ import annotations

import io
import json

import matplotlib
import numpy as np
import pytest
from PIL import Image

from krypton import render

HEATMAP = np.array([[0.9, 0.5], [0.2, 0.7]], dtype=np.float32)


def test_view_values_drop_is_target_probability_minus_heatmap() -> None:
    np.testing.assert_allclose(render.view_values(HEATMAP, 0.95, "drop"), 0.95 - HEATMAP)


def test_view_values_probability_is_the_heatmap() -> None:
    np.testing.assert_array_equal(render.view_values(HEATMAP, 0.95, "probability"), HEATMAP)


def test_view_values_with_unknown_view_raises_value_error() -> None:
    with pytest.raises(ValueError, match="view"):
        render.view_values(HEATMAP, 0.95, "logits")  # type: ignore[arg-type]


def test_colorize_maps_minimum_and_maximum_to_colormap_ends() -> None:
    rgb = render.colorize(HEATMAP)
    cmap = matplotlib.colormaps[render.COLORMAP]
    low = (np.array(cmap(0.0)[:3]) * 255).round()
    high = (np.array(cmap(1.0)[:3]) * 255).round()
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[1, 0], low)
    np.testing.assert_array_equal(rgb[0, 0], high)


def test_colorize_of_constant_map_is_one_colour() -> None:
    rgb = render.colorize(np.full((3, 4), 0.4))
    assert len({tuple(pixel) for pixel in rgb.reshape(-1, 3)}) == 1


def test_heatmap_png_draws_each_cell_as_a_square() -> None:
    png = Image.open(io.BytesIO(render.heatmap_png(HEATMAP, cell_pixels=5)))
    assert png.format == "PNG" and png.size == (10, 10) and png.mode == "RGB"


def test_overlay_png_has_the_original_image_size() -> None:
    image = np.random.default_rng(0).random((120, 90, 3))
    geometry = render.HeatmapGeometry(patch_size=16, stride=8, input_height=224, input_width=224)
    values = np.random.default_rng(1).random((27, 27))
    png = Image.open(io.BytesIO(render.overlay_png(values, image, geometry)))
    assert png.size == (90, 120)


def test_resample_to_image_puts_a_hot_cell_under_its_patch_centre() -> None:
    values = np.zeros((27, 27))
    values[10, 20] = 1.0
    geometry = render.HeatmapGeometry(patch_size=16, stride=8, input_height=224, input_width=224)
    resampled = render.resample_to_image(values, geometry, 448, 448)
    row, col = np.unravel_index(np.argmax(resampled), resampled.shape)
    # Patch (10, 20) covers input rows 80..95 and columns 160..175: centre 87.5, 167.5.
    assert abs(row - 2 * 87.5) <= 2 and abs(col - 2 * 167.5) <= 2


def test_heatmap_npy_round_trips_as_float32() -> None:
    loaded = np.load(io.BytesIO(render.heatmap_npy(HEATMAP)))
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, HEATMAP)


def test_heatmap_json_holds_array_shape_range_and_metadata() -> None:
    document = json.loads(render.heatmap_json(HEATMAP, {"model": "resnet18"}))
    np.testing.assert_allclose(document["heatmap"], HEATMAP, atol=1e-6)
    assert document["shape"] == [2, 2]
    assert document["min"] == pytest.approx(0.2) and document["max"] == pytest.approx(0.9)
    assert document["model"] == "resnet18"


@pytest.mark.parametrize("side", [64, 128, 512])
def test_the_untrained_warning_band_fits_a_small_picture(side: int) -> None:
    image = np.full((side, side, 3), 0.5, dtype=np.float32)
    geometry = render.HeatmapGeometry(16, 16, side, side)
    values = np.random.default_rng(0).random(((side - 16) // 16 + 1,) * 2)
    picture = np.asarray(Image.open(io.BytesIO(render.overlay_png(
        values, image, geometry, untrained=True))).convert("RGB"))
    red = np.all(picture == (180, 0, 0), axis=2)
    band_rows = int(np.argmin(red[:, 0]))  # the band's height, read down its left edge
    assert 0 < band_rows <= max(14, side // 8)
    assert not red[band_rows:].any(), "the band is one strip across the top"
    # The text's last letter ends inside the picture: the band's right end is red again.
    assert red[band_rows // 2, -3:].all()
