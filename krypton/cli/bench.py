"""``krypton bench``: time the engine against naive inference and Captum, in one process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from krypton.approximation import Approximation, ApproximationError
from krypton.cli.common import Device, fail
from krypton.models import ModelError

__all__ = ["JSON_FORMAT", "register"]

JSON_FORMAT = 2
"""Version of ``--json``'s layout; 1 was ``{"machine": "...", "rows": [...]}`` alone."""


def register(app: typer.Typer) -> None:
    app.command()(bench)


def bench(
    models_: Annotated[str, typer.Option(
        "--models", help="Comma-separated architectures.")] = "vgg16,resnet18,inception_v3",
    patch: Annotated[int, typer.Option(help="Patch side in input pixels.")] = 16,
    stride: Annotated[int, typer.Option(help="Stride in input pixels.")] = 16,
    device: Annotated[Device, typer.Option(help="Where to run.")] = Device.cpu,
    batch_size: Annotated[int | None, typer.Option(
        help="Exact engine's batch (default: its memory budget).")] = None,
    captum: Annotated[bool, typer.Option(help="Also time Captum's Occlusion.")] = True,
    approximate: Annotated[bool, typer.Option(
        help="Benchmark tuned approximate inference instead: tune on half of the sample "
        "images, then time approximate vs exact vs naive on the other half.")] = False,
    samples: Annotated[int, typer.Option(help="Sample images for --approximate.")] = 4,
    target_ssim: Annotated[float, typer.Option(help="SSIM target for --approximate.")] = 0.9,
    tuning_score: Annotated[str, typer.Option(
        help="For --approximate: tune by the images' mean SSIM, or by the worst (min).")
    ] = "mean",
    demo_weights: Annotated[Path | None, typer.Option(
        help="The folder of `krypton demo train` checkpoints: explain demo lesion images with "
        "the trained models instead of untrained ones.")] = None,
    setting: Annotated[str | None, typer.Option(
        help="Without --approximate: also time this approximate setting, TAU/R/COARSE "
        "(e.g. 1/0.05/16) or TAU/R/COARSE/TOLERANCE for bisection (e.g. 1/0.5/16/0.1), and "
        "score its SSIM against the exact map.")] = None,
    check: Annotated[int, typer.Option(
        help="With --demo-weights: score the chosen setting's SSIM on this many further "
        "demo images (not timed).")] = 0,
    check_seed: Annotated[int, typer.Option(
        help="Which set of --check images: 1, 2, ... (tuning draws from none of them).",
        min=1)] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", help=(
        "Also write the rows as JSON, with the date (UTC), git commit, machine, torch "
        "version and command line; `python -m krypton.benchmarks.report` makes "
        "BENCHMARKS.md's table from such files."))] = None,
) -> None:
    """Time naive, Captum and exact occlusion in this process and print the speedups."""
    from krypton.benchmarks.engine import (
        format_approximate_table,
        format_table,
        machine_description,
        run_approximate_benchmark,
        run_benchmark,
    )
    from krypton.benchmarks.provenance import run_record
    from krypton.engine import EngineError

    # Taken before the run: the commit and the tree are those of the code that runs.
    record = run_record(device.value)
    names = [n.strip() for n in models_.split(",") if n.strip()]
    if not approximate and check:
        fail("--check applies to --approximate only")
    if approximate and setting is not None:
        fail("--setting times one setting without --approximate, which tunes its own")
    if approximate:
        try:
            approximate_rows = run_approximate_benchmark(
                names, patch=patch, stride=stride, samples=samples, target_ssim=target_ssim,
                tuning_score=tuning_score,  # type: ignore[arg-type]  # tune() refuses others
                device=device.value, demo_weights=demo_weights, check=check,
                check_seed=check_seed, report=lambda line: typer.echo(line, err=True))
        except (EngineError, ModelError, ValueError, OSError) as exc:
            fail(str(exc))
        typer.echo(f"machine: {machine_description(device.value)}")
        typer.echo(format_approximate_table(approximate_rows))
        if json_out is not None:
            _write_json(json_out, record, "approximate", device.value,
                        [r.as_dict() for r in approximate_rows])
        return
    try:
        rows = run_benchmark(names, patch=patch, stride=stride, device=device.value,
                             exact_batch=batch_size, with_captum=captum,
                             approximation=_setting(setting), demo_weights=demo_weights,
                             report=lambda line: typer.echo(line, err=True))
    except (EngineError, ModelError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"machine: {machine_description(device.value)}")
    typer.echo(format_table(rows))
    if json_out is not None:
        _write_json(json_out, record, "exact", device.value, [r.as_dict() for r in rows],
                    setting=setting)


def _write_json(path: Path, record: dict[str, object], mode: str, device: str,
                rows: list[dict[str, object]], setting: str | None = None) -> None:
    """The rows with the run's date, commit, machine and command line beside them
    (``record``, :func:`krypton.benchmarks.provenance.run_record`), which the report prints
    next to every figure; ``machine_description`` keeps the one line the table printed."""
    from krypton.benchmarks.engine import machine_description
    from krypton.benchmarks.provenance import load_average

    machine = record["machine"]
    assert isinstance(machine, dict)
    machine["description"] = machine_description(device)
    path.write_text(json.dumps(
        {"format": JSON_FORMAT, "mode": mode, "setting": setting, **record,
         "load_average_after": load_average(), "rows": rows}, indent=2) + "\n")


def _setting(text: str | None) -> Approximation | None:
    """``TAU/R/COARSE[/TOLERANCE]`` as an approximation (:meth:`Approximation.from_text`)."""
    if text is None:
        return None
    try:
        return Approximation.from_text(text)
    except ApproximationError as exc:
        fail(f"--setting: {exc}")
