"""Plan incremental inference for one (model, image size, patch grid).

Planning is integer work only: given each layer's output shape and the patch
positions, it decides for every layer whether it runs on fixed-size windows
(``WINDOW``) or on whole maps (``FULL``), where each position's window and read
context lie, and how many conv multiply-accumulates that costs. The executor
in :mod:`krypton.engine.incremental` then only moves tensors.

A layer goes ``FULL`` when its kind needs whole maps, when an input is already
``FULL``, or when its window covers at least ``full_threshold`` of the map: at
that point recomputing everything is cheaper than gathering read contexts.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from krypton.engine.graph import Layer, LayerKind, LayerPlan
from krypton.engine.regions import (
    Axis,
    Intervals,
    cap,
    changed_output,
    patch_intervals,
    read_context,
    tau_limit,
    union,
    widths,
    window_starts,
)

__all__ = ["AxisWindows", "Mode", "Step", "StepPlan", "plan_steps"]

Shape = tuple[int, int, int]
"""``(C, H, W)`` of a layer's output map for one image."""


class Mode(enum.Enum):
    WINDOW = "window"
    FULL = "full"
    CONSTANT = "constant"


@dataclass(frozen=True)
class AxisWindows:
    """Where each position's window lies along one axis of one layer's output.

    ``changed`` is what the patch really changes; ``starts``/``width`` is the
    fixed-size window that is recomputed (it contains ``changed``). For
    sliding layers, ``context_starts``/``context_width`` is the slice of the
    input map (padding included) that the window is computed from.
    """

    changed: Intervals
    starts: npt.NDArray[np.int64]
    width: int
    context_starts: npt.NDArray[np.int64] | None = None
    context_width: int = 0


@dataclass(frozen=True)
class Step:
    layer: Layer
    mode: Mode
    shape: Shape | None = None
    rows: AxisWindows | None = None
    cols: AxisWindows | None = None
    passthrough: bool = False
    """The layer is the identity on this map (adaptive pooling to the same size)."""
    macs_full: int = 0
    """Conv multiply-accumulates of this layer for one whole image."""
    macs_incremental: int = 0
    """Conv multiply-accumulates this plan spends per position."""
    macs_changed: float = 0.0
    """Mean conv multiply-accumulates over the truly changed cells, per position."""


@dataclass(frozen=True)
class StepPlan:
    steps: tuple[Step, ...]

    @property
    def macs_full(self) -> int:
        return sum(s.macs_full for s in self.steps)

    @property
    def macs_incremental(self) -> int:
        return sum(s.macs_incremental for s in self.steps)

    @property
    def macs_changed(self) -> float:
        return sum(s.macs_changed for s in self.steps)


def plan_steps(
    plan: LayerPlan,
    shapes: Mapping[str, Shape | None],
    rows: npt.NDArray[np.int64],
    cols: npt.NDArray[np.int64],
    patch: int,
    *,
    full_threshold: float = 0.8,
    tau: float = 1.0,
) -> StepPlan:
    """Decide how every layer runs for patches at ``rows x cols``.

    Args:
        plan: the traced model.
        shapes: ``(C, H, W)`` of each layer's output on the unoccluded image,
            ``None`` for values that are not 4-D maps (logits, sizes...).
        rows: top row of the patch for each heatmap row (input pixels).
        cols: left column of the patch for each heatmap column (input pixels).
        patch: patch side in input pixels.
        full_threshold: fraction of a map's area above which a window is
            not worth gathering and the layer runs on whole maps; ``inf``
            never switches (used to count the theoretical cost).
        tau: projective-field threshold; conv, pool and merge regions are
            capped at ``ceil(tau * side)`` cells per axis, centred. 1 is exact.
    """
    steps: dict[str, Step] = {}
    for layer in plan.layers:
        step = _plan_layer(layer, steps, shapes, rows, cols, patch, full_threshold, tau)
        steps[layer.name] = step
    return StepPlan(tuple(steps.values()))


