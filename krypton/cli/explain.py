"""``krypton explain``, ``krypton tune`` and ``krypton models``: the engine from the shell.

Both commands run what the service runs: a deployment (the registry file the
service reads, or one model made up from ``--model``/``--weights``), a
:class:`~krypton.core.plans.HeatmapPlan` resolved by the same function,
and the same heatmap code as the worker, so a checkpoint explained here and
through the API gives the same array.
"""

from __future__ import annotations

import dataclasses
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import numpy.typing as npt
import typer
from tqdm import tqdm

from krypton import render
from krypton.cli.common import Device, EngineMode, fail
from krypton.core.plans import (
    DEFAULT_PATCH_SIZE,
    DEFAULT_STRIDE,
    HeatmapPlan,
    resolve_heatmap,
    resolve_tuning,
)
from krypton.models import (
    DEFAULT_DATASETS_DIR,
    DatasetStore,
    ModelError,
    decode_image,
    get_model_spec,
    list_models,
)
from krypton.models.deployment import (
    DeployedDataset,
    DeployedModel,
    Deployment,
    default_deployment,
    load_deployment,
)
from krypton.models.images import INFERENCE_SIDE

if TYPE_CHECKING:
    from krypton.engine import OcclusionResult, TuningResult

__all__ = ["register"]


class ViewChoice(StrEnum):
    drop = "drop"
    probability = "probability"


OUTPUT_SUFFIXES = (".npy", ".json", ".png")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")

Registry = Annotated[Path | None, typer.Option(
    envvar="KRYPTON_REGISTRY", help="Deployment registry (as the service reads): --model then "
    "names a deployed model, with its checkpoint, labels and preprocessing.")]
Model = Annotated[str | None, typer.Option(
    help="Architecture (see `krypton models`), or with --registry a deployed model "
    "[default: resnet18, or the registry's first].")]
Weights = Annotated[Path | None, typer.Option(
    help="Fine-tuned checkpoint: state_dict, {'state_dict'|'model': ...} or TorchScript. "
    "Without it (and without --registry), seeded random weights are used.")]
NumClasses = Annotated[int | None, typer.Option(
    help="Classes of a made-up model's head (default: as many as the checkpoint's labels, "
    "else 1000); without it and --weights, --model names a built-in model (4 classes).")]
Seed = Annotated[int, typer.Option(help="Seed of the random weights without --weights.")]
Configs = Annotated[Path, typer.Option(help="Folder of tuned dataset configs.")]

# The commands import the engine (and with it torch) when they run, not when
# `krypton` starts: `krypton serve` in front of Redis workers never loads torch.


def register(app: typer.Typer) -> None:
    app.command()(explain)
    app.command("tune")(tune_dataset)
    app.command()(models)


