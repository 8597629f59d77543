"""Approximate inference: projective-field thresholding and adaptive drill-down."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from torch import nn

from krypton.engine import (
    Approximation,
    ApproximationError,
    DrillDown,
    IncrementalOcclusion,
    InvalidParamsError,
    ReferenceOcclusion,
    coarse_stride_for_speedup,
    heatmap_ssim,
    occlusion,
)
from krypton.engine.drilldown import interpolate_coarse, top_drop
from krypton.engine.patches import PatchGrid
from tests.engine.helpers import TOLERANCE, architecture, calibrate


@pytest.fixture(scope="module")
def resnet_case() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(3)
    image = torch.randn(3, 96, 96)
    return calibrate(architecture("resnet18"), image), image


def test_approximate_with_tau_one_and_no_drilldown_equals_exact(
    resnet_case: tuple[nn.Module, torch.Tensor],
) -> None:
    model, image = resnet_case
    exact = occlusion(model, image, 12, 6)
    approximate = occlusion(model, image, 12, 6, mode="approximate", tau=1.0)
    np.testing.assert_array_equal(approximate.heatmap, exact.heatmap)


def test_drilldown_with_ratio_one_equals_the_fine_map(
    resnet_case: tuple[nn.Module, torch.Tensor],
) -> None:
    model, image = resnet_case
    naive = occlusion(model, image, 12, 6, mode="naive")
    drilled = occlusion(model, image, 12, 6, mode="approximate", drilldown_ratio=1.0,
                        coarse_stride=18)
    np.testing.assert_allclose(drilled.heatmap, naive.heatmap, rtol=0, atol=TOLERANCE)


def test_drilldown_runs_coarse_positions_plus_the_chosen_fine_ones(
    resnet_case: tuple[nn.Module, torch.Tensor],
) -> None:
    model, image = resnet_case
    result = occlusion(model, image, 12, 6, mode="approximate", drilldown_ratio=0.25,
                       coarse_stride=18)
    fine, coarse = PatchGrid(96, 96, 12, 6), PatchGrid(96, 96, 12, 18)
    assert result.heatmap.shape == fine.shape
    assert result.stats.positions == coarse.size + int(np.ceil(0.25 * fine.size))
    assert result.stats.mode == "approximate"


def test_drilldown_keeps_exact_values_where_the_drop_is_largest(
    resnet_case: tuple[nn.Module, torch.Tensor],
) -> None:
    model, image = resnet_case
    exact = occlusion(model, image, 12, 6)
    drilled = occlusion(model, image, 12, 6, mode="approximate", drilldown_ratio=0.3,
                        coarse_stride=12)
    same = np.isclose(drilled.heatmap, exact.heatmap, atol=TOLERANCE)
    assert same.mean() >= 0.3
    # The most important cell of the exact map is found and computed exactly.
    assert same.flat[np.argmin(exact.heatmap)]


@pytest.mark.parametrize("tau", [0.7, 0.5, 0.4])
def test_smaller_tau_spends_fewer_flops(resnet_case: tuple[nn.Module, torch.Tensor],
                                        tau: float) -> None:
    model, image = resnet_case
    exact = occlusion(model, image, 12, 12)
    approximate = occlusion(model, image, 12, 12, mode="approximate", tau=tau)
    assert approximate.stats.flops_incremental is not None
    assert exact.stats.flops_incremental is not None
    assert approximate.stats.flops_incremental < exact.stats.flops_incremental
    assert approximate.stats.approximation == Approximation(tau)


def test_small_tau_changes_the_heatmap_but_keeps_its_structure(
    resnet_case: tuple[nn.Module, torch.Tensor],
) -> None:
    model, image = resnet_case
    exact = occlusion(model, image, 12, 6)
    approximate = occlusion(model, image, 12, 6, mode="approximate", tau=0.5)
    assert np.abs(approximate.heatmap - exact.heatmap).max() > TOLERANCE
    assert heatmap_ssim(approximate.heatmap, exact.heatmap) > 0.2


def test_tau_is_refused_by_the_naive_engine(tiny_cnn: nn.Module) -> None:
    with pytest.raises(InvalidParamsError, match="incremental"):
        ReferenceOcclusion(tiny_cnn).attribute(torch.randn(3, 16, 16), 4, 2, tau=0.5)


def test_approximation_knobs_need_approximate_mode(tiny_cnn: nn.Module) -> None:
    with pytest.raises(InvalidParamsError, match="approximate"):
        occlusion(tiny_cnn, torch.randn(3, 16, 16), 4, 2, tau=0.5)


def test_approximate_mode_without_knobs_is_refused_not_run_exactly(tiny_cnn: nn.Module) -> None:
    with pytest.raises(InvalidParamsError, match="needs tau"):
        occlusion(tiny_cnn, torch.randn(3, 16, 16), 4, 2, mode="approximate")


def test_drilldown_wrapper_equals_the_approximate_mode_of_occlusion(
    resnet_case: tuple[nn.Module, torch.Tensor],
) -> None:
    model, image = resnet_case
    wrapped = DrillDown(IncrementalOcclusion(model), Approximation(0.8, 0.2, 18))
    direct = wrapped.attribute(image, 12, 6)
    via_mode = occlusion(model, image, 12, 6, mode="approximate", tau=0.8,
                         drilldown_ratio=0.2, coarse_stride=18)
    np.testing.assert_array_equal(direct.heatmap, via_mode.heatmap)
    assert direct.stats.refined_positions == int(np.ceil(0.2 * PatchGrid(96, 96, 12, 6).size))


def test_drilldown_over_the_naive_engine_runs_without_tau(tiny_cnn: nn.Module) -> None:
    image = torch.randn(3, 20, 20)
    drilled = DrillDown(ReferenceOcclusion(tiny_cnn), Approximation(1.0, 1.0, 4))
    exact = occlusion(tiny_cnn, image, 4, 2)
    np.testing.assert_allclose(drilled.attribute(image, 4, 2).heatmap, exact.heatmap,
                               atol=TOLERANCE)


@pytest.mark.parametrize(("options", "message"), [
    pytest.param({"tau": 0.0}, "tau", id="tau-zero"),
    pytest.param({"tau": 1.5}, "tau", id="tau-above-one"),
    pytest.param({"drilldown_ratio": 0.1}, "both", id="ratio-without-stride"),
    pytest.param({"coarse_stride": 8}, "both", id="stride-without-ratio"),
    pytest.param({"drilldown_ratio": 0.0, "coarse_stride": 8}, "drilldown_ratio",
                 id="ratio-zero"),
    pytest.param({"drilldown_ratio": 0.1, "coarse_stride": 0}, "coarse_stride",
                 id="stride-zero"),
    pytest.param({"drilldown_tolerance": 0.1}, "drilldown_tolerance needs",
                 id="tolerance-without-drilldown"),
    pytest.param({"drilldown_ratio": 0.5, "coarse_stride": 8, "drilldown_tolerance": -0.1},
                 "drilldown_tolerance", id="negative-tolerance"),
])
def test_approximation_with_bad_setting_raises_approximation_error(
        options: dict[str, float], message: str) -> None:
    with pytest.raises(ApproximationError, match=message):
        Approximation(**options)  # type: ignore[arg-type]


def test_interpolate_coarse_at_the_same_stride_is_the_identity() -> None:
    grid = PatchGrid(40, 40, 8, 4)
    coarse = torch.rand(grid.shape)
    torch.testing.assert_close(interpolate_coarse(coarse, grid, grid), coarse)


def test_interpolate_coarse_reproduces_a_linear_ramp() -> None:
    coarse_grid, fine_grid = PatchGrid(64, 64, 4, 12), PatchGrid(64, 64, 4, 3)
    ramp = torch.as_tensor(coarse_grid.rows, dtype=torch.float32)[:, None].expand(
        coarse_grid.shape)
    estimate = interpolate_coarse(ramp, coarse_grid, fine_grid)
    expected = np.minimum(fine_grid.rows, coarse_grid.rows[-1]).astype(np.float32)
    np.testing.assert_allclose(estimate[:, 0].numpy(), expected, atol=1e-4)


def test_top_drop_picks_the_lowest_probabilities() -> None:
    estimate = torch.tensor([[0.9, 0.1, 0.8], [0.2, 0.95, 0.7]])
    assert top_drop(estimate, 0.3).tolist() == [1, 3]


def test_coarse_stride_for_speedup_follows_the_design_formula() -> None:
    # S1 = S2 * sqrt(t / (1 - r t)) = 4 * sqrt(5 / 0.5) = 4 * 3.16: the nearest multiple is 12
    assert coarse_stride_for_speedup(4, 0.1, 5.0) == 12


@pytest.mark.parametrize(("ratio", "speedup"), [(0.05, 2.0), (0.05, 8.0), (0.1, 5.0),
                                                 (0.2, 3.0), (0.05, 16.0)])
def test_coarse_strides_are_multiples_of_the_fine_stride(ratio: float, speedup: float) -> None:
    assert coarse_stride_for_speedup(4, ratio, speedup) % 4 == 0


def test_coarse_stride_for_unreachable_speedup_raises() -> None:
    with pytest.raises(InvalidParamsError, match="r\\*t"):
        coarse_stride_for_speedup(4, 0.5, 2.0)


def test_heatmap_ssim_is_scikit_image_ssim_with_the_exact_data_range() -> None:
    rng = np.random.default_rng(0)
    exact = rng.random((27, 27)).astype(np.float32)
    approximate = exact + rng.normal(0, 0.05, exact.shape).astype(np.float32)
    expected = structural_similarity(approximate.astype(np.float64), exact.astype(np.float64),
                                     data_range=float(exact.max() - exact.min()))
    assert heatmap_ssim(approximate, exact) == pytest.approx(expected)


def test_heatmap_ssim_of_identical_maps_is_one() -> None:
    exact = np.random.default_rng(1).random((9, 12))
    assert heatmap_ssim(exact, exact) == pytest.approx(1.0)


def test_heatmap_ssim_of_different_shapes_raises() -> None:
    with pytest.raises(InvalidParamsError, match="shape"):
        heatmap_ssim(np.zeros((5, 5)), np.zeros((5, 6)))


def test_engine_plans_each_grid_once_across_calls_with_the_same_settings(
    resnet_case: tuple[nn.Module, torch.Tensor],
) -> None:
    model, image = resnet_case
    engine = IncrementalOcclusion(model)
    first = engine.attribute(image, 12, 12, tau=0.7)
    second = engine.attribute(image, 12, 12, tau=0.7)
    assert engine.plan_cache == (1, 1)  # planned on the first run, reused on the second
    np.testing.assert_array_equal(first.heatmap, second.heatmap)


def test_engine_plans_anew_for_another_tau_or_grid(
    resnet_case: tuple[nn.Module, torch.Tensor],
) -> None:
    model, image = resnet_case
    engine = IncrementalOcclusion(model)
    engine.attribute(image, 12, 12, tau=0.7)
    engine.attribute(image, 12, 12, tau=0.5)
    engine.attribute(image, 12, 6, tau=0.5)
    assert engine.plan_cache == (0, 3)


def _drilldown_partials(resnet_case: tuple[nn.Module, torch.Tensor]
                        ) -> tuple[list[np.ndarray], np.ndarray]:
    model, image = resnet_case
    seen: list[np.ndarray] = []
    result = occlusion(model, image, 12, 6, mode="approximate", drilldown_ratio=0.2,
                       coarse_stride=18, batch_size=2,
                       partial=lambda heatmap: seen.append(heatmap.copy()))
    return seen, result.heatmap


def test_drilldown_shows_the_coarse_stage_as_it_goes(
    resnet_case: tuple[nn.Module, torch.Tensor],
) -> None:
    seen, heatmap = _drilldown_partials(resnet_case)
    first = seen[0]
    assert first.shape == heatmap.shape
    assert 0 < np.count_nonzero(~np.isnan(first)) < first.size, "a few coarse cells, then more"
    assert not np.isnan(first[0, 0]) and np.isnan(first[-1, -1]), "filled from the top row"


def test_drilldown_shows_the_interpolated_coarse_map_before_refining(
    resnet_case: tuple[nn.Module, torch.Tensor],
) -> None:
    model, image = resnet_case
    seen, heatmap = _drilldown_partials(resnet_case)
    coarse = occlusion(model, image, 12, 18).heatmap
    size = image.shape[-1]
    interpolated = interpolate_coarse(torch.from_numpy(coarse), PatchGrid(size, size, 12, 18),
                                      PatchGrid(size, size, 12, 6)).numpy()
    shown = [i for i, m in enumerate(seen) if np.allclose(m, interpolated, atol=TOLERANCE)]
    assert shown, "the interpolated coarse map is shown once the coarse stage ends"
    for before in seen[: shown[0]]:
        done = before[~np.isnan(before)]
        distance = np.abs(done[:, None] - coarse.ravel()[None, :]).min(axis=1)
        assert (distance <= TOLERANCE).all(), "before it, only coarse values, cell by cell"
    assert np.abs(interpolated - heatmap).max() > TOLERANCE, "refinement changes it"
    np.testing.assert_array_equal(seen[-1], heatmap)


def test_bisection_to_tolerance_zero_with_no_cap_equals_the_fine_map(
    resnet_case: tuple[nn.Module, torch.Tensor],
) -> None:
    model, image = resnet_case
    naive = occlusion(model, image, 12, 6, mode="naive")
    bisected = occlusion(model, image, 12, 6, mode="approximate", drilldown_ratio=1.0,
                         coarse_stride=24, drilldown_tolerance=0.0)
    np.testing.assert_allclose(bisected.heatmap, naive.heatmap, rtol=0, atol=TOLERANCE)


def test_bisection_keeps_exact_values_where_it_refines_and_reports_what_it_did(
    resnet_case: tuple[nn.Module, torch.Tensor],
) -> None:
    model, image = resnet_case
    exact = occlusion(model, image, 12, 6).heatmap
    result = occlusion(model, image, 12, 6, mode="approximate", drilldown_ratio=0.5,
                       coarse_stride=24, drilldown_tolerance=0.1)
    stats, coarse = result.stats, PatchGrid(96, 96, 12, 24)
    assert stats.approximation.drilldown_tolerance == 0.1 and stats.refine_rounds is not None
    assert 0 < stats.refined_positions <= np.ceil(0.5 * exact.size)
    assert stats.positions == coarse.size + stats.refined_positions
    exact_cells = np.isclose(result.heatmap, exact, rtol=0, atol=TOLERANCE)
    assert exact_cells.sum() >= stats.positions, "every occluded position keeps its value"


def test_bisection_needs_a_coarse_stride_on_the_fine_grid(
    resnet_case: tuple[nn.Module, torch.Tensor],
) -> None:
    model, image = resnet_case
    with pytest.raises(ApproximationError, match="multiple of the stride"):
        occlusion(model, image, 12, 6, mode="approximate", drilldown_ratio=0.5,
                  coarse_stride=20, drilldown_tolerance=0.1)


@pytest.mark.parametrize(("text", "expected"), [
    ("1/0.05/16", Approximation(1.0, 0.05, 16)),
    ("0.5/-/-", Approximation(0.5)),
    ("1/0.5/16/0.1", Approximation(1.0, 0.5, 16, 0.1)),
])
def test_a_setting_reads_from_its_text_form(text: str, expected: Approximation) -> None:
    assert Approximation.from_text(text) == expected


@pytest.mark.parametrize("text", ["1/0.05", "x/0.05/16", "1/0.05/16/0.1/9", "1/-/-/0.1"])
def test_a_bad_setting_text_is_refused(text: str) -> None:
    with pytest.raises(ApproximationError):
        Approximation.from_text(text)


def test_bisection_that_spends_less_than_its_cap_still_reports_completion(
    resnet_case: tuple[nn.Module, torch.Tensor],
) -> None:
    model, image = resnet_case
    seen: list[tuple[int, int]] = []
    result = occlusion(model, image, 12, 6, mode="approximate", drilldown_ratio=1.0,
                       coarse_stride=24, drilldown_tolerance=0.3,
                       progress=lambda done, total: seen.append((done, total)))
    assert result.stats.refined_positions < PatchGrid(96, 96, 12, 6).size
    assert seen[-1] == (result.stats.positions, result.stats.positions)
