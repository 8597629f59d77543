"""Old against new: the summary of alternated runs compares medians and rounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from krypton.benchmarks.compare_commits import Commit, Sample, summary


def _commit(short: str) -> Commit:
    return Commit(name=short, sha=short * 6, short=short, krypton=Path())


def _sample(commit: str, round_: int, exact: float, approximate: float | None = None
            ) -> Sample:
    return Sample(commit=commit, round=round_, exact_pps=exact, naive_pps=50.0,
                  exact_over_naive=exact / 50.0, approximate_pps=approximate,
                  approximate_over_exact=None if approximate is None else approximate / exact,
                  approximate_ssim=None if approximate is None else 0.9, load_before=1.0,
                  seconds=30.0)


def test_new_over_old_is_the_ratio_of_the_medians_with_each_rounds_ratio_as_spread() -> None:
    old, new = _commit("aaaaaaa"), _commit("bbbbbbb")
    samples = [_sample("aaaaaaa", 1, 100.0), _sample("bbbbbbb", 1, 110.0),
               _sample("aaaaaaa", 2, 90.0), _sample("bbbbbbb", 2, 120.0),
               _sample("aaaaaaa", 3, 120.0), _sample("bbbbbbb", 3, 100.0)]
    exact = summary(old, new, samples)["exact_pps"]
    assert exact["old"] == {"median": 100.0, "low": 90.0, "high": 120.0}
    assert exact["new_over_old"] == pytest.approx(1.1)
    assert exact["per_round_new_over_old"]["low"] == pytest.approx(100.0 / 120.0)
    assert exact["per_round_new_over_old"]["high"] == pytest.approx(120.0 / 90.0)


def test_a_figure_one_commit_did_not_measure_is_left_out() -> None:
    old, new = _commit("aaaaaaa"), _commit("bbbbbbb")
    samples = [_sample("aaaaaaa", 1, 100.0), _sample("bbbbbbb", 1, 110.0, approximate=800.0)]
    assert "approximate_pps" not in summary(old, new, samples)
