"""The ``krypton`` command: explain an image from the shell, or benchmark the engine."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import numpy as np
import typer
from torch import nn
from tqdm import tqdm

from krypton import render
from krypton.engine import (
    Approximation,
    EngineError,
    IncrementalOcclusion,
    OcclusionResult,
    TuningResult,
    make_engine,
    tune,
)
from krypton.models import (
    DatasetConfig,
    DatasetStore,
    ModelError,
    Preprocessing,
    build_model,
    decode_image,
    fingerprint,
    get_model_spec,
    list_models,
    patch_value,
    random_weights_id,
    read_labels,
    to_model_input,
)

T = TypeVar("T")

app = typer.Typer(
    help="Occlusion sensitivity heatmaps for CNN image classifiers, by incremental inference.",
    no_args_is_help=True,
    add_completion=False,
)


class EngineMode(StrEnum):
    exact = "exact"
    approximate = "approximate"
    naive = "naive"


class Device(StrEnum):
    cpu = "cpu"
    cuda = "cuda"


class ViewChoice(StrEnum):
    drop = "drop"
    probability = "probability"


OUTPUT_SUFFIXES = (".npy", ".json", ".png")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DEFAULT_PATCH, DEFAULT_STRIDE = 16, 4
DEFAULT_CONFIGS = Path("datasets")


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
    num_classes: Annotated[int | None, typer.Option(
        help="Classes of the model's head (default: as many as the checkpoint's labels, "
        "else 1000).")] = None,
    patch: Annotated[int | None, typer.Option(
        help="Patch side, in model-input pixels [default: 16, or the dataset's].")] = None,
    stride: Annotated[int | None, typer.Option(
        help="Step between patches, in model-input pixels [default: 4, or the dataset's].")
    ] = None,
    color: Annotated[str, typer.Option(
        help="Patch colour: gray, black, white, mean, or R,G,B (0-255).")] = "gray",
    target: Annotated[int | None, typer.Option(
        help="Class to explain (default: the predicted one).")] = None,
    mode: Annotated[EngineMode, typer.Option(
        help="exact: incremental; approximate: incremental with --dataset or --tau/"
        "--drilldown-ratio; naive: reference.")] = EngineMode.exact,
    dataset: Annotated[str | None, typer.Option(
        help="Use this dataset's tuned config (see `krypton tune`); approximate mode.")] = None,
    configs: Annotated[Path, typer.Option(help="Folder of tuned dataset configs.")
                       ] = DEFAULT_CONFIGS,
    tau: Annotated[float | None, typer.Option(
        help="Projective-field threshold in (0, 1]; approximate mode.")] = None,
    drilldown_ratio: Annotated[float | None, typer.Option(
        help="Fraction of positions re-run at --stride after a coarse pass.")] = None,
    coarse_stride: Annotated[int | None, typer.Option(
        help="Stride of the drill-down's coarse pass.")] = None,
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
        labels = read_labels(weights) if weights is not None else None
        network, checkpoint = _load_network(model, weights, num_classes, labels, seed)
        approximation, patch, stride = _approximation(
            mode, dataset, configs, tau, drilldown_ratio, coarse_stride, model, checkpoint,
            patch, stride,
        )
        with tqdm(total=None, unit="pos", disable=not sys.stderr.isatty(),
                  desc=f"{mode.value} occlusion") as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            result = (approximation or Approximation()).attribute(
                make_engine(network, mode.value, device=device.value),
                to_model_input(pixels, preprocessing), patch, stride,
                patch_value=patch_value(color, preprocessing), target=target,
                batch_size=batch_size, progress=progress,
            )
    except (EngineError, ModelError, ValueError, OSError) as exc:
        _fail(str(exc))

    picked = view or (ViewChoice.drop if suffix == ".png" else ViewChoice.probability)
    chosen: render.View = "drop" if picked is ViewChoice.drop else "probability"
    values = render.view_values(result.heatmap, result.target_probability, chosen)
    written = _write(output, values, result, pixels, spec.input_size, chosen, model, color)
    stats = result.stats
    typer.echo(
        f"{model}: class {_class_name(result.predicted_class, labels)} predicted "
        f"(p={result.predicted_probability:.4f}), explaining class "
        f"{_class_name(result.target, labels)} (p={result.target_probability:.4f})\n"
        f"{result.heatmap.shape[0]}x{result.heatmap.shape[1]} heatmap, {stats.positions} "
        f"positions in {stats.seconds:.2f} s ({stats.positions_per_second:.1f}/s, "
        f"{stats.mode} on {stats.device})" + (
            f", conv FLOPs {stats.flops_ratio:.2f}x fewer than naive"
            if stats.flops_ratio else "")
    )
    for path in written:
        typer.echo(f"wrote {path}")


def _load_network(model: str, weights: Path | None, num_classes: int | None,
                  labels: tuple[str, ...] | None, seed: int) -> tuple[nn.Module, str]:
    """The model, and what identifies its weights (checkpoint hash or random seed).

    Without ``num_classes`` the head has one class per checkpoint label, or
    ImageNet's 1000 where the checkpoint names none.
    """
    if num_classes is None:
        num_classes = len(labels) if labels else 1000
    network = build_model(model, num_classes=num_classes, weights=weights, seed=seed)
    if weights is None:
        typer.echo(
            f"note: no --weights given; {model} uses seeded random weights (seed {seed}). "
            "The heatmap shows the pipeline working, not a diagnosis.", err=True)
        return network, random_weights_id(seed, num_classes)
    return network, fingerprint(weights)


def _class_name(index: int, labels: tuple[str, ...] | None) -> str:
    """``index`` with its label where the checkpoint names one, e.g. ``1 (HEMORRHAGE)``."""
    if labels is None or not 0 <= index < len(labels):
        return str(index)
    return f"{index} ({labels[index]})"


def _approximation(
    mode: EngineMode, dataset: str | None, configs: Path, tau: float | None,
    drilldown_ratio: float | None, coarse_stride: int | None, model: str, checkpoint: str,
    patch: int | None, stride: int | None,
) -> tuple[Approximation | None, int, int]:
    """The approximation to run with, and the patch and stride it applies to."""
    knobs = (tau, drilldown_ratio, coarse_stride)
    if mode is not EngineMode.approximate:
        if dataset is not None or any(k is not None for k in knobs):
            raise ValueError("--dataset, --tau, --drilldown-ratio and --coarse-stride need "
                             "--mode approximate")
        return None, patch or DEFAULT_PATCH, stride or DEFAULT_STRIDE
    if dataset is not None:
        if any(k is not None for k in knobs):
            raise ValueError("give either --dataset or --tau/--drilldown-ratio/--coarse-stride")
        config = DatasetStore(configs).load(dataset)
        config.check_compatible(model, checkpoint, patch, stride)
        approximation = Approximation(config.tau, config.drilldown_ratio, config.coarse_stride)
        return approximation, config.patch_size, config.stride
    if all(k is None for k in knobs):
        raise ValueError("--mode approximate needs --dataset, or --tau and/or "
                         "--drilldown-ratio with --coarse-stride")
    approximation = Approximation(tau if tau is not None else 1.0, drilldown_ratio,
                                  coarse_stride)
    return approximation, patch or DEFAULT_PATCH, stride or DEFAULT_STRIDE


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


@app.command("tune")
def tune_dataset(
    dataset: Annotated[str, typer.Option(help="Name of the use case, e.g. retina-oct.")],
    images: Annotated[Path, typer.Option(help="Folder of sample images (PNG, JPEG, TIFF).")],
    model: Annotated[str, typer.Option(help="Architecture (see `krypton models`).")] = "resnet18",
    weights: Annotated[Path | None, typer.Option(help="Fine-tuned checkpoint.")] = None,
    num_classes: Annotated[int | None, typer.Option(
        help="Classes of the model's head (default: as many as the checkpoint's labels, "
        "else 1000).")] = None,
    target_ssim: Annotated[float, typer.Option(
        help="Mean SSIM against exact heatmaps to keep, on held-out images.")] = 0.90,
    patch: Annotated[int, typer.Option(help="Patch side in input pixels.")] = DEFAULT_PATCH,
    stride: Annotated[int, typer.Option(help="Stride in input pixels.")] = DEFAULT_STRIDE,
    color: Annotated[str, typer.Option(help="Patch colour.")] = "gray",
    holdout: Annotated[int | None, typer.Option(
        help="Images held out for the final check (default: half).")] = None,
    configs: Annotated[Path, typer.Option(help="Folder to write the config to.")
                       ] = DEFAULT_CONFIGS,
    device: Annotated[Device, typer.Option(help="Where the model runs.")] = Device.cpu,
    seed: Annotated[int, typer.Option(help="Seed of the random weights without --weights.")
                    ] = 0,
) -> None:
    """Tune approximate inference for one dataset and write its config."""
    try:
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) < 2:
            raise ValueError(f"{images} holds {len(files)} image(s); tuning needs at least 2")
        spec = get_model_spec(model)
        preprocessing = Preprocessing(spec.input_size)
        samples = [to_model_input(decode_image(f), preprocessing) for f in files]
        labels = read_labels(weights) if weights is not None else None
        network, checkpoint = _load_network(model, weights, num_classes, labels, seed)
        typer.echo(f"tuning {dataset!r} on {len(files)} images, {model}, patch {patch}, "
                   f"stride {stride}, target SSIM {target_ssim}", err=True)
        result = tune(
            IncrementalOcclusion(network, device=device.value), samples, patch, stride,
            target_ssim=target_ssim, patch_value=patch_value(color, preprocessing),
            holdout=holdout, report=lambda line: typer.echo(f"  {line}", err=True),
        )
        config = DatasetConfig(
            dataset=dataset, model=model, checkpoint=checkpoint, patch_size=patch,
            stride=stride, tau=result.approximation.tau,
            drilldown_ratio=result.approximation.drilldown_ratio,
            coarse_stride=result.approximation.coarse_stride, target_ssim=target_ssim,
            achieved_ssim=round(result.holdout_ssim, 4), speedup=round(result.speedup, 3),
        )
        path = DatasetStore(configs).save(config)
    except (EngineError, ModelError, ValueError, OSError) as exc:
        _fail(str(exc))
    typer.echo(_frontier_table(result))
    typer.echo(f"chosen: tau {config.tau}, drill-down ratio {config.drilldown_ratio}, coarse "
               f"stride {config.coarse_stride}: {result.speedup:.2f}x over exact, SSIM "
               f"{result.tuning_ssim:.3f} (tuning) / {result.holdout_ssim:.3f} (held out)")
    typer.echo(f"wrote {path}")


def _frontier_table(result: TuningResult) -> str:
    lines = ["| tau | drill-down r | coarse stride | s/image | x exact | SSIM |",
             "|---|---|---|---|---|---|"]
    for point in result.frontier:
        a = point.approximation
        lines.append(f"| {a.tau:.2f} | {a.drilldown_ratio or '-'} | {a.coarse_stride or '-'} "
                     f"| {point.seconds:.3f} | {point.speedup:.2f} | {point.ssim:.3f} |")
    return "\n".join(lines)


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
    approximate: Annotated[bool, typer.Option(
        help="Benchmark tuned approximate inference instead: tune on half of the sample "
        "images, then time approximate vs exact vs naive on the other half.")] = False,
    samples: Annotated[int, typer.Option(help="Sample images for --approximate.")] = 4,
    target_ssim: Annotated[float, typer.Option(help="SSIM target for --approximate.")] = 0.9,
    demo_weights: Annotated[Path | None, typer.Option(
        help="With --approximate: the folder of `krypton demo train` checkpoints; explains "
        "held-out demo lesion images with the trained models instead of untrained ones.")
                            ] = None,
    check: Annotated[int, typer.Option(
        help="With --demo-weights: score the chosen setting's SSIM on this many further "
        "demo images (not timed).")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write rows as JSON.")
                        ] = None,
) -> None:
    """Time naive, Captum and exact occlusion in this process and print the speedups."""
    from krypton.benchmarks.engine import (
        format_approximate_table,
        format_table,
        machine_description,
        run_approximate_benchmark,
        run_benchmark,
    )

    names = [n.strip() for n in models_.split(",") if n.strip()]
    if not approximate and (demo_weights is not None or check):
        _fail("--demo-weights and --check apply to --approximate only")
    if approximate:
        try:
            approximate_rows = run_approximate_benchmark(
                names, patch=patch, stride=stride, samples=samples, target_ssim=target_ssim,
                device=device.value, demo_weights=demo_weights, check=check,
                report=lambda line: typer.echo(line, err=True))
        except (EngineError, ModelError, ValueError, OSError) as exc:
            _fail(str(exc))
        typer.echo(f"machine: {machine_description(device.value)}")
        typer.echo(format_approximate_table(approximate_rows))
        if json_out is not None:
            json_out.write_text(json.dumps({
                "machine": machine_description(device.value),
                "rows": [r.as_dict() for r in approximate_rows]}, indent=2))
        return
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


demo_app = typer.Typer(
    help="The demo use case: fundus photographs with synthetic lesions, and models "
    "trained on them.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")


@demo_app.command("train")
def demo_train(
    model: Annotated[str, typer.Option(help="Architecture (see `krypton models`).")
                     ] = "resnet18",
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 600,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of the initial weights and images.")] = 0,
    full_size_share: Annotated[float, typer.Option(
        help="Share of the steps, at the end, on full-size images (the rest use half "
        "the side).")] = 0.15,
    out: Annotated[Path, typer.Option(help="Folder for demo-MODEL.pt and its report.")
                   ] = Path("checkpoints"),
) -> None:
    """Train MODEL to tell the demo's lesions apart and write its checkpoint."""
    from krypton.demo import demo_checkpoint, save_checkpoint, train_demo_model

    try:
        network, report = train_demo_model(
            model, steps=steps, batch_size=batch_size, seed=seed,
            full_size_share=full_size_share, report=lambda line: typer.echo(line, err=True))
        path = save_checkpoint(network, report, demo_checkpoint(out, model))
        path.with_suffix(".json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    except (ModelError, ValueError, OSError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {path} (validation accuracy {report.accuracy:.3f}, "
               f"{report.seconds:.0f} s)")