def explain(
    image: Annotated[Path, typer.Argument(help="PNG, JPEG, TIFF or DICOM image.")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Where to write: .npy, .json or .png (.png also writes "
        "NAME.overlay.png, the heatmap over the image at its own size).")],
    model: Model = None,
    registry: Registry = None,
    weights: Weights = None,
    num_classes: NumClasses = None,
    patch: Annotated[int | None, typer.Option(
        help=f"Patch side, in model-input pixels [default: {DEFAULT_PATCH_SIZE}, or the "
        "dataset's].")] = None,
    stride: Annotated[int | None, typer.Option(
        help=f"Step between patches, in model-input pixels [default: {DEFAULT_STRIDE}, or "
        "the dataset's].")] = None,
    color: Annotated[str, typer.Option(
        help="Patch colour: gray, black, white, mean, or R,G,B (0-255).")] = "gray",
    target: Annotated[int | None, typer.Option(
        help="Class to explain (default: the predicted one).")] = None,
    mode: Annotated[EngineMode, typer.Option(
        help="exact: incremental; approximate: incremental with --dataset or --tau/"
        "--drilldown-ratio; naive: reference.")] = EngineMode.exact,
    dataset: Annotated[str | None, typer.Option(
        help="Use this dataset's tuned config (see `krypton tune`); approximate mode.")] = None,
    configs: Configs = DEFAULT_DATASETS_DIR,
    tau: Annotated[float | None, typer.Option(
        help="Projective-field threshold in (0, 1]; approximate mode.")] = None,
    drilldown_ratio: Annotated[float | None, typer.Option(
        help="Fraction of positions re-run at --stride after a coarse pass.")] = None,
    coarse_stride: Annotated[int | None, typer.Option(
        help="Stride of the drill-down's coarse pass.")] = None,
    drilldown_tolerance: Annotated[float | None, typer.Option(
        help="Refine by bisection until the interpolation is within this share of the "
        "coarse map's range; --drilldown-ratio is then the most refined.")] = None,
    device: Annotated[Device, typer.Option(help="Where the model runs.")] = Device.cpu,
    view: Annotated[ViewChoice | None, typer.Option(
        help="drop = p(class) - p(class | patch), high where evidence is; probability = "
        "p(class | patch). Default: drop for .png, probability for .npy/.json.")] = None,
    seed: Seed = 0,
    frame: Annotated[int | None, typer.Option(
        help="Which frame of a multi-frame DICOM image (1-based).")] = None,
) -> None:
    """Compute the occlusion heatmap of IMAGE and write it to OUTPUT."""
    from krypton.core.jobs import explain as explain_plan
    from krypton.core.model_cache import ModelCache
    from krypton.engine import EngineError

    suffix = output.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        fail(f"--output must end in one of {', '.join(OUTPUT_SUFFIXES)}, got {output.name!r}")
    try:
        deployment = _deployment(registry, model, weights, num_classes, seed, dataset, configs)
        plan = resolve_heatmap(
            deployment, model=model, dataset=dataset,
            config=DatasetStore(deployment.datasets_dir).find(dataset) if dataset else None,
            patch_size=patch, stride=stride, patch_color=color, target_class=target,
            mode=mode.value, tau=tau, drilldown_ratio=drilldown_ratio,
            coarse_stride=coarse_stride, drilldown_tolerance=drilldown_tolerance, frame=frame)
        deployed = deployment.model(plan.model)
        pixels = decode_image(image, max_side=INFERENCE_SIDE, frame=frame,
                              window=deployed.preprocessing.window)
        with tqdm(total=None, unit="pos", disable=not sys.stderr.isatty(),
                  desc=f"{mode.value} occlusion") as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            result = explain_plan(ModelCache(deployment, device.value), plan, pixels,
                                  progress=progress)
    except (EngineError, ModelError, ValueError, OSError) as exc:
        fail(str(exc))

    picked = view or (ViewChoice.drop if suffix == ".png" else ViewChoice.probability)
    chosen: render.View = "drop" if picked is ViewChoice.drop else "probability"
    values = render.view_values(result.heatmap, result.target_probability, chosen)
    written = _write(output, values, result, pixels, deployed, plan, chosen)
    stats = result.stats
    typer.echo(
        f"{deployed.name}: class {_class_name(result.predicted_class, deployed)} predicted "
        f"(p={result.predicted_probability:.4f}), explaining class "
        f"{_class_name(result.target, deployed)} (p={result.target_probability:.4f})\n"
        f"{result.heatmap.shape[0]}x{result.heatmap.shape[1]} heatmap, {stats.positions} "
        f"positions in {stats.seconds:.2f} s ({stats.positions_per_second:.1f}/s, "
        f"{stats.mode} on {stats.device})" + (
            f", conv FLOPs {stats.flops_ratio:.2f}x fewer than naive"
            if stats.flops_ratio else "")
    )
    for path in written:
        typer.echo(f"wrote {path}")


