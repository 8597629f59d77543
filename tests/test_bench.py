"""The benchmark's report: what its tables say, and what it refuses to mix."""

from __future__ import annotations

import pytest

from krypton.benchmarks.engine import (
    ApproximateRow,
    format_approximate_table,
    run_approximate_benchmark,
)


def _row(**changes: object) -> ApproximateRow:
    values: dict[str, object] = dict(
        model="resnet18", input_size=224, patch=16, stride=4, positions=2809,
        naive_pps=50.0, exact_seconds=20.0, approximate_seconds=2.0, tau=0.6,
        drilldown_ratio=0.05, coarse_stride=15, holdout_ssim=0.91, min_holdout_ssim=0.9,
        tuning_seconds=100.0, exact_range=0.8, frontier=(),
    )
    values.update(changes)
    return ApproximateRow(**values)  # type: ignore[arg-type]


def test_speedups_are_ratios_of_the_measured_times() -> None:
    row = _row()
    assert row.naive_seconds == pytest.approx(2809 / 50.0)
    assert row.speedup_naive == pytest.approx(2809 / 50.0 / 2.0)
    assert row.speedup_exact == pytest.approx(10.0)


def test_the_table_shows_the_check_ssim_when_measured() -> None:
    table = format_approximate_table([_row(check_images=6, check_ssim=0.93,
                                           min_check_ssim=0.88)])
    assert "0.930 (0.880), 6 images" in table
    assert "28.1x" in table  # 56.18 s naive / 2 s approximate


def test_the_table_marks_a_missing_check_with_a_dash() -> None:
    assert format_approximate_table([_row()]).splitlines()[-1].endswith("| - |")


def test_check_images_without_the_demo_models_raise() -> None:
    with pytest.raises(ValueError, match="demo"):
        run_approximate_benchmark(["resnet18"], check=2)


def test_a_negative_check_count_raises_before_any_work() -> None:
    with pytest.raises(ValueError, match="check"):
        run_approximate_benchmark(["resnet18"], check=-1, demo_weights="checkpoints")