def _plan_layer(
    layer: Layer,
    steps: Mapping[str, Step],
    shapes: Mapping[str, Shape | None],
    rows: npt.NDArray[np.int64],
    cols: npt.NDArray[np.int64],
    patch: int,
    full_threshold: float,
    tau: float,
) -> Step:
    shape = shapes.get(layer.name)
    inputs = [steps[name] for name in layer.inputs]
    full = _full_step(layer, shape)

    if layer.kind is LayerKind.CONSTANT:
        return Step(layer, Mode.CONSTANT, shape)
    if layer.kind is LayerKind.INPUT:
        assert shape is not None
        row_changed, col_changed = patch_intervals(rows, patch), patch_intervals(cols, patch)
        return Step(
            layer, Mode.WINDOW, shape,
            rows=AxisWindows(row_changed, rows, patch),
            cols=AxisWindows(col_changed, cols, patch),
        )
    if shape is None or any(s.mode is not Mode.WINDOW for s in inputs) or not inputs:
        return full

    if layer.kind is LayerKind.POINTWISE or (
        layer.kind is LayerKind.ADAPTIVE_POOL and layer.adaptive_output == shape[1:]
    ):
        (source,) = inputs
        if source.shape is None or source.shape[1:] != shape[1:]:
            return full
        return Step(
            layer, Mode.WINDOW, shape, rows=source.rows, cols=source.cols,
            passthrough=layer.kind is LayerKind.ADAPTIVE_POOL,
        )

    if layer.kind is LayerKind.SLIDING:
        (source,) = inputs
        assert layer.sliding is not None and source.shape is not None
        assert source.rows is not None and source.cols is not None
        s = layer.sliding
        axes = [
            Axis(s.kernel[d], s.stride[d], s.padding[d], s.dilation[d],
                 source.shape[1 + d], shape[1 + d])
            for d in (0, 1)
        ]
        changed = [
            cap(changed_output(src.changed, ax), tau_limit(tau, ax.size_out))
            for src, ax in zip((source.rows, source.cols), axes, strict=True)
        ]
        step = _windowed(layer, shape, changed, full_threshold, axes=axes)
        return step if step is not None else full

    if layer.kind is LayerKind.MERGE:
        if layer.cat_dim is not None and layer.cat_dim not in (1, -3):
            return full
        same_maps = all(
            s.shape is not None and s.shape[1:] == shape[1:]
            and (layer.cat_dim is not None or s.shape == shape)
            for s in inputs
        )
        if not same_maps:
            return full
        changed = [
            cap(union(*(s.rows.changed for s in inputs if s.rows is not None)),
                tau_limit(tau, shape[1])),
            cap(union(*(s.cols.changed for s in inputs if s.cols is not None)),
                tau_limit(tau, shape[2])),
        ]
        step = _windowed(layer, shape, changed, full_threshold)
        return step if step is not None else full

    return full


def _windowed(
    layer: Layer,
    shape: Shape,
    changed: list[Intervals],
    full_threshold: float,
    *,
    axes: list[Axis] | None = None,
) -> Step | None:
    """A WINDOW step over ``changed``, or ``None`` when whole maps are cheaper."""
    sizes = shape[1:]
    width = [max(int(widths(c).max(initial=0)), 1) for c in changed]
    if width[0] * width[1] >= full_threshold * sizes[0] * sizes[1]:
        return None
    windows = []
    for d in (0, 1):
        starts = window_starts(changed[d], width[d], sizes[d])
        if axes is None:
            windows.append(AxisWindows(changed[d], starts, width[d]))
        else:
            context_starts, context_width = read_context(starts, width[d], axes[d])
            windows.append(
                AxisWindows(changed[d], starts, width[d], context_starts, context_width)
            )
    macs_per_cell = layer.sliding.conv_macs_per_cell if layer.sliding else 0
    changed_area = np.outer(widths(changed[0]), widths(changed[1])).mean()
    return Step(
        layer, Mode.WINDOW, shape, rows=windows[0], cols=windows[1],
        macs_full=_conv_macs(layer, shape),
        macs_incremental=macs_per_cell * width[0] * width[1],
        macs_changed=float(macs_per_cell * changed_area),
    )


def _conv_macs(layer: Layer, shape: Shape | None) -> int:
    if layer.sliding is None or shape is None:
        return 0
    return layer.sliding.conv_macs_per_cell * shape[1] * shape[2]


def _full_step(layer: Layer, shape: Shape | None) -> Step:
    macs = _conv_macs(layer, shape)
    return Step(
        layer, Mode.FULL, shape, macs_full=macs, macs_incremental=macs, macs_changed=float(macs)
    )