def _deployment(registry: Path | None, model: str | None, weights: Path | None,
                num_classes: int | None, seed: int, dataset: str | None,
                configs: Path) -> Deployment:
    """What ``--model`` names: a model of the registry's deployment, or of the service's
    built-in one (so a dataset tuned here is tuned for the weights the service runs), or
    with ``--weights`` or ``--num-classes`` one made up of that architecture.

    A made-up model's head has one class per checkpoint label, or ``num_classes``
    (default ImageNet's 1000) neutrally named ones.
    """
    if registry is not None:
        if weights is not None or num_classes is not None:
            raise ValueError("--weights and --num-classes describe a model without --registry; "
                             "a registry names its models' checkpoints and labels")
        return load_deployment(registry, configs)
    builtin = default_deployment(configs)
    if weights is None and num_classes is None and (model is None or model in builtin.models):
        name = model or builtin.default_model().name
        typer.echo(f"note: {name} is the service's built-in model, with seeded random weights "
                   "and neutral class names: the heatmap shows the pipeline working, not a "
                   "diagnosis (--registry names a deployment's own).", err=True)
        if dataset is None or dataset in builtin.datasets:
            return builtin
        return dataclasses.replace(
            builtin, datasets={**builtin.datasets, dataset: DeployedDataset(dataset, name)})
    from krypton.models.checkpoints import read_labels

    architecture = model or "resnet18"
    get_model_spec(architecture)
    labels = read_labels(weights) if weights is not None else None
    if labels is None or (num_classes is not None and num_classes != len(labels)):
        labels = tuple(f"class_{i}" for i in range(num_classes or 1000))
    if weights is None:
        typer.echo(
            f"note: no --weights given; {architecture} uses seeded random weights (seed "
            f"{seed}). The heatmap shows the pipeline working, not a diagnosis.", err=True)
    deployed = DeployedModel(name=architecture, architecture=architecture, labels=labels,
                             checkpoint=weights, seed=seed)
    datasets = {dataset: DeployedDataset(dataset, architecture)} if dataset else {}
    return Deployment(models={architecture: deployed}, datasets=datasets, datasets_dir=configs)


def _class_name(index: int, deployed: DeployedModel) -> str:
    """``index`` with its label where the model has real names, e.g. ``1 (HEMORRHAGE)``."""
    label = deployed.labels[index]
    return str(index) if label == f"class_{index}" else f"{index} ({label})"


def _write(output: Path, values: npt.NDArray[np.float32], result: OcclusionResult,
           pixels: npt.NDArray[np.float32], deployed: DeployedModel, plan: HeatmapPlan,
           view: str) -> list[Path]:
    """The files the service would give for this heatmap: its array, its JSON document,
    or its PNG and overlay (with the untrained-model band where weights are random)."""
    from krypton.core.jobs import prediction_of
    from krypton.core.records import heatmap_metadata

    output.parent.mkdir(parents=True, exist_ok=True)
    suffix = output.suffix.lower()
    if suffix == ".npy":
        output.write_bytes(render.heatmap_npy(values))
        return [output]
    if suffix == ".json":
        output.write_text(render.heatmap_json(values, heatmap_metadata(
            None, view, plan, prediction_of(result, deployed), deployed.random_weights,
            result.stats)))
        return [output]
    size = deployed.preprocessing.size
    geometry = render.HeatmapGeometry(result.patch_size, result.stride, size, size)
    overlay = output.with_name(output.stem + ".overlay.png")
    untrained = deployed.random_weights
    output.write_bytes(render.heatmap_png(values, untrained=untrained))
    overlay.write_bytes(render.overlay_png(values, pixels, geometry, untrained=untrained))
    return [output, overlay]


def models() -> None:
    """List the architectures krypton can build."""
    for name in list_models():
        spec = get_model_spec(name)
        typer.echo(f"{name:16} {spec.input_size:4d} px  {spec.description}")


