"""BENCHMARKS.md's current table, made from ``krypton bench --json`` files only.

A figure typed by hand drifts from the run it came from, and loses the
commit, machine and command that make it mean anything. This reads the JSON
files a run wrote and replaces the block between :data:`BEGIN` and
:data:`END` in BENCHMARKS.md with one row per model and mode: the figure,
its quality (the worst image beside the mean where one was measured), date,
commit, machine and command. Everything outside the markers (the history)
is left as it is, so rerunning on the same files changes nothing.

    .venv/bin/python -m krypton.benchmarks.report benchmarks/results/*.json
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BEGIN", "END", "ReportError", "Row", "block", "replace_block", "rows_of",
           "table"]

BEGIN = "<!-- current-figures: begin (krypton.benchmarks.report writes this block) -->"
END = "<!-- current-figures: end -->"
HEADER = ("| model | mode | setup | figure | quality | date (UTC) | commit | machine "
          "| command |")


class ReportError(ValueError):
    """JSON the report cannot place, or a markdown file without the markers."""


@dataclass(frozen=True)
class Row:
    """One line of the table: a model in one mode, from one JSON file."""

    model: str
    mode: str
    setup: str
    figure: str
    quality: str
    date: str
    commit: str
    machine: str
    command: str
    source: str

    def markdown(self) -> str:
        cells = (self.model, self.mode, self.setup, self.figure, self.quality, self.date,
                 f"`{self.commit}`", self.machine, f"`{self.command}`")
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def rows_of(document: Mapping[str, Any], source: str) -> list[Row]:
    """The table rows of one ``krypton bench --json`` document.

    An exact run gives an exact row per model, and an approximate row too
    where it timed a ``--setting``; an ``--approximate`` run gives a tuned
    approximate row per model.

    Raises:
        ReportError: a document without the run's date, commit and machine
            (written before ``--json`` recorded them), or of an unknown mode.
    """
    missing = [k for k in ("date", "commit", "machine", "command", "mode", "rows")
               if k not in document]
    if missing or not isinstance(document["machine"], Mapping):
        raise ReportError(f"{source}: not a `krypton bench --json` file with the run's "
                          f"provenance (missing {', '.join(missing) or 'machine details'})")
    made = {"exact": _exact_rows, "approximate": _tuned_rows}.get(document["mode"])
    if made is None:
        raise ReportError(f"{source}: unknown mode {document['mode']!r}")
    return made(document, source)


def _exact_rows(document: Mapping[str, Any], source: str) -> list[Row]:
    rows = []
    for r in document["rows"]:
        captum = (f", {r['speedup_captum']:.2f}x Captum" if r["speedup_captum"] is not None
                  else "")
        rows.append(_row(document, source, r, "exact",
                         f"{r['exact_pps']:.1f} positions/s; {r['speedup_naive']:.2f}x naive"
                         f"{captum}",
                         f"max abs diff to naive {r['max_abs_diff']:.1e}"))
        if r["approximate_pps"] is not None:
            rows.append(_row(
                document, source, r, f"approximate, setting {document['setting']}",
                f"{r['approximate_pps']:.1f} positions/s; {r['approximate_speedup_naive']:.1f}x "
                f"naive, {r['approximate_pps'] / r['exact_pps']:.1f}x exact",
                f"SSIM {r['approximate_ssim']:.3f} on 1 image (the worst is that one)"))
    return rows


def _tuned_rows(document: Mapping[str, Any], source: str) -> list[Row]:
    rows = []
    for r in document["rows"]:
        held_out = r.get("holdout_images") or "?"
        quality = (f"held-out SSIM mean {r['holdout_ssim']:.3f}, worst "
                   f"{r['min_holdout_ssim']:.3f} ({held_out} images)")
        check = r.get("check")
        if check:
            quality += (f"; unseen SSIM mean {check['ssim_mean']:.3f}, p10 "
                        f"{check['ssim_p10']:.3f}, worst {check['ssim_min']:.3f}, pointing "
                        f"agrees with exact {check['pointing_agreement']:.0%} "
                        f"({len(check['ssim'])} images)")
        rows.append(_row(
            document, source, r, f"approximate, tuned: {_setting_text(r)}",
            f"{r['positions'] / r['approximate_seconds']:.1f} positions/s "
            f"({r['approximate_seconds']:.2f} s/image); {r['speedup_naive']:.1f}x naive, "
            f"{r['speedup_exact']:.1f}x exact",
            quality))
    return rows


def _setting_text(r: Mapping[str, Any]) -> str:
    """The tuned knobs as ``--setting`` spells them: TAU/R/COARSE[/TOLERANCE]."""
    knobs = [r["tau"], r["drilldown_ratio"], r["coarse_stride"]]
    if r["drilldown_tolerance"] is not None:
        knobs.append(r["drilldown_tolerance"])
    return "/".join("-" if k is None else f"{k:g}" for k in knobs)


def _row(document: Mapping[str, Any], source: str, r: Mapping[str, Any], mode: str,
         figure: str, quality: str) -> Row:
    machine = document["machine"]
    return Row(
        model=r["model"], mode=mode,
        setup=(f"{r['input_size']} px, patch {r['patch']}, stride {r['stride']} "
               f"({r['positions']} positions)"),
        figure=figure, quality=quality,
        date=document["date"].replace("T", " ").removesuffix("Z"),
        commit=document["commit"],
        machine=(f"{machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} "
                 f"torch threads, {machine['device']}; torch {document['torch']}"
                 f"{_load(document)}"),
        command=document["command"], source=source)


def _load(document: Mapping[str, Any]) -> str:
    """The load averages the run recorded: figures from a busy machine say so."""
    before, after = document.get("load_average"), document.get("load_average_after")
    if before is None or after is None:
        return ""
    return f"; load {before:.1f} at start, {after:.1f} at end"


def table(rows: Sequence[Row]) -> str:
    """The Markdown table, one line per model and mode.

    Raises:
        ReportError: two files measuring the same model in the same mode: the
            table would have to pick one silently.
    """
    seen: dict[tuple[str, str], str] = {}
    for r in rows:
        key = (r.model, r.mode.split(",")[0])
        if key in seen:
            raise ReportError(f"{r.model} {key[1]} is in both {seen[key]} and {r.source}; "
                              f"give one file per model and mode")
        seen[key] = r.source
    separator = "|" + "---|" * HEADER.count(" | ") + "---|"
    return "\n".join([HEADER, separator, *(r.markdown() for r in rows)])


def block(rows: Sequence[Row], sources: Iterable[str]) -> str:
    """The generated block, markers included, naming the files it was made from."""
    names = " ".join(sources)
    introduction = (
        "Generated from `krypton bench --json` files by "
        f"`.venv/bin/python -m krypton.benchmarks.report {names}`; every figure is a ratio or "
        "rate measured in that run, on that machine (see each run's row, with the load "
        "average at its start and end). Where quality was measured, the worst image is given "
        "beside the mean. The sections after this block are the history, kept as they were "
        "written.")
    return "\n".join([
        BEGIN,
        "## Current figures",
        "",
        textwrap.fill(introduction, width=90, break_long_words=False, break_on_hyphens=False),
        "",
        table(rows),
        END,
    ])


def replace_block(markdown: str, new_block: str) -> str:
    """``markdown`` with the text from :data:`BEGIN` to :data:`END` replaced by ``new_block``.

    Raises:
        ReportError: the markers are missing, repeated or out of order: what
            to keep would be a guess.
    """
    if markdown.count(BEGIN) != 1 or markdown.count(END) != 1:
        raise ReportError(f"the file needs exactly one {BEGIN} and one {END} line")
    start, end = markdown.index(BEGIN), markdown.index(END)
    if end < start:
        raise ReportError(f"{END} comes before {BEGIN}")
    return markdown[:start] + new_block + markdown[end + len(END):]


def main(argv: Sequence[str] | None = None) -> None:
    """Read the JSON files, then rewrite the block in the markdown file in place."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="krypton bench --json files")
    parser.add_argument("--markdown", type=Path, default=Path("BENCHMARKS.md"),
                        help="the file whose block is replaced (default BENCHMARKS.md)")
    args = parser.parse_args(argv)
    rows = [row for path in args.files
            for row in rows_of(json.loads(path.read_text()), str(path))]
    new_block = block(rows, [str(p) for p in args.files])
    args.markdown.write_text(replace_block(args.markdown.read_text(), new_block))


if __name__ == "__main__":
    main()
