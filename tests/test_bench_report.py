"""BENCHMARKS.md's current table comes from `krypton bench --json` files, and only its block."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from krypton.benchmarks.provenance import command_line, git_commit, invocation
from krypton.benchmarks.report import BEGIN, END, ReportError, main, replace_block, rows_of

MACHINE = {"cpu": "AMD EPYC", "cores": 2, "torch_threads": 2, "device": "cpu", "gpu": None,
           "system": "Linux x86_64", "description": "AMD EPYC, 2 threads"}


def _exact_run(**row: Any) -> dict[str, Any]:
    """A `krypton bench --json` document of one exact ResNet18 run."""
    values: dict[str, Any] = dict(
        model="resnet18", input_size=224, patch=16, stride=16, positions=196, naive_batch=16,
        exact_batch=196, naive_pps=50.0, captum_pps=40.0, exact_pps=125.0,
        theoretical_ratio=2.19, flops_ratio=2.28, max_abs_diff=6e-08, approximate_pps=None,
        approximate_ssim=None, speedup_naive=2.5, speedup_captum=3.125,
        approximate_speedup_naive=None)
    values.update(row)
    return {"format": 2, "mode": "exact", "setting": None, "date": "2026-12-05T09:00:00Z",
            "commit": "abc1234+dirty", "machine": MACHINE, "torch": "2.14.1", "python": "3.11.7",
            "command": ".venv/bin/krypton bench --models resnet18", "rows": [values]}


def _tuned_run() -> dict[str, Any]:
    """A `krypton bench --approximate --json` document with a check on unseen images."""
    row = dict(
        model="resnet18", input_size=224, patch=16, stride=4, positions=2809, naive_pps=80.0,
        exact_seconds=11.0, approximate_seconds=1.25, tau=1.0, drilldown_ratio=0.5,
        coarse_stride=16, drilldown_tolerance=0.15, holdout_ssim=0.955, min_holdout_ssim=0.86,
        tuning_seconds=300.0, exact_range=0.8, frontier=[], holdout_images=4,
        naive_seconds=35.1125, speedup_naive=28.09, speedup_exact=8.8,
        check={"ssim": [0.9, 0.8, 1.0], "exact_hits": [True] * 3,
               "approximate_hits": [True] * 3, "ssim_mean": 0.9, "ssim_p10": 0.82,
               "ssim_min": 0.8, "pointing_exact": 1.0, "pointing_approximate": 1.0,
               "pointing_agreement": 1.0})
    return {**_exact_run(), "mode": "approximate", "rows": [row]}


def _markdown_with_history() -> str:
    return f"# Benchmarks\n\n{BEGIN}\nold table\n{END}\n\n# History\n\n## CPU, 2026\n\n| a |\n"


def test_an_exact_run_becomes_one_row_with_its_figures_and_provenance() -> None:
    (row,) = rows_of(_exact_run(), "exact.json")
    assert row.markdown() == (
        "| resnet18 | exact | 224 px, patch 16, stride 16 (196 positions) "
        "| 125.0 positions/s; 2.50x naive, 3.12x Captum | max abs diff to naive 6.0e-08 "
        "| 2026-12-05 09:00:00 | `abc1234+dirty` "
        "| AMD EPYC, 2 cores, 2 torch threads, cpu; torch 2.14.1 "
        "| `.venv/bin/krypton bench --models resnet18` |")


def test_a_timed_setting_adds_an_approximate_row_beside_the_exact_one() -> None:
    document = {**_exact_run(approximate_pps=500.0, approximate_ssim=0.91,
                             approximate_speedup_naive=10.0), "setting": "0.4/0.5/16/0.3"}
    exact, approximate = rows_of(document, "exact.json")
    assert (exact.mode, approximate.mode) == ("exact", "approximate, setting 0.4/0.5/16/0.3")
    assert approximate.figure == "500.0 positions/s; 10.0x naive, 4.0x exact"
    assert approximate.quality == "SSIM 0.910 on 1 image (the worst is that one)"


def test_a_tuned_run_reports_the_worst_image_beside_the_mean() -> None:
    (row,) = rows_of(_tuned_run(), "approximate.json")
    assert row.mode == "approximate, tuned: 1/0.5/16/0.15"
    assert row.figure == "2247.2 positions/s (1.25 s/image); 28.1x naive, 8.8x exact"
    assert row.quality == (
        "held-out SSIM mean 0.955, worst 0.860 (4 images); unseen SSIM mean 0.900, p10 0.820, "
        "worst 0.800, pointing agrees with exact 100% (3 images)")


def test_a_file_without_the_runs_provenance_is_refused() -> None:
    with pytest.raises(ReportError, match="provenance"):
        rows_of({"machine": "AMD EPYC", "rows": []}, "old.json")


def test_two_files_of_the_same_model_and_mode_are_refused(tmp_path: Path) -> None:
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text(json.dumps(_exact_run()))
    (tmp_path / "B.md").write_text(_markdown_with_history())
    with pytest.raises(ReportError, match="both"):
        main([str(tmp_path / "a.json"), str(tmp_path / "b.json"),
              "--markdown", str(tmp_path / "B.md")])


def test_the_report_replaces_the_block_and_keeps_the_history(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps(_exact_run()))
    markdown = tmp_path / "B.md"
    markdown.write_text(_markdown_with_history())
    main([str(tmp_path / "run.json"), "--markdown", str(markdown)])
    text = markdown.read_text()
    assert "old table" not in text and "| resnet18 | exact |" in text
    assert text.startswith(f"# Benchmarks\n\n{BEGIN}\n")
    assert text.endswith(f"{END}\n\n# History\n\n## CPU, 2026\n\n| a |\n")


def test_rerunning_the_report_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps(_tuned_run()))
    markdown = tmp_path / "B.md"
    markdown.write_text(_markdown_with_history())
    main([str(tmp_path / "run.json"), "--markdown", str(markdown)])
    once = markdown.read_text()
    main([str(tmp_path / "run.json"), "--markdown", str(markdown)])
    assert markdown.read_text() == once


def test_a_file_without_the_markers_is_refused() -> None:
    with pytest.raises(ReportError, match="exactly one"):
        replace_block("# Benchmarks\n\nhistory\n", "new")


def test_the_commit_is_marked_dirty_when_a_tracked_file_changed(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c",
                        "user.email=t@example.org", *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("a = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "code")
    clean = git_commit(tmp_path)
    (tmp_path / "code.py").write_text("a = 2\n")
    assert git_commit(tmp_path) == clean + "+dirty"


def test_the_command_names_a_program_below_the_working_folder_relatively(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    program = str(tmp_path / ".venv" / "bin" / "krypton")
    assert command_line([program, "bench", "--setting", "a b"]) == (
        ".venv/bin/krypton bench --setting 'a b'")


def test_a_module_run_with_python_m_is_recorded_by_its_module_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "orig_argv", [".venv/bin/python", "-m", "krypton.benchmarks.x", "a"])
    monkeypatch.setattr(sys, "argv", ["/work/main/benchmarks/x.py", "a"])
    assert command_line(invocation()) == ".venv/bin/python -m krypton.benchmarks.x a"
