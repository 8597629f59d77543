"""Old against new: one benchmark, two commits, alternated in one run on one machine.

Figures measured on different days, or while the machine did other work,
cannot tell a 10% change from the machine's own drift. This builds each
commit in a throwaway folder (``git archive`` into it, a virtual environment
that borrows this environment's dependencies through a ``.pth`` file, and
``pip install --no-deps`` of the commit), then runs the same ``krypton bench``
command for old, new, old, new... so that both see the same load, and prints
per commit the median and range of positions per second, the exact/naive
ratio and the approximate setting's rate, and the new/old ratio.

    .venv/bin/python -m krypton.benchmarks.compare_commits 584f9d5 HEAD --rounds 3 \\
        --bench-args '--models resnet18 --patch 16 --stride 8 --no-captum \\
                      --setting 0.4/0.5/16/0.3 --demo-weights /tmp/k2/checkpoints'
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Commit", "Sample", "Spread", "build", "main", "run_bench", "spread"]

REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_BENCH = ("--models resnet18 --patch 16 --stride 8 --no-captum "
                 "--setting 0.4/0.5/16/0.3")
METRICS = ("exact_pps", "naive_pps", "exact_over_naive", "approximate_pps",
           "approximate_over_exact", "approximate_ssim")


@dataclass(frozen=True)
class Commit:
    """A commit, built: its hashes and the ``krypton`` of its own environment."""

    name: str
    """As given on the command line (``HEAD``, ``584f9d5``)."""
    sha: str
    short: str
    krypton: Path


@dataclass(frozen=True)
class Sample:
    """One ``krypton bench`` run of one commit: its first row's figures."""

    commit: str
    round: int
    exact_pps: float
    naive_pps: float
    exact_over_naive: float
    approximate_pps: float | None
    approximate_over_exact: float | None
    approximate_ssim: float | None
    load_before: float
    """The 1-minute load average when the run started: other work on the machine."""
    seconds: float


@dataclass(frozen=True)
class Spread:
    """Median and range of one figure over a commit's rounds."""

    median: float
    low: float
    high: float

    def text(self, digits: int = 2) -> str:
        return (f"{self.median:.{digits}f} (range {self.low:.{digits}f}-"
                f"{self.high:.{digits}f})")


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPOSITORY), *args], capture_output=True,
                          text=True, check=True).stdout.strip()


def build(name: str, folder: Path) -> Commit:
    """Commit ``name`` installed alone in ``folder``: its code from ``git archive``, the
    dependencies of this environment (a ``.pth`` file), so no network is needed.

    The environment gets no pip of its own: ``ensurepip``'s older setuptools would
    shadow the borrowed one and cannot build a wheel without ``wheel``; the borrowed
    pip and setuptools build it, with no build isolation (which would download).

    Raises:
        RuntimeError: the environment's ``krypton`` is not the commit's own copy (the
            borrowed dependencies must not bring this checkout's code in with them).
    """
    sha = git("rev-parse", "--verify", f"{name}^{{commit}}")
    source, venv = folder / "src", folder / "venv"
    source.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPOSITORY), "archive", sha],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (Path(site) / "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", str(source)], check=True)
    _check_own_copy(python, venv)
    return Commit(name=name, sha=sha, short=sha[:7], krypton=venv / "bin" / "krypton")


def _check_own_copy(python: Path, venv: Path) -> None:
    where = subprocess.run([str(python), "-c", "import krypton; print(krypton.__file__)"],
                           capture_output=True, text=True, check=True,
                           cwd=venv).stdout.strip()
    if not Path(where).resolve().is_relative_to(venv.resolve()):
        raise RuntimeError(f"{venv} imports krypton from {where}, not its own copy")