def tune_dataset(
    dataset: Annotated[str, typer.Option(help="Name of the use case, e.g. retina-oct.")],
    images: Annotated[Path, typer.Option(help="Folder of sample images (PNG, JPEG, TIFF).")],
    model: Model = None,
    registry: Registry = None,
    weights: Weights = None,
    num_classes: NumClasses = None,
    target_ssim: Annotated[float, typer.Option(
        help="SSIM against exact heatmaps to keep, on held-out images.")] = 0.90,
    score: Annotated[str, typer.Option(
        help="mean: the images' mean SSIM meets the target; min: every image's does.")
    ] = "mean",
    patch: Annotated[int, typer.Option(help="Patch side in input pixels.")
                     ] = DEFAULT_PATCH_SIZE,
    stride: Annotated[int, typer.Option(help="Stride in input pixels.")] = DEFAULT_STRIDE,
    color: Annotated[str, typer.Option(help="Patch colour.")] = "gray",
    holdout: Annotated[int | None, typer.Option(
        help="Images held out for the final check (default: half).")] = None,
    configs: Configs = DEFAULT_DATASETS_DIR,
    device: Annotated[Device, typer.Option(help="Where the model runs.")] = Device.cpu,
    seed: Seed = 0,
) -> None:
    """Tune approximate inference for one dataset and write its config file."""
    from krypton.core.jobs import tune_dataset as run_tuning
    from krypton.core.model_cache import ModelCache
    from krypton.engine import EngineError

    try:
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        deployment = _deployment(registry, model, weights, num_classes, seed, dataset, configs)
        plan = resolve_tuning(deployment, dataset, images=len(files), patch_size=patch,
                              stride=stride, target_ssim=target_ssim,
                              score=score,  # type: ignore[arg-type]  # resolve refuses others
                              patch_color=color, holdout=holdout, max_images=None)
        window = deployment.model(plan.model).preprocessing.window
        pictures = [decode_image(f, max_side=INFERENCE_SIDE, window=window) for f in files]
        typer.echo(f"tuning {dataset!r} on {len(files)} images, {plan.model}, patch {patch}, "
                   f"stride {stride}, target SSIM {target_ssim}", err=True)
        result, config = run_tuning(ModelCache(deployment, device.value), plan, pictures,
                                    report=lambda line: typer.echo(f"  {line}", err=True))
        path = DatasetStore(deployment.datasets_dir).save(config)
    except (EngineError, ModelError, ValueError, OSError) as exc:
        fail(str(exc))
    typer.echo(_frontier_table(result))
    typer.echo(f"chosen: tau {config.tau}, drill-down ratio {config.drilldown_ratio}, coarse "
               f"stride {config.coarse_stride}, bisection tolerance "
               f"{config.drilldown_tolerance}: {result.speedup:.2f}x over exact, SSIM "
               f"{result.tuning_ssim:.3f} (tuning) / {result.holdout_ssim:.3f} (held out)")
    if result.approximation.is_exact:
        typer.echo(f"note: no approximate setting held SSIM {target_ssim} on the held-out "
                   "images; the config runs exact, as slow as exact mode (more sample images, "
                   "or a lower --target-ssim, may find one)", err=True)
    typer.echo(f"wrote {path}")


def _frontier_table(result: TuningResult) -> str:
    lines = ["| tau | drill-down r | coarse stride | bisection tolerance | s/image | x exact "
             "| x fewer FLOPs | SSIM | timed side by side |",
             "|---|---|---|---|---|---|---|---|---|"]
    for point in result.frontier:
        a = point.approximation
        tolerance = "-" if a.drilldown_tolerance is None else a.drilldown_tolerance
        lines.append(f"| {a.tau:.2f} | {a.drilldown_ratio or '-'} | {a.coarse_stride or '-'} "
                     f"| {tolerance} | {point.seconds:.3f} | {point.speedup:.2f} "
                     f"| {point.flops_ratio or 0:.1f} | {point.ssim:.3f} "
                     f"| {'yes' if point.side_by_side else ''} |")
    return "\n".join(lines)
