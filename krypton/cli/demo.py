"""``krypton demo``: the demo's lesion images and the models trained on them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from krypton.cli.common import Device, fail
from krypton.models import ModelError

__all__ = ["register"]

demo_app = typer.Typer(
    help="The demo use case: fundus photographs with synthetic lesions, and models "
    "trained on them.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(demo_app, name="demo")


@demo_app.command("train")
def demo_train(
    model: Annotated[str, typer.Option(help="Architecture (see `krypton models`).")
                     ] = "resnet18",
    steps: Annotated[int | None, typer.Option(
        help="Optimiser steps (default: 1200 for resnet18, 800 for inception_v3, "
             "540 for vgg16, 600 for the others).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of the initial weights and images.")] = 0,
    full_size_share: Annotated[float, typer.Option(
        help="Share of the steps, at the end, on full-size images (the rest use half "
        "the side).")] = 0.15,
    out: Annotated[Path, typer.Option(help="Folder for demo-MODEL.pt and its report.")
                   ] = Path("checkpoints"),
    validation: Annotated[int, typer.Option(
        help="Validation images to measure accuracy on, the labels in turn.")] = 256,
    device: Annotated[Device, typer.Option(help="Where the model trains.")] = Device.cpu,
) -> None:
    """Train MODEL to tell the demo's lesions apart and write its checkpoint."""
    from krypton.demo import demo_checkpoint, save_checkpoint, train_demo_model

    try:
        network, report = train_demo_model(
            model, steps=steps, batch_size=batch_size, seed=seed,
            full_size_share=full_size_share, validation=validation, device=device.value,
            report=lambda line: typer.echo(line, err=True))
        path = save_checkpoint(network, report, demo_checkpoint(out, model))
        path.with_suffix(".json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    except (ModelError, ValueError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"wrote {path} (validation accuracy {report.accuracy:.3f}: "
               f"{_shares(report.per_class())}; {report.seconds:.0f} s of training)")


@demo_app.command("evaluate")
def demo_evaluate(
    model: Annotated[str, typer.Option(help="Architecture (see `krypton models`).")
                     ] = "resnet18",
    checkpoints: Annotated[Path, typer.Option(
        help="Folder holding demo-MODEL.pt, as `krypton demo train --out` wrote it.")
                           ] = Path("checkpoints"),
    validation: Annotated[int, typer.Option(
        min=1, help="Validation images to measure accuracy on, the labels in turn.")] = 256,
) -> None:
    """Measure a trained demo model's accuracy per class again, e.g. on more images.

    Prints the confusion matrix (rows the true label, columns the predicted one).
    """
    from krypton.demo import LABELS, accuracy, confusion_matrix, demo_checkpoint, per_class
    from krypton.models import build_model, get_model_spec

    try:
        spec = get_model_spec(model)
        network = build_model(model, num_classes=len(LABELS),
                              weights=demo_checkpoint(checkpoints, model))
    except ModelError as exc:
        fail(str(exc))
    confusion = confusion_matrix(network, spec.input_size, spec.preprocessing, validation)
    for label, row in zip(LABELS, confusion, strict=True):
        typer.echo(f"{label:>15} {' '.join(f'{count:4d}' for count in row)}")
    typer.echo(f"{model}: validation accuracy {accuracy(confusion):.3f} on {validation} "
               f"images: {_shares(per_class(confusion))}")


def _shares(per_label: dict[str, float]) -> str:
    return ", ".join(f"{label} {share:.0%}" for label, share in per_label.items())


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
        fail(str(exc))
    typer.echo(f"wrote {count} images to {out}")
