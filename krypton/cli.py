"""The ``krypton`` command: explain an image from the shell, or benchmark the engine."""

from __future__ import annotations

import json
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import numpy as np
import typer
from tqdm import tqdm

from krypton.engine import EngineError, OcclusionResult, occlusion
from krypton.models import (
    ModelError,
    Preprocessing,
    build_model,
    decode_image,
    get_model_spec,
    list_models,
    patch_value,
    to_model_input,
)
from krypton.service import render

app = typer.Typer(
    help="Occlusion sensitivity heatmaps for CNN image classifiers, by incremental inference.",
    no_args_is_help=True,
    add_completion=False,
)


class EngineMode(StrEnum):
    exact = "exact"
    naive = "naive"


class Device(StrEnum):
    cpu = "cpu"
    cuda = "cuda"


class ViewChoice(StrEnum):
    drop = "drop"
    probability = "probability"


OUTPUT_SUFFIXES = (".npy", ".json", ".png")


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def explain(
    image: Annotated[Path, typer.Argument(help="PNG, JPEG or TIFF image.")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Where to write: .npy, .json or .png (.png also writes "
        "NAME.overlay.png, the heatmap over the image at its own size).")],
    model: Annotated[str, typer.Option(help="Architecture (see `krypton models`).")] = "resnet18",
    weights: Annotated[Path | None, typer.Option(
        help="Fine-tuned checkpoint: state_dict, {'state_dict'|'model': ...} or TorchScript. "
        "Without it, seeded random weights are used.")] = None,
    num_classes: Annotated[int, typer.Option(help="Classes of the model's head.")] = 1000,
    patch: Annotated[int, typer.Option(help="Patch side, in model-input pixels.")] = 16,
    stride: Annotated[int, typer.Option(help="Step between patches, in model-input pixels.")] = 4,
    color: Annotated[str, typer.Option(
        help="Patch colour: gray, black, white, mean, or R,G,B (0-255).")] = "gray",
    target: Annotated[int | None, typer.Option(
        help="Class to explain (default: the predicted one).")] = None,
    mode: Annotated[EngineMode, typer.Option(help="exact: incremental; naive: reference.")
                    ] = EngineMode.exact,
    device: Annotated[Device, typer.Option(help="Where the model runs.")] = Device.cpu,
    batch_size: Annotated[int | None, typer.Option(
        help="Patch positions per batch (default: what fits in memory).")] = None,
    view: Annotated[ViewChoice | None, typer.Option(
        help="drop = p(class) - p(class | patch), high where evidence is; probability = "
        "p(class | patch). Default: drop for .png, probability for .npy/.json.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random weights without --weights.")
                    ] = 0,
) -> None:
    """Compute the occlusion heatmap of IMAGE and write it to OUTPUT."""
    suffix = output.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        _fail(f"--output must end in one of {', '.join(OUTPUT_SUFFIXES)}, got {output.name!r}")
    try:
        spec = get_model_spec(model)
        preprocessing = Preprocessing(spec.input_size)
        pixels = decode_image(image)
        network = build_model(model, num_classes=num_classes, weights=weights, seed=seed)
        if weights is None:
            typer.echo(
                f"note: no --weights given; {model} uses seeded random weights (seed {seed}). "
                "The heatmap shows the pipeline working, not a diagnosis.", err=True)
        with tqdm(total=None, unit="pos", disable=not sys.stderr.isatty(),
                  desc=f"{mode.value} occlusion") as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            result = occlusion(
                network, to_model_input(pixels, preprocessing), patch, stride,
                patch_value=patch_value(color, preprocessing), target=target,
                mode=mode.value, batch_size=batch_size, device=device.value, progress=progress,
            )
    except (EngineError, ModelError, ValueError, OSError) as exc:
        _fail(str(exc))

    chosen = (view or (ViewChoice.drop if suffix == ".png" else ViewChoice.probability)).value
    values = render.view_values(result.heatmap, result.target_probability, chosen)
    written = _write(output, values, result, pixels, spec.input_size, chosen, model, color)
    stats = result.stats
    typer.echo(
        f"{model}: class {result.predicted_class} predicted (p={result.predicted_probability:.4f}),"
        f" explaining class {result.target} (p={result.target_probability:.4f})\n"
        f"{result.heatmap.shape[0]}x{result.heatmap.shape[1]} heatmap, {stats.positions} "
        f"positions in {stats.seconds:.2f} s ({stats.positions_per_second:.1f}/s, "
        f"{stats.mode} on {stats.device})" + (
            f", conv FLOPs {stats.flops_ratio:.2f}x fewer than naive"
            if stats.flops_ratio else "")
    )
    for path in written:
        typer.echo(f"wrote {path}")