@demo_app.command("images")
def demo_images(
    out: Annotated[Path, typer.Option(help="Folder to write PNG images to.")],
    count: Annotated[int, typer.Option(help="How many images.")] = 8,
    size: Annotated[int, typer.Option(help="Side in pixels (the model's input size).")] = 224,
    seed: Annotated[int | None, typer.Option(
        help="Seed (default: the one tuning and the benchmark use, which training never "
        "draws from).")] = None,
) -> None:
    """Write demo images with one lesion each, e.g. for `krypton tune --images`."""
    from PIL import Image

    from krypton.demo import SAMPLE_SEED, lesion_samples

    try:
        out.mkdir(parents=True, exist_ok=True)
        images = lesion_samples(size, count, seed=SAMPLE_SEED if seed is None else seed)
        for index, pixels in enumerate(images):
            Image.fromarray((pixels * 255.0).round().astype(np.uint8)).save(
                out / f"lesion-{index:03d}.png")
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {count} images to {out}")


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
) -> None:
    """Run the REST API. Without KRYPTON_REDIS_URL it also runs an in-process worker."""
    import uvicorn

    from krypton.service.app import create_app
    from krypton.service.config import get_settings

    settings = _settings_or_fail(get_settings)
    _configure_logging(settings.log_level)
    if settings.embedded:
        typer.echo("embedded mode: in-process queue and worker (set KRYPTON_REDIS_URL to use "
                   "Redis and `krypton worker` processes)", err=True)
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None)


