"""Refinement by bisection, on maps whose every value is known in advance."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from krypton.engine.bisection import bisect_from_lattice, lattice_axis


def _run(truth: npt.NDArray[np.float64], step: int, tolerance: float, budget: int | None = None,
         reports: list[npt.NDArray[np.float64]] | None = None):  # type: ignore[no-untyped-def]
    """Bisect ``truth`` from its every ``step``-th value, counting what is measured."""
    asked: list[int] = []

    def measure(flat: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        asked.extend(flat.tolist())
        return truth.ravel()[flat]

    done = bisect_from_lattice(truth[::step, ::step], truth.shape, step, measure,
                               tolerance=tolerance,
                               budget=truth.size if budget is None else budget,
                               report=None if reports is None else reports.append)
    return done, asked


def _plane(rows: int, cols: int) -> npt.NDArray[np.float64]:
    y, x = np.mgrid[0:rows, 0:cols]
    return 0.9 - 0.01 * y - 0.02 * x


def test_the_lattice_axis_ends_on_the_last_index() -> None:
    assert lattice_axis(13, 4) == [0, 4, 8, 12]
    assert lattice_axis(14, 4) == [0, 4, 8, 12, 13]


def test_a_plane_is_checked_once_and_never_split_further() -> None:
    truth = _plane(17, 21)
    done, _ = _run(truth, 4, tolerance=0.05)
    np.testing.assert_allclose(done.heatmap, truth, atol=1e-12)
    assert done.rounds == 1, "every midpoint agrees with the interpolation"


def test_tolerance_zero_with_no_cap_measures_until_the_map_is_exact() -> None:
    truth = np.random.default_rng(0).random((19, 23))
    done, _ = _run(truth, 4, tolerance=0.0)
    np.testing.assert_array_equal(done.heatmap, truth)


def test_a_sharp_drop_is_refined_down_to_the_fine_grid_and_the_rest_is_not() -> None:
    truth = np.full((33, 33), 0.9)
    truth[14:21, 22:27] = 0.2  # a lesion over the lattice point (16, 24), with sharp edges
    done, asked = _run(truth, 8, tolerance=0.1)
    np.testing.assert_array_equal(done.heatmap[8:25, 16:33], truth[8:25, 16:33])
    assert len(asked) < truth.size / 4, "flat cells are left to interpolation"


def test_a_cell_is_checked_when_its_neighbour_measures_its_edge_wrong() -> None:
    truth = np.full((33, 33), 0.9)
    truth[16, 16] = 0.1  # a lattice point: the cell (16..24, 16..24) is checked
    truth[18:23, 23:28] = 0.3  # across its edge x = 24 into a cell whose corners are all 0.9
    done, _ = _run(truth, 8, tolerance=0.1)
    np.testing.assert_array_equal(done.heatmap[18:23, 23:28], truth[18:23, 23:28])


def test_a_lesion_no_lattice_point_touches_is_not_found() -> None:
    """What bisection cannot do: cells with equal corners are not checked."""
    truth = np.full((33, 33), 0.9)
    truth[14:19, 14:19] = 0.1  # on the lattice point (16, 16)
    truth[2:6, 2:6] = 0.1  # inside the cell (0..8, 0..8), whose corners are all 0.9
    done, _ = _run(truth, 8, tolerance=0.1)
    assert done.heatmap[2:6, 2:6].min() == pytest.approx(0.9)


def test_the_budget_caps_what_is_measured() -> None:
    truth = np.random.default_rng(1).random((33, 33))
    done, asked = _run(truth, 8, tolerance=0.0, budget=100)
    assert done.refined == len(asked) <= 100
    assert not np.array_equal(done.heatmap, truth)


def test_the_interpolation_and_each_round_are_reported_and_the_last_is_the_result() -> None:
    truth = np.random.default_rng(2).random((17, 17))
    reports: list[npt.NDArray[np.float64]] = []
    done, _ = _run(truth, 8, tolerance=0.0, reports=reports)
    assert done.rounds == 3, "cells of 8, 4 and 2 fine steps are split"
    assert len(reports) == 1 + done.rounds
    assert np.isclose(reports[0][4, 4], truth[[0, 0, 8, 8], [0, 8, 0, 8]].mean())
    np.testing.assert_array_equal(reports[-1], done.heatmap)


def test_a_map_one_row_high_is_bisected_along_its_row() -> None:
    truth = np.linspace(0.9, 0.1, 27)[None, :] ** 3
    done, _ = _run(truth, 4, tolerance=0.0)
    np.testing.assert_array_equal(done.heatmap, truth)


def test_the_lattice_is_closed_even_when_the_budget_is_smaller() -> None:
    truth = np.random.default_rng(3).random((27, 27))
    done, asked = _run(truth, 4, tolerance=0.0, budget=8)
    last = lattice_axis(27, 4)[-1]
    assert done.heatmap[last, 0] == truth[last, 0] and done.refined == len(asked) >= 8
    assert np.isfinite(done.heatmap).all() and done.heatmap.min() > 0


def test_a_map_flat_up_to_noise_is_not_refined() -> None:
    truth = 0.99 + 1e-4 * np.random.default_rng(4).random((33, 33))
    done, _ = _run(truth, 8, tolerance=0.1)
    assert done.rounds == 0