def _write(output: Path, values: np.ndarray, result: OcclusionResult, pixels: np.ndarray,
           input_size: int, view: str, model: str, color: str) -> list[Path]:
    output.parent.mkdir(parents=True, exist_ok=True)
    suffix = output.suffix.lower()
    if suffix == ".npy":
        output.write_bytes(render.heatmap_npy(values))
        return [output]
    if suffix == ".json":
        output.write_text(render.heatmap_json(values, _metadata(result, view, model, color)))
        return [output]
    geometry = render.HeatmapGeometry(result.patch_size, result.stride, input_size, input_size)
    overlay = output.with_name(output.stem + ".overlay.png")
    output.write_bytes(render.heatmap_png(values))
    overlay.write_bytes(render.overlay_png(values, pixels, geometry))
    return [output, overlay]


def _metadata(result: OcclusionResult, view: str, model: str, color: str) -> dict[str, object]:
    stats = result.stats
    return {
        "view": view,
        "model": model,
        "target": result.target,
        "target_probability": result.target_probability,
        "predicted_class": result.predicted_class,
        "predicted_probability": result.predicted_probability,
        "params": {"patch_size": result.patch_size, "stride": result.stride,
                   "patch_color": color, "mode": stats.mode},
        "stats": {"positions": stats.positions, "batches": stats.batches,
                  "batch_size": stats.batch_size, "seconds": stats.seconds,
                  "device": stats.device, "flops_full": stats.flops_full,
                  "flops_incremental": stats.flops_incremental,
                  "flops_ratio": stats.flops_ratio,
                  "theoretical_ratio": stats.theoretical_ratio},
    }


@app.command()
def models() -> None:
    """List the architectures krypton can build."""
    for name in list_models():
        spec = get_model_spec(name)
        typer.echo(f"{name:16} {spec.input_size:4d} px  {spec.description}")


@app.command()
def bench(
    models_: Annotated[str, typer.Option(
        "--models", help="Comma-separated architectures.")] = "vgg16,resnet18,inception_v3",
    patch: Annotated[int, typer.Option(help="Patch side in input pixels.")] = 16,
    stride: Annotated[int, typer.Option(help="Stride in input pixels.")] = 16,
    device: Annotated[Device, typer.Option(help="Where to run.")] = Device.cpu,
    batch_size: Annotated[int | None, typer.Option(
        help="Exact engine's batch (default: its memory budget).")] = None,
    captum: Annotated[bool, typer.Option(help="Also time Captum's Occlusion.")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write rows as JSON.")
                        ] = None,
) -> None:
    """Time naive, Captum and exact occlusion in this process and print the speedups."""
    from krypton.bench import format_table, machine_description, run_benchmark

    names = [n.strip() for n in models_.split(",") if n.strip()]
    try:
        rows = run_benchmark(names, patch=patch, stride=stride, device=device.value,
                             exact_batch=batch_size, with_captum=captum,
                             report=lambda line: typer.echo(line, err=True))
    except (EngineError, ModelError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"machine: {machine_description(device.value)}")
    typer.echo(format_table(rows))
    if json_out is not None:
        json_out.write_text(json.dumps(
            {"machine": machine_description(device.value), "rows": [r.as_dict() for r in rows]},
            indent=2))


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)