@app.command()
def worker(
    burst: Annotated[bool, typer.Option(help="Exit once the queue is empty.")] = False,
    preload: Annotated[bool, typer.Option(
        help="Load every deployed model before taking jobs (bad checkpoints show at start).")
    ] = True,
) -> None:
    """Run a worker: claim heatmap jobs from Redis, compute, store. One per GPU."""
    import asyncio
    import signal

    from krypton.service.app import make_deployment, make_queue
    from krypton.service.config import get_settings
    from krypton.service.worker import Worker

    settings = _settings_or_fail(get_settings)
    _configure_logging(settings.log_level)
    if settings.embedded:
        _fail("krypton worker needs KRYPTON_REDIS_URL (e.g. redis://localhost:6379/0); "
              "`krypton serve` without it runs its own worker")

    async def main() -> None:
        queue = make_queue(settings)
        runner = Worker(queue, make_deployment(settings), device=settings.device,
                        max_pixels=settings.max_pixels)
        if preload:
            await asyncio.to_thread(runner.cache.preload)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, runner.stop)
        try:
            await runner.run(burst=burst)
        finally:
            await queue.close()

    asyncio.run(main())


def _settings_or_fail(get: Callable[[], T]) -> T:
    try:
        return get()
    except ValueError as exc:  # pydantic's ValidationError names the bad variable
        _fail(f"invalid KRYPTON_* environment: {exc}")


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def openapi(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the document.")
                      ] = Path("openapi/openapi.json"),
) -> None:
    """Export the API's OpenAPI document (what the running service serves at /openapi.json)."""
    from krypton.service.app import create_app
    from krypton.service.config import Settings

    document = create_app(Settings()).openapi()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    typer.echo(f"wrote {output}")


