"""Exact incremental occlusion: recompute only what each patch changes.

For one image the engine runs the model once and keeps every layer's
original activation as *rows*: one row of ``C`` values per map cell
(channels last), then two padding rows (zeros, and -inf for max pooling),
then room for the current batch's recomputed windows. Building a layer's
read contexts for a whole batch is then one ``index_select`` over those rows:
each context cell points at the recomputed window where the patch changed
the input, at the original map elsewhere, and at a padding row outside the
map. One batched conv over the contexts gives every position's new window.

Which layers run on windows, and where those lie, is planned once per image
size and patch grid (:mod:`krypton.engine.planning`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from krypton.engine.base import OcclusionEngine, Session
from krypton.engine.graph import LayerKind, LayerPlan, trace
from krypton.engine.patches import PatchGrid
from krypton.engine.planning import Mode, Shape, Step, StepPlan, plan_steps

__all__ = ["IncrementalOcclusion"]

logger = logging.getLogger(__name__)

_DEFAULT_FULL_THRESHOLD = 0.8


class IncrementalOcclusion(OcclusionEngine):
    """Occlusion heatmaps by incremental inference, equal to naive up to float rounding.

    Build once per model (traces it with ``torch.fx`` and copies it to
    ``device``), then call :meth:`attribute` per image.

    Args:
        model: an eval-mode CNN taking ``Tensor[N, C, H, W]`` and returning
            logits ``Tensor[N, classes]``.
        device: where to run; default the model's device.
        full_threshold: a layer whose recomputed window would cover at least
            this fraction of its map runs on whole maps instead, and so does
            everything after it.

    Example::

        >>> engine = IncrementalOcclusion(torchvision.models.vgg16().eval())
        >>> result = engine.attribute(image, patch_size=16, stride=4)
        >>> result.heatmap.shape, result.stats.theoretical_ratio
        ((53, 53), 6.8...)
    """

    mode = "exact"

    def __init__(
        self,
        model: nn.Module,
        *,
        device: torch.device | str | None = None,
        full_threshold: float = _DEFAULT_FULL_THRESHOLD,
    ) -> None:
        super().__init__(model, device=device)
        self.plan = trace(self.model)
        self.full_threshold = full_threshold
        self._plans: dict[tuple[Any, ...], tuple[StepPlan, float]] = {}

    def _prepare(self, image: Tensor) -> tuple[Tensor, Any]:
        activations = forward_layers(self.plan, image)
        logits: Tensor = activations[self.plan.output]
        return logits, activations

    def _session(self, prepared: Any, grid: PatchGrid, patch: Tensor, tau: float) -> Session:
        shapes = {name: _map_shape(value) for name, value in prepared.items()}
        steps, ratio = self._steps(shapes, grid, tau)
        return _IncrementalSession(self.plan, steps, ratio, prepared, grid, patch)

    def _steps(
        self, shapes: Mapping[str, Shape | None], grid: PatchGrid, tau: float
    ) -> tuple[StepPlan, float]:
        key = (tuple(shapes.items()), grid, tau)
        if key not in self._plans:
            steps = plan_steps(
                self.plan, shapes, grid.rows, grid.cols, grid.patch,
                full_threshold=self.full_threshold, tau=tau,
            )
            centre = plan_steps(
                self.plan, shapes,
                np.array([(grid.height - grid.patch) // 2]),
                np.array([(grid.width - grid.patch) // 2]),
                grid.patch, full_threshold=float("inf"), tau=tau,
            )
            ratio = centre.macs_full / centre.macs_changed if centre.macs_changed else 1.0
            self._plans[key] = (steps, ratio)
        return self._plans[key]


def forward_layers(plan: LayerPlan, image: Tensor) -> dict[str, Any]:
    """Run the traced model layer by layer and keep every layer's output."""
    values: dict[str, Any] = {}
    for layer in plan.layers:
        if layer.kind is LayerKind.INPUT:
            values[layer.name] = image
        else:
            values[layer.name] = layer.call(*(values[name] for name in layer.inputs))
    return values


def _map_shape(value: Any) -> Shape | None:
    if isinstance(value, Tensor) and value.dim() == 4 and value.shape[0] == 1:
        c, h, w = value.shape[1:]
        return int(c), int(h), int(w)
    return None


