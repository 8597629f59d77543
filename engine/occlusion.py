"""The one-call entry point: ``occlusion(model, image, patch_size, stride)``.

Building an engine traces the model and copies it to the device, which costs
more than a small heatmap. ``occlusion()`` therefore keeps the engines it
builds, weakly keyed by the caller's model: a second call on the same model
reuses them, a model that is garbage-collected takes its engines with it, and
a model whose weights changed in place since (an optimiser step,
``load_state_dict``) gets fresh ones.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

import torch
from torch import Tensor, nn

from krypton.approximation import Approximation
from krypton.engine.approximation import approximate
from krypton.engine.base import (
    OcclusionEngine,
    Output,
    PartialCallback,
    ProgressCallback,
    StopCheck,
)
from krypton.engine.errors import InvalidParamsError
from krypton.engine.incremental import IncrementalOcclusion
from krypton.engine.patches import PatchValue
from krypton.engine.reference import ReferenceOcclusion
from krypton.engine.result import OcclusionResult

__all__ = ["MODES", "kept_engine", "make_engine", "occlusion"]

MODES: tuple[str, ...] = ("exact", "approximate", "naive")

_Key = tuple[str, str, str]
_engines: weakref.WeakKeyDictionary[nn.Module, dict[_Key, tuple[Any, OcclusionEngine]]] = (
    weakref.WeakKeyDictionary())


def make_engine(
    model: nn.Module, mode: str = "exact", *, device: torch.device | str | None = None,
    output: Output = "logits", copy: bool = True,
) -> OcclusionEngine:
    """The engine for ``mode``; build it once and call ``attribute`` per image.

    ``exact`` and ``approximate`` share the incremental engine; the
    approximation is chosen per call.
    """
    if mode in ("exact", "approximate"):
        return IncrementalOcclusion(model, device=device, output=output, copy=copy)
    if mode == "naive":
        return ReferenceOcclusion(model, device=device, output=output, copy=copy)
    raise InvalidParamsError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")


def occlusion(
    model: nn.Module,
    image: Tensor,
    patch_size: int,
    stride: int,
    *,
    patch_value: PatchValue = 0.0,
    target: int | None = None,
    mode: str = "exact",
    output: Output = "logits",
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    partial: PartialCallback | None = None,
    tau: float | None = None,
    drilldown_ratio: float | None = None,
    coarse_stride: int | None = None,
    drilldown_tolerance: float | None = None,
) -> OcclusionResult:
    """Occlusion sensitivity heatmap of one image.

    Args:
        model: eval-mode CNN.
        image (Tensor[C, H, W]): the normalised model input.
        patch_size: side of the square occluding patch, in input pixels.
        stride: step between patch positions, in input pixels.
        patch_value: patch colour in model-input space (one value or one per channel).
        target: class to explain; default the predicted class.
        mode: ``"exact"`` (incremental inference), ``"approximate"``
            (incremental with the knobs below, at least one of them) or
            ``"naive"`` (full re-inference per position, the reference).
        output: what the model returns; ``"probabilities"`` when it already
            ends in softmax, so that none is applied twice.
        batch_size: positions per batch; default what fits a memory budget.
        device: where to run; default the model's device.
        progress: called after every batch with ``(done, total)``.
        should_stop: polled before every batch; ``True`` ends the run with
            :class:`~krypton.engine.errors.RunStopped`.
        partial: called after every batch with the heatmap so far (NaN where
            not computed yet; a drill-down's coarse map first).
        tau: projective-field threshold in (0, 1], approximate mode only.
        drilldown_ratio: fraction of fine positions recomputed after a coarse
            pass at ``coarse_stride``; approximate mode only.
        coarse_stride: stride of the drill-down's coarse pass, in input pixels.
        drilldown_tolerance: refine by bisection until the interpolation is
            within this share of the coarse values' range, ``drilldown_ratio``
            being the most refined (see :class:`~krypton.engine.drilldown.DrillDown`).

    Returns:
        The heatmap (``(H - P) // S + 1`` rows by ``(W - P) // S + 1``
        columns of probabilities of ``target``), the prediction and run stats.

    Raises:
        InvalidParamsError: a bad argument, approximation knobs without
            ``mode="approximate"``, or ``mode="approximate"`` without knobs.
        ApproximationError: knobs that break a rule of
            :class:`~krypton.approximation.Approximation`.

    Example::

        >>> model = torchvision.models.resnet18(num_classes=4).eval()
        >>> result = occlusion(model, torch.randn(3, 224, 224), patch_size=16, stride=8)
        >>> result.heatmap.shape
        (27, 27)
    """
    knobs = (tau, drilldown_ratio, coarse_stride, drilldown_tolerance)
    if mode != "approximate" and any(k is not None for k in knobs):
        raise InvalidParamsError(
            "tau, drilldown_ratio, coarse_stride and drilldown_tolerance need "
            f"mode='approximate', not {mode!r}")
    if mode == "approximate" and all(k is None for k in knobs):
        raise InvalidParamsError(
            "mode='approximate' needs tau and/or drilldown_ratio with coarse_stride "
            "(see `krypton tune` for a dataset's settings); mode='exact' runs without them")
    approximation = Approximation.of(tau, drilldown_ratio, coarse_stride, drilldown_tolerance)
    engine = kept_engine(model, mode, device=device, output=output)
    return approximate(
        approximation, engine, image, patch_size, stride, patch_value=patch_value, target=target,
        batch_size=batch_size, progress=progress, should_stop=should_stop, partial=partial,
    )


def kept_engine(model: nn.Module, mode: str = "exact", *,
                device: torch.device | str | None = None,
                output: Output = "logits") -> OcclusionEngine:
    """The engine :func:`occlusion` runs ``model`` on for this mode, device and output.

    It is built on first use and kept while the model lives and its weights are
    neither replaced nor written in place, so repeated calls trace the model and
    plan each grid once. ``approximate`` shares the ``exact`` engine. A model in
    training mode gets no kept engine: building one refuses it.
    """
    if not isinstance(model, nn.Module) or model.training:
        return make_engine(model, mode, device=device, output=output)  # it refuses them
    key = ("naive" if mode == "naive" else "exact", str(device), output)
    weights = _weights_state(model)
    kept = _engines.setdefault(model, {})
    if key not in kept or kept[key][0] != weights:
        kept[key] = (weights, make_engine(model, mode, device=device, output=output))
    return kept[key][1]


def _weights_state(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Where every parameter and buffer lives and how often it was written in place."""
    return tuple((t.data_ptr(), t._version)
                 for t in itertools.chain(model.parameters(), model.buffers()))