@app.command("bench-api")
def bench_api(
    url: Annotated[str, typer.Option(help="The running API.")] = "http://127.0.0.1:8000",
    image: Annotated[Path, typer.Option(help="Image to submit.")] = Path("examples/retina.jpg"),
    model: Annotated[str, typer.Option(help="Deployed model.")] = "resnet18",
    patch: Annotated[int, typer.Option(help="Patch side in input pixels.")] = 16,
    stride: Annotated[int, typer.Option(help="Stride in input pixels.")] = 16,
    jobs: Annotated[int, typer.Option(help="Jobs per concurrency level.")] = 20,
    concurrency: Annotated[str, typer.Option(
        help="Comma-separated numbers of clients submitting at once.")] = "1,4",
    direct: Annotated[bool, typer.Option(
        help="With one client, pair each job with a direct engine call here (default "
        "registry models only): the API's overhead per job.")] = True,
) -> None:
    """Load a running service with heatmap jobs; print throughput, p50/p95 and overhead."""
    from krypton.benchmarks.service import engine_call, format_report, run_load

    form = {"model": model, "patch_size": str(patch), "stride": str(stride)}
    direct_call = (engine_call(image, model=model, patch_size=patch, stride=stride)
                   if direct else None)
    reports = [run_load(url, image, jobs=jobs, concurrency=int(c), form=form,
                        direct=direct_call, report=lambda line: typer.echo(line, err=True))
               for c in concurrency.split(",")]
    typer.echo(format_report(reports))
