"""Region arithmetic, checked against what PyTorch operators really do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from krypton.engine.regions import (
    Axis,
    changed_output,
    grid_positions,
    output_size,
    read_context,
    union,
    widths,
    window_starts,
)

GEOMETRIES = [  # kernel, stride, padding, dilation, input size
    pytest.param(3, 1, 1, 1, 20, id="3x3-s1-p1"),
    pytest.param(3, 2, 1, 1, 21, id="3x3-s2-p1"),
    pytest.param(7, 2, 3, 1, 32, id="7x7-s2-p3"),
    pytest.param(1, 2, 0, 1, 15, id="1x1-s2"),
    pytest.param(2, 2, 0, 1, 16, id="2x2-s2-pool"),
    pytest.param(5, 3, 2, 1, 29, id="5x5-s3-p2"),
    pytest.param(3, 1, 2, 2, 18, id="3x3-dilated"),
]


def _changed_by_torch(kernel: int, stride: int, padding: int, dilation: int, size: int,
                      lo: int, hi: int) -> set[int]:
    """Output cells of a positive 1-D conv that move when input cells [lo, hi) move."""
    weight = torch.rand(1, 1, kernel, dtype=torch.float64) + 0.1
    x = torch.rand(1, 1, size, dtype=torch.float64)
    y = x.clone()
    y[..., lo:hi] += 1.0
    a = F.conv1d(x, weight, stride=stride, padding=padding, dilation=dilation)
    b = F.conv1d(y, weight, stride=stride, padding=padding, dilation=dilation)
    return set(torch.nonzero((a != b)[0, 0]).flatten().tolist())


@pytest.mark.parametrize(("kernel", "stride", "padding", "dilation", "size"), GEOMETRIES)
def test_output_size_matches_torch_conv(kernel: int, stride: int, padding: int, dilation: int,
                                        size: int) -> None:
    x = torch.zeros(1, 1, size)
    out = F.conv1d(x, torch.zeros(1, 1, kernel), stride=stride, padding=padding, dilation=dilation)
    assert output_size(size, kernel, stride, padding, dilation) == out.shape[-1]


@pytest.mark.parametrize("size", [7, 8, 9, 10, 13])
@pytest.mark.parametrize(("kernel", "stride", "padding"), [(3, 2, 0), (3, 2, 1), (2, 2, 0)])
def test_output_size_with_ceil_mode_matches_torch_max_pool(size: int, kernel: int, stride: int,
                                                           padding: int) -> None:
    x = torch.zeros(1, 1, size, size)
    out = F.max_pool2d(x, kernel, stride, padding, ceil_mode=True)
    assert output_size(size, kernel, stride, padding, ceil_mode=True) == out.shape[-1]


@pytest.mark.parametrize(("kernel", "stride", "padding", "dilation", "size"), GEOMETRIES)
def test_changed_output_is_exactly_the_cells_that_change(kernel: int, stride: int, padding: int,
                                                         dilation: int, size: int) -> None:
    out = output_size(size, kernel, stride, padding, dilation)
    axis = Axis(kernel, stride, padding, dilation, size, out)
    for lo in range(size):
        for hi in range(lo + 1, min(size, lo + 6) + 1):
            (out_lo,), (out_hi,) = changed_output(np.array([[lo], [hi]]), axis)
            predicted = set(range(out_lo, out_hi))
            actual = _changed_by_torch(kernel, stride, padding, dilation, size, lo, hi)
            if dilation == 1:
                assert predicted == actual, (lo, hi)
            else:  # holes in a dilated kernel may skip a cell: the region is a cover
                assert actual <= predicted, (lo, hi)


def test_changed_output_of_strided_1x1_conv_skipping_the_row_is_empty() -> None:
    axis = Axis(kernel=1, stride=2, padding=0, dilation=1, size_in=10, size_out=5)
    changed = changed_output(np.array([[3], [4]]), axis)
    assert widths(changed).tolist() == [0]


def test_changed_output_of_empty_interval_stays_empty() -> None:
    axis = Axis(kernel=3, stride=1, padding=1, dilation=1, size_in=10, size_out=10)
    empty = changed_output(np.array([[3], [4]]), Axis(1, 2, 0, 1, 10, 5))
    assert widths(changed_output(empty, axis)).tolist() == [0]


def test_union_ignores_empty_intervals() -> None:
    empty = changed_output(np.array([[3], [4]]), Axis(1, 2, 0, 1, 10, 5))
    merged = union(np.array([[2], [5]]), empty, np.array([[4], [7]]))
    assert merged[:, 0].tolist() == [2, 7]


@pytest.mark.parametrize("width", [1, 3, 10])
def test_window_starts_keep_window_inside_map_and_over_the_change(width: int) -> None:
    size = 10
    lo = np.arange(0, size - 1)
    hi = np.minimum(lo + np.minimum(width, 2), size)
    starts = window_starts(np.stack([lo, hi]), width, size)
    assert (starts >= 0).all() and (starts + width <= size).all()
    assert (starts <= lo).all() and (starts + width >= hi).all()


def test_window_starts_reject_window_wider_than_map() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        window_starts(np.array([[0], [1]]), 11, 10)


def test_read_context_covers_exactly_the_inputs_of_the_window() -> None:
    axis = Axis(kernel=3, stride=2, padding=1, dilation=1, size_in=21, size_out=11)
    starts, width = read_context(np.array([0, 4]), 3, axis)
    # Output cells 4..6 read input cells 7..13; cell 0 reads from padding at -1.
    assert starts.tolist() == [-1, 7]
    assert width == 7


def test_grid_positions_stop_where_the_patch_no_longer_fits() -> None:
    assert grid_positions(10, 4, 3).tolist() == [0, 3, 6]
    assert grid_positions(10, 10, 3).tolist() == [0]