class _Rows:
    """A layer's original map, padding rows, and the current batch's windows, as rows.

    Row ``y * W + x`` holds cell ``(y, x)``; row ``H*W`` is zeros and
    ``H*W + 1`` is -inf; rows from ``H*W + 2`` hold the batch's recomputed
    windows, position after position, each ``h x w`` cells row-major.
    """

    def __init__(self, original: Tensor, window: tuple[int, int]) -> None:
        _, channels, height, width = original.shape
        self.height, self.width, self.channels = height, width, channels
        self.window = window
        self.tail = height * width + 2
        self.zero_row, self.neg_inf_row = height * width, height * width + 1
        self._original = original[0].permute(1, 2, 0).reshape(height * width, channels)
        self.buffer = original.new_empty(0, channels)

    def write(self, windows: Tensor) -> None:
        """Store the batch's recomputed windows (``Tensor[B, C, h, w]``)."""
        batch = windows.shape[0]
        h, w = self.window
        needed = self.tail + batch * h * w
        if self.buffer.shape[0] < needed:
            self.buffer = self._original.new_empty(needed, self.channels)
            self.buffer[: self.zero_row] = self._original
            self.buffer[self.zero_row] = 0.0
            self.buffer[self.neg_inf_row] = float("-inf")
        self.buffer[self.tail : needed].view(batch, h, w, self.channels).copy_(
            windows.permute(0, 2, 3, 1)
        )

    def gather(
        self,
        window_rows: Tensor,
        window_cols: Tensor,
        rows: Tensor,
        cols: Tensor,
        size: tuple[int, int],
        pad_row: int,
    ) -> Tensor:
        """``Tensor[B, C, *size]`` (channels-last) starting at ``(rows[b], cols[b])``.

        Cells inside position ``b``'s window (starting at
        ``(window_rows[b], window_cols[b])``) come from the recomputed window,
        other cells of the map from the original, cells outside the map from
        ``pad_row``.
        """
        batch, device = rows.shape[0], rows.device
        h, w = self.window
        y = rows[:, None] + torch.arange(size[0], device=device)
        x = cols[:, None] + torch.arange(size[1], device=device)
        inside = ((y >= 0) & (y < self.height))[:, :, None] & ((x >= 0) & (x < self.width))[
            :, None, :
        ]
        wy = y - window_rows[:, None]
        wx = x - window_cols[:, None]
        in_window = ((wy >= 0) & (wy < h))[:, :, None] & ((wx >= 0) & (wx < w))[:, None, :]
        base = self.tail + torch.arange(batch, device=device)[:, None, None] * (h * w)
        index = torch.where(
            in_window, base + wy[:, :, None] * w + wx[:, None, :], y[:, :, None] * self.width
            + x[:, None, :],
        )
        index = torch.where(inside, index, pad_row)
        flat = self.buffer.index_select(0, index.reshape(-1))
        return flat.view(batch, size[0], size[1], self.channels).permute(0, 3, 1, 2)


