"""The benchmark's report: what its tables say, and what it refuses to mix."""

from __future__ import annotations

import pytest

from krypton.benchmarks.engine import (
    ApproximateRow,
    QualityCheck,
    format_approximate_table,
    run_approximate_benchmark,
)


def _row(**changes: object) -> ApproximateRow:
    values: dict[str, object] = dict(
        model="resnet18", input_size=224, patch=16, stride=4, positions=2809,
        naive_pps=50.0, exact_seconds=20.0, approximate_seconds=2.0, tau=0.6,
        drilldown_ratio=0.05, coarse_stride=15, drilldown_tolerance=None, holdout_ssim=0.91,
        min_holdout_ssim=0.9,
        tuning_seconds=100.0, exact_range=0.8, frontier=(),
    )
    values.update(changes)
    return ApproximateRow(**values)  # type: ignore[arg-type]


def test_speedups_are_ratios_of_the_measured_times() -> None:
    row = _row()
    assert row.naive_seconds == pytest.approx(2809 / 50.0)
    assert row.speedup_naive == pytest.approx(2809 / 50.0 / 2.0)
    assert row.speedup_exact == pytest.approx(10.0)


def _check() -> QualityCheck:
    ssim = (0.95, 0.93, 0.90, 0.97, 0.60, 0.92, 0.94, 0.96, 0.91, 0.99)
    exact = (True,) * 9 + (False,)
    approximate = (True,) * 8 + (False, False)
    return QualityCheck(ssim, exact, approximate)


def test_the_quality_check_reports_the_low_tail_not_only_the_mean() -> None:
    check = _check()
    assert check.ssim_min == 0.60
    assert check.ssim_p10 == pytest.approx(0.60 + 0.9 * (0.90 - 0.60))
    assert check.ssim_mean == pytest.approx(sum(check.ssim) / 10)


def test_the_pointing_game_counts_hits_and_where_approximate_agrees_with_exact() -> None:
    check = _check()
    assert (check.pointing_exact, check.pointing_approximate) == (0.9, 0.8)
    assert check.pointing_agreement == 0.9  # image 9 lost its hit; image 10 missed in both


def test_the_table_shows_the_quality_check_when_measured() -> None:
    table = format_approximate_table([_row(check=_check())])
    assert "| 0.907 / 0.870 / 0.600 | 90% / 80% / 90% | 10 |" in table
    assert "28.1x" in table  # 56.18 s naive / 2 s approximate


def test_the_table_marks_a_missing_check_with_dashes() -> None:
    line = format_approximate_table([_row()]).splitlines()[-1]
    assert line.endswith("| - | - | - |")
    assert line.count("|") == format_approximate_table([]).splitlines()[0].count("|")


def test_check_images_without_the_demo_models_raise() -> None:
    with pytest.raises(ValueError, match="demo"):
        run_approximate_benchmark(["resnet18"], check=2)


def test_a_negative_check_count_raises_before_any_work() -> None:
    with pytest.raises(ValueError, match="check"):
        run_approximate_benchmark(["resnet18"], check=-1, demo_weights="checkpoints")


def test_the_table_names_a_bisection_and_its_cap() -> None:
    row = _row(drilldown_ratio=0.5, coarse_stride=16, drilldown_tolerance=0.1)
    assert "| bisect 0.1 (cap 0.5) | 16 |" in format_approximate_table([row])
