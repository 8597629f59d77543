"""Fine-tune a deployed architecture on the synthetic-lesion fundus task.

The network starts from its seeded random initialisation (no pretrained
weights can be downloaded) and learns from a fresh stream of generated
images, so there is no fixed training set to overfit. Accuracy is measured on
images from a seed the training never draws from. The checkpoint is a plain
``state_dict`` with the labels beside it, which :func:`krypton.models.build_model`
loads like any fine-tuned model.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from krypton.demo.lesions import LABELS, VALIDATION_SEED, FundusLesions, LesionBatch
from krypton.demo.supervision import LesionMapHead
from krypton.demo.twins import TWINS, fold_twin, lesion_map_layer, training_twin
from krypton.models import (
    Preprocessing,
    build_model,
    classifier_head,
    get_model_spec,
    normalize,
    seeded,
)

__all__ = ["TrainingReport", "TrainingStreams", "accuracy", "confusion_matrix", "default_steps",
           "demo_checkpoint", "per_class", "save_checkpoint", "train_demo_model"]

_STEPS = 600
_STEPS_BY_MODEL = {"resnet18": 1200, "inception_v3": 800, "vgg16": 540}
"""Steps per architecture (BENCHMARKS.md, "Demo models"). ResNet18's steps are
cheap, and after 600 it still read 5 of 16 hemorrhages as normal. VGG16's are
the dearest: 600 took 30.2 minutes on a slower CPU (98.4%), 540 took 27.2
(98.8%). InceptionV3 after 600 read 93.8% on one CPU but 85.9% on another,
with normal images and hemorrhages confused (75% of hemorrhages right): a
different CPU's kernels sum in a different order, and that was enough to move
it. After 800 it read 93.8% there on 256 validation images, every class past
85%."""

_LEARNING_RATE = 3e-4
"""Adam's step size from scratch. ResNet18 and InceptionV3 learn the task at it
(BENCHMARKS.md, "Demo models"). VGG16's twin needs its lesion map as well: on
the label alone it learned only exudates, at this rate and at 1e-3."""

_FULL_SIZE_STREAM = 3_000_017
"""Added to the seed of the full-size image stream, so the last steps draw new
labels and views instead of replaying the half-size stream's first ones. Above
the validation and sample seeds, so it draws neither of theirs; and below
``2**32``: torch's CPU generator keeps only a seed's low 32 bits, so an offset of
``2**32`` would replay the half-size stream exactly."""


@dataclass(frozen=True)
class TrainingReport:
    model: str
    steps: int
    batch_size: int
    learning_rate: float
    seed: int
    seconds: float
    """Training alone, without the validation."""
    final_loss: float
    """Mean classification loss (cross-entropy) over the last tenth of the steps."""
    accuracy: float
    """On ``validation`` images from :data:`VALIDATION_SEED`, without occluders."""
    validation: int
    confusion: tuple[tuple[int, ...], ...]
    """On the same images: row the true label, column the predicted one
    (:func:`confusion_matrix`)."""
    lesion_maps: bool = False
    """Whether a lesion map trained beside the classifier (:mod:`krypton.demo.supervision`)."""
    labels: tuple[str, ...] = LABELS
    validation_seconds: float = 0.0
    """Measuring ``accuracy``, apart from :attr:`seconds` of training."""

    def per_class(self) -> dict[str, float]:
        """Share of each label's validation images read as that label (:func:`per_class`)."""
        return per_class(self.confusion, self.labels)

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"per_class": self.per_class()}


def default_steps(name: str) -> int:
    """How many steps ``krypton demo train`` takes for architecture ``name``."""
    return _STEPS_BY_MODEL.get(name, _STEPS)