class _IncrementalSession(Session):
    def __init__(
        self,
        plan: LayerPlan,
        steps: StepPlan,
        theoretical_ratio: float,
        activations: Mapping[str, Any],
        grid: PatchGrid,
        patch: Tensor,
    ) -> None:
        self._plan = plan
        self._plan_steps = steps
        self._ratio = theoretical_ratio
        self._grid = grid
        self._patch = patch
        self._steps = {step.layer.name: step for step in steps.steps}
        device = patch.device
        self._starts = {
            name: _window_starts(step, device)
            for name, step in self._steps.items()
            if step.mode is Mode.WINDOW
        }
        self._sources = {
            name: _Rows(activations[name], (self._steps[name].rows.width,  # type: ignore[union-attr]
                                            self._steps[name].cols.width))  # type: ignore[union-attr]
            for name in _gathered_layers(steps)
        }
        self._uses = _use_counts(plan)

    def flops_per_position(self) -> tuple[int, int]:
        return 2 * self._plan_steps.macs_full, 2 * self._plan_steps.macs_incremental

    def theoretical_ratio(self) -> float:
        return self._ratio

    def bytes_per_position(self) -> int:
        cells = 0
        for step in self._steps.values():
            if step.shape is None:
                continue
            channels, height, width = step.shape
            if step.mode is Mode.WINDOW:
                assert step.rows is not None and step.cols is not None
                cells += channels * step.rows.width * step.cols.width * 2
                if step.rows.context_width:
                    cells += channels * step.rows.context_width * step.cols.context_width
            elif step.mode is Mode.FULL:
                cells += channels * height * width
        return 4 * cells

    def occluded_logits(self, positions: Tensor) -> Tensor:
        device = self._patch.device
        n_cols = len(self._grid.cols)
        grid_rows, grid_cols = positions // n_cols, positions % n_cols
        batch = positions.numel()

        values: dict[str, Any] = {}
        written: set[str] = set()
        full_maps: dict[str, Tensor] = {}
        remaining = dict(self._uses)

        def starts(name: str, which: int) -> Tensor:
            index = grid_rows if which % 2 == 0 else grid_cols
            return self._starts[name][which][index]

        def source(name: str) -> _Rows:
            rows = self._sources[name]
            if name not in written:
                rows.write(values[name])
                written.add(name)
            return rows

        def full_value(name: str) -> Any:
            if self._steps[name].mode is not Mode.WINDOW:
                return values[name]
            if name not in full_maps:
                rows = source(name)
                zeros = torch.zeros(batch, dtype=torch.long, device=device)
                full_maps[name] = rows.gather(
                    starts(name, 0), starts(name, 1), zeros, zeros,
                    (rows.height, rows.width), rows.zero_row,
                )
            return full_maps[name]

        for step in self._steps.values():
            layer, name = step.layer, step.layer.name
            if step.mode is Mode.CONSTANT:
                values[name] = layer.call()
            elif layer.kind is LayerKind.INPUT:
                assert step.rows is not None and step.cols is not None
                values[name] = self._patch.expand(batch, -1, step.rows.width, step.cols.width)
            elif step.mode is Mode.FULL:
                values[name] = layer.call(*(full_value(n) for n in layer.inputs))
            elif layer.kind is LayerKind.SLIDING:
                assert layer.sliding is not None and step.rows is not None
                assert step.cols is not None
                (src,) = layer.inputs
                rows = source(src)
                context = rows.gather(
                    starts(src, 0), starts(src, 1), starts(name, 2), starts(name, 3),
                    (step.rows.context_width, step.cols.context_width),
                    rows.neg_inf_row if layer.sliding.pad_value < 0 else rows.zero_row,
                )
                values[name] = layer.sliding.window_fn(context)
            elif layer.kind is LayerKind.MERGE:
                parts = [
                    values[n] if _same_window(self._steps[n], step)
                    else self._window_of(source(n), n, step, starts)
                    for n in layer.inputs
                ]
                values[name] = layer.call(*parts)
            else:  # pointwise on the window
                (src,) = layer.inputs
                values[name] = values[src] if step.passthrough else layer.call(values[src])

            for n in layer.inputs:
                remaining[n] -= 1
                if remaining[n] == 0:
                    values.pop(n, None)
                    full_maps.pop(n, None)
        logits: Tensor = values[self._plan.output]
        return logits

    @staticmethod
    def _window_of(rows: _Rows, name: str, step: Step, starts: Any) -> Tensor:
        assert step.rows is not None and step.cols is not None
        return rows.gather(
            starts(name, 0), starts(name, 1),
            starts(step.layer.name, 0), starts(step.layer.name, 1),
            (step.rows.width, step.cols.width), rows.zero_row,
        )


def _window_starts(step: Step, device: torch.device) -> tuple[Tensor, ...]:
    """Per grid row/column: window row, window column, context row, context column."""
    assert step.rows is not None and step.cols is not None
    axes = [step.rows.starts, step.cols.starts]
    if step.rows.context_starts is not None and step.cols.context_starts is not None:
        axes += [step.rows.context_starts, step.cols.context_starts]
    return tuple(torch.as_tensor(a, dtype=torch.long, device=device) for a in axes)


def _same_window(a: Step, b: Step) -> bool:
    assert a.rows is not None and a.cols is not None
    assert b.rows is not None and b.cols is not None
    return (
        a.rows.width == b.rows.width
        and a.cols.width == b.cols.width
        and np.array_equal(a.rows.starts, b.rows.starts)
        and np.array_equal(a.cols.starts, b.cols.starts)
    )


def _gathered_layers(steps: StepPlan) -> set[str]:
    """Window layers some consumer reads through a gather (so they need rows)."""
    by_name = {step.layer.name: step for step in steps.steps}
    needed: set[str] = set()
    for step in steps.steps:
        for name in step.layer.inputs:
            source = by_name[name]
            if source.mode is not Mode.WINDOW:
                continue
            if step.mode is Mode.FULL or step.layer.kind is LayerKind.SLIDING or (
                step.layer.kind is LayerKind.MERGE and not _same_window(source, step)
            ):
                needed.add(name)
    return needed


def _use_counts(plan: LayerPlan) -> dict[str, int]:
    counts = {layer.name: 0 for layer in plan.layers}
    for layer in plan.layers:
        for name in layer.inputs:
            counts[name] += 1
    counts[plan.output] += 1  # keep the logits
    return counts