def run_bench(commit: Commit, bench_args: Sequence[str], output: Path, round_: int) -> Sample:
    """One ``krypton bench`` of ``commit``, its first row read back from ``--json``.

    Runs in the commit's environment folder, so no ``krypton`` package in the
    working folder can shadow the installed one.
    """
    load = float(Path("/proc/loadavg").read_text().split()[0])
    started = time.perf_counter()
    subprocess.run([str(commit.krypton), "bench", *bench_args, "--json", str(output)],
                   check=True, cwd=commit.krypton.parent.parent, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    row: dict[str, Any] = json.loads(output.read_text())["rows"][0]
    approximate = row.get("approximate_pps")
    return Sample(
        commit=commit.short, round=round_, exact_pps=row["exact_pps"],
        naive_pps=row["naive_pps"], exact_over_naive=row["exact_pps"] / row["naive_pps"],
        approximate_pps=approximate,
        approximate_over_exact=None if approximate is None else approximate / row["exact_pps"],
        approximate_ssim=row.get("approximate_ssim"), load_before=load, seconds=seconds)


def spread(values: Sequence[float]) -> Spread:
    return Spread(statistics.median(values), min(values), max(values))


def alternate(old: Commit, new: Commit, rounds: int, bench_args: Sequence[str],
              folder: Path) -> list[Sample]:
    """``rounds`` runs of each, old then new in every round, so neither gets a quieter
    stretch of the machine to itself."""
    samples = []
    for round_ in range(1, rounds + 1):
        for commit in (old, new):
            sample = run_bench(commit, bench_args, folder / f"{commit.short}-{round_}.json",
                               round_)
            say(f"round {round_} {commit.short}: exact {sample.exact_pps:.2f} positions/s, "
                f"exact/naive {sample.exact_over_naive:.2f}x, approximate "
                f"{_optional(sample.approximate_pps)} positions/s, load "
                f"{sample.load_before:.2f}, {sample.seconds:.0f} s")
            samples.append(sample)
    return samples


def say(line: str) -> None:
    """A line on stdout now, not when the buffer fills: a run takes minutes per round."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _optional(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary(old: Commit, new: Commit, samples: Sequence[Sample]) -> dict[str, Any]:
    """Per metric: each commit's median and range, new/old of the medians, and the range
    of the per-round new/old ratios (a round's two runs are neighbours in time)."""
    result: dict[str, Any] = {}
    for metric in METRICS:
        per_commit = {c.short: [getattr(s, metric) for s in samples if s.commit == c.short]
                      for c in (old, new)}
        if any(v is None for values in per_commit.values() for v in values):
            continue
        olds, news = per_commit[old.short], per_commit[new.short]
        result[metric] = {
            "old": asdict(spread(olds)), "new": asdict(spread(news)),
            "new_over_old": spread(news).median / spread(olds).median,
            "per_round_new_over_old": asdict(spread([n / o for o, n in zip(olds, news,
                                                                            strict=True)])),
        }
    return result


def print_summary(old: Commit, new: Commit, result: dict[str, Any]) -> None:
    say(f"old {old.name} = {old.short}, new {new.name} = {new.short}")
    for metric, figures in result.items():
        o, n = Spread(**figures["old"]), Spread(**figures["new"])
        paired = Spread(**figures["per_round_new_over_old"])
        digits = 3 if metric == "approximate_ssim" else 2
        say(f"{metric}: old {o.text(digits)}, new {n.text(digits)}; new/old "
            f"{figures['new_over_old']:.3f} (per round {paired.text(3)})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the old commit (any git revision)")
    parser.add_argument("new", help="the new commit (any git revision)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each commit (>= 3)")
    parser.add_argument("--bench-args", default=DEFAULT_BENCH, help=(
        f"krypton bench options, the same for both (default {DEFAULT_BENCH!r})"))
    parser.add_argument("--json", type=Path, help="also write every run and the summary here")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be 3 or more: a median of fewer says nothing of spread")
    bench_args = shlex.split(args.bench_args)
    record = _record(bench_args)
    with tempfile.TemporaryDirectory(prefix="krypton-compare-") as scratch:
        folder = Path(scratch)
        old, new = build(args.old, folder / "old"), build(args.new, folder / "new")
        samples = alternate(old, new, args.rounds, bench_args, folder)
    result = summary(old, new, samples)
    print_summary(old, new, result)
    if args.json is not None:
        args.json.write_text(json.dumps({
            **record, "old": _named(old), "new": _named(new),
            "bench_args": bench_args, "rounds": args.rounds,
            "samples": [asdict(s) for s in samples], "summary": result}, indent=2) + "\n")


def _record(bench_args: Sequence[str]) -> dict[str, object]:
    """Date, this checkout's commit, machine and command line, as ``krypton bench --json``
    records them, for the device the bench options name."""
    from krypton.benchmarks.provenance import run_record

    options = list(bench_args)
    device = options[options.index("--device") + 1] if "--device" in options else "cpu"
    return run_record(device)


def _named(commit: Commit) -> dict[str, str]:
    return {"name": commit.name, "sha": commit.sha, "short": commit.short}


if __name__ == "__main__":
    main()