def train_demo_model(
    name: str,
    *,
    steps: int | None = None,
    batch_size: int = 16,
    learning_rate: float | None = None,
    seed: int = 0,
    occluders: float = 0.5,
    full_size_share: float = 0.15,
    validation: int = 256,
    device: str = "cpu",
    report: Callable[[str], None] | None = None,
) -> tuple[nn.Module, TrainingReport]:
    """Train ``name`` for ``steps`` batches; returns the eval-mode model and a report.

    Progressive resizing keeps this affordable on a CPU: all but the last
    ``full_size_share`` of the steps see images of half the input side (a
    quarter of the compute) with lesions at the pixel size the full-size
    model meets; the last steps adapt the network to full-size views.
    Architectures that train as a twin (VGG) also learn a lesion map from the
    lesions' boxes, which is dropped before the model is returned.

    Args:
        name: a registered architecture (``resnet18``, ``vgg16``, ``inception_v3`` ...).
        steps: optimiser steps (default: :func:`default_steps`).
        batch_size: images per step.
        learning_rate: Adam's step size.
        seed: seeds the initial weights, the image stream, dropout and the
            lesion map's initial weights.
        occluders: share of training images with plain squares pasted away from
            the lesion (see :mod:`krypton.demo.lesions`).
        full_size_share: share of the steps, at the end, on full-size images.
        validation: images to measure accuracy on, the labels in turn. With
            16 per label one image moved a label's share by 6 points, enough
            to put a model on either side of 85% by chance
            (BENCHMARKS.md, "Demo models"); 64 per label is 1.6 points each.
        device: where the model trains (the images are drawn on the CPU).
        report: called with a line of progress every few steps.
    """
    steps = default_steps(name) if steps is None else steps
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps}, {batch_size}")
    if not 0 <= seed < VALIDATION_SEED:
        raise ValueError(f"seed must be in [0, {VALIDATION_SEED}), got {seed}")
    if learning_rate is not None and learning_rate <= 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    if validation < 1:
        raise ValueError(f"validation must be at least 1 image, got {validation}")
    if not 0.0 <= full_size_share <= 1.0:
        raise ValueError(f"full_size_share must be in [0, 1], got {full_size_share}")
    say = report or (lambda line: None)
    spec = get_model_spec(name)
    rate = learning_rate if learning_rate is not None else _LEARNING_RATE
    model = _trainable_model(name, seed)
    _zero_head(model)
    streams = TrainingStreams.for_model(name, seed=seed, occluders=occluders,
                                        batch_size=batch_size,
                                        full_from=steps - round(full_size_share * steps))
    started = time.perf_counter()
    with seeded(seed, device):  # dropout and the lesion map's start draw from these
        losses, map_losses = _fit(name, model, streams, steps=steps, rate=rate, device=device,
                                  say=say)
    model = model.cpu().eval()
    if name in TWINS:
        model = fold_twin(model, build_model(name, num_classes=len(LABELS), seed=seed))
    trained = time.perf_counter()
    confusion = confusion_matrix(model, spec.input_size, spec.preprocessing, validation)
    result = TrainingReport(
        model=name, steps=steps, batch_size=batch_size, learning_rate=rate, seed=seed,
        seconds=trained - started,
        final_loss=_mean(losses[-max(1, steps // 10):]),
        accuracy=accuracy(confusion), validation=validation, confusion=confusion,
        lesion_maps=bool(map_losses), validation_seconds=time.perf_counter() - trained,
    )
    say(f"{name}: validation accuracy {result.accuracy:.3f} on {validation} full-size images")
    return model, result


@torch.inference_mode()
def confusion_matrix(model: nn.Module, size: int, preprocessing: Preprocessing,
                     count: int) -> tuple[tuple[int, ...], ...]:
    """Counts on ``count`` validation images (the labels in turn): row true, column predicted.

    Accuracy alone hides a model that reads one lesion kind as normal; the
    rows show which kinds it gets and which it confuses.
    """
    images = FundusLesions(size, seed=VALIDATION_SEED)
    counts = torch.zeros(len(LABELS), len(LABELS), dtype=torch.int64)
    for start in range(0, count, 16):
        labels = [i % len(LABELS) for i in range(start, min(start + 16, count))]
        batch = images.batch(len(labels), labels)
        predicted = model(normalize(batch.images, preprocessing)).argmax(dim=1)
        counts.index_put_((batch.labels, predicted), torch.tensor(1), accumulate=True)
    return tuple(tuple(row) for row in counts.tolist())


def accuracy(confusion: tuple[tuple[int, ...], ...]) -> float:
    """Share of all images read as their true label."""
    return sum(row[index] for index, row in enumerate(confusion)) / sum(map(sum, confusion))


def per_class(confusion: tuple[tuple[int, ...], ...],
              labels: tuple[str, ...] = LABELS) -> dict[str, float]:
    """Share of each label's images read as that label.

    Labels with no image (fewer images than labels) are left out rather than
    shown as 0%.
    """
    return {label: row[index] / sum(row)
            for index, (label, row) in enumerate(zip(labels, confusion, strict=True))
            if sum(row)}


def save_checkpoint(model: nn.Module, report: TrainingReport,
                    path: str | os.PathLike[str]) -> Path:
    """Write the ``state_dict`` with the labels and the training report beside it.

    Written to a temporary name and renamed, so an interrupted save never
    leaves a truncated checkpoint behind.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    torch.save({"state_dict": model.state_dict(), "labels": list(report.labels),
                "training": report.as_dict() | {"labels": list(report.labels)}}, partial)
    os.replace(partial, target)
    return target


def demo_checkpoint(folder: str | os.PathLike[str], name: str) -> Path:
    """Where ``krypton demo train`` keeps the checkpoint of architecture ``name``."""
    return Path(folder) / f"demo-{name}.pt"


def _trainable_model(name: str, seed: int) -> nn.Module:
    """The network to train for architecture ``name``, in train mode.

    VGG trains as its twin (batch norm, pooled head) and is folded back into a
    plain VGG after training (see :mod:`krypton.demo.twins`). Architectures
    with optional training heads (InceptionV3's auxiliary classifier) train
    without them: the deployed model never uses them.
    """
    if name in TWINS:
        return training_twin(name, len(LABELS), seed).train()
    options: dict[str, Any] = (
        {"aux_logits": False} if get_model_spec(name).checkpoint_options is not None else {}
    )
    return build_model(name, num_classes=len(LABELS), seed=seed, **options).train()


@dataclass(frozen=True)
class TrainingStreams:
    """The images a training run sees: half-size views up to step ``full_from``,
    full-size after, each size from a stream of its own (the full-size one is not
    the half-size one replayed larger)."""

    small: FundusLesions
    full: FundusLesions
    full_from: int
    batch_size: int
    preprocessing: Preprocessing

    @classmethod
    def for_model(cls, name: str, *, seed: int, occluders: float, batch_size: int,
                  full_from: int) -> TrainingStreams:
        spec = get_model_spec(name)
        size = spec.input_size
        small = FundusLesions(max(size // 2, 80), seed=seed, occluders=occluders,
                              lesion_scale=size / 224)
        full = FundusLesions(size, seed=seed + _FULL_SIZE_STREAM, occluders=occluders)
        return cls(small, full, full_from, batch_size, spec.preprocessing)

    def batch(self, step: int) -> LesionBatch:
        return (self.small if step < self.full_from else self.full).batch(self.batch_size)


def _fit(name: str, model: nn.Module, streams: TrainingStreams, *, steps: int, rate: float,
         device: str, say: Callable[[str], None]) -> tuple[list[float], list[float]]:
    """Train ``model`` in place.

    Returns each step's classification loss, and its lesion-map loss (empty
    for architectures that train without a map).
    """
    lesion_map = _lesion_map(name, model)
    losses: list[float] = []
    map_losses: list[float] = []
    try:
        parameters = list(model.to(device).parameters())
        if lesion_map is not None:
            parameters += list(lesion_map.to(device).parameters())
        optimiser = torch.optim.Adam(parameters, lr=rate)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, _warmup_cosine(steps))
        started = time.perf_counter()
        for step in range(steps):
            batch = streams.batch(step)
            logits = model(normalize(batch.images, streams.preprocessing).to(device))
            loss = F.cross_entropy(logits, batch.labels.to(device))
            losses.append(loss.item())
            if lesion_map is not None:
                map_loss = lesion_map.loss(batch.boxes, batch.images.shape[-1])
                map_losses.append(map_loss.item())
                loss = loss + map_loss
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            schedule.step()
            if (step + 1) % 10 == 0 or step + 1 == steps:
                say(_progress_line(name, step + 1, steps, batch.images.shape[-1], losses,
                                   map_losses, time.perf_counter() - started))
    finally:
        if lesion_map is not None:
            lesion_map.remove()
    return losses, map_losses


def _progress_line(name: str, done: int, steps: int, side: int, losses: list[float],
                   map_losses: list[float], seconds: float) -> str:
    """The last ten steps' mean losses, as ``report`` receives them."""
    line = f"{name} step {done}/{steps} ({side} px): loss {_mean(losses[-10:]):.3f}"
    if map_losses:
        line += f", lesion map {_mean(map_losses[-10:]):.3f}"
    return f"{line} ({seconds:.0f} s)"


def _lesion_map(name: str, model: nn.Module) -> LesionMapHead | None:
    """The lesion-map head for an architecture that trains as a twin, else None."""
    if name not in TWINS:
        return None
    layer, channels = lesion_map_layer(model)
    return LesionMapHead(model, layer, channels)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _zero_head(model: nn.Module) -> None:
    """Start the classifier at zero, as a new fine-tuning head does.

    InceptionV3's initialisation (truncated normal, std 0.1) gives a random
    head confident logits; Adam moves each weight by about its step size per
    step, so unlearning them took hundreds of steps before any lesion was.
    """
    head = classifier_head(model)
    with torch.no_grad():
        head.weight.zero_()
        if head.bias is not None:
            head.bias.zero_()


def _warmup_cosine(steps: int) -> Callable[[int], float]:
    """Linear warm-up over the first 5% of steps, then cosine decay to zero."""
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
