"""Heatmap quality measures: the pointing game."""

from __future__ import annotations

import numpy as np
import pytest

from krypton.engine import InvalidParamsError, points_at

PATCH, STRIDE = 16, 4


def _heatmap_with_minimum_at(row: int, column: int) -> np.ndarray:
    heatmap = np.full((10, 10), 0.9, dtype=np.float32)
    heatmap[row, column] = 0.1  # the largest probability drop
    return heatmap


def test_the_strongest_position_on_the_box_is_a_hit() -> None:
    # Position (5, 5) covers pixels 20..35; its centre 27.5 lies in rows/columns 20..39.
    assert points_at(_heatmap_with_minimum_at(5, 5), (20, 20, 40, 40), PATCH, STRIDE)


def test_a_strongest_position_off_the_box_is_a_miss() -> None:
    assert not points_at(_heatmap_with_minimum_at(0, 0), (20, 20, 40, 40), PATCH, STRIDE)


def test_the_tolerance_grows_the_box_on_every_side() -> None:
    heatmap = _heatmap_with_minimum_at(1, 1)  # centre 11.5
    box = (15, 15, 40, 40)
    assert not points_at(heatmap, box, PATCH, STRIDE)
    assert points_at(heatmap, box, PATCH, STRIDE, tolerance=4)


def test_only_the_lowest_probability_counts_not_the_highest() -> None:
    heatmap = _heatmap_with_minimum_at(0, 0)
    heatmap[5, 5] = 1.0
    assert not points_at(heatmap, (20, 20, 40, 40), PATCH, STRIDE)


def test_an_empty_box_raises() -> None:
    with pytest.raises(InvalidParamsError, match="empty"):
        points_at(_heatmap_with_minimum_at(0, 0), (5, 5, 5, 9), PATCH, STRIDE)
