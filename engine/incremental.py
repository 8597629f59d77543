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
size and patch grid (:mod:`krypton.engine.planning`). A session turns that
plan into a short program: one operation per layer, each naming what it
reads (a value as it is, or a :class:`_Gather` from another layer's rows),
so running a batch is a loop over the program.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from krypton.engine.base import OcclusionEngine, Output, Session
from krypton.engine.graph import LayerKind, trace
from krypton.engine.patches import PatchGrid
from krypton.engine.planning import Mode, Shape, Step, StepPlan, plan_steps

__all__ = ["IncrementalOcclusion", "PlanCacheInfo"]

logger = logging.getLogger(__name__)

_DEFAULT_FULL_THRESHOLD = 0.8

Padding = Literal["zero", "-inf"]
"""What cells outside a map read as: zeros (conv, average pooling) or -inf (max pooling)."""


class PlanCacheInfo(NamedTuple):
    """Runs that reused a kept step plan (``hits``), and plans made and kept (``misses``)."""

    hits: int
    misses: int


class IncrementalOcclusion(OcclusionEngine):
    """Occlusion heatmaps by incremental inference, equal to naive up to float rounding.

    Build once per model (traces it with ``torch.fx`` and copies it to
    ``device``), then call :meth:`attribute` per image.

    Args:
        model: an eval-mode CNN taking ``Tensor[N, C, H, W]`` and returning
            ``Tensor[N, classes]``.
        device: where to run; default the model's device.
        output: what the model returns (``"logits"`` or ``"probabilities"``).
        copy: work on a private copy of the model (see :class:`OcclusionEngine`).
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
        output: Output = "logits",
        copy: bool = True,
        full_threshold: float = _DEFAULT_FULL_THRESHOLD,
    ) -> None:
        super().__init__(model, device=device, output=output, copy=copy)
        self.plan = trace(self.model)
        self.full_threshold = full_threshold
        self._step_plans: dict[tuple[Any, ...], tuple[StepPlan, float]] = {}
        self._plan_hits = 0

    @property
    def plan_cache(self) -> PlanCacheInfo:
        """How the engine's step plans were found, as ``functools``' ``cache_info``: one is
        kept per input shape, grid and ``tau``, planned on its first run (a miss) and
        reused after (a hit), so a long-lived engine grows by one per new grid."""
        return PlanCacheInfo(self._plan_hits, len(self._step_plans))

    def _forward(self, image: Tensor) -> tuple[Tensor, Any]:
        activations = self.plan.forward_layers(image)
        outputs: Tensor = activations[self.plan.output]
        return outputs, activations

    def _session(self, state: Any, grid: PatchGrid, patch: Tensor, tau: float) -> Session:
        shapes = {name: _map_shape(value) for name, value in state.items()}
        steps, ratio = self._steps(shapes, grid, tau)
        return _IncrementalSession(self.plan.output, steps, ratio, state, grid, patch)

    def _steps(
        self, shapes: Mapping[str, Shape | None], grid: PatchGrid, tau: float
    ) -> tuple[StepPlan, float]:
        """The step plan for these map shapes and this grid, planned once and kept."""
        key = (tuple(shapes.items()), grid, tau)
        if key in self._step_plans:
            self._plan_hits += 1
        else:
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
            self._step_plans[key] = (steps, ratio)
        return self._step_plans[key]


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


@dataclass(frozen=True, eq=False)
class _Gather:
    """How an operation reads a region of another layer's map for every position.

    Per heatmap row and column, ``window_*`` is where the source layer's
    recomputed window starts and ``origin_*`` where the region read starts
    (``None``: at 0, the whole map); ``size`` is the region's side in cells,
    ``pad`` the padding row for cells outside the map.
    """

    source: str
    window_rows: Tensor
    window_cols: Tensor
    origin_rows: Tensor | None
    origin_cols: Tensor | None
    size: tuple[int, int]
    pad: Padding

    def __call__(self, rows: _Rows, grid_rows: Tensor, grid_cols: Tensor) -> Tensor:
        at_rows = (torch.zeros_like(grid_rows) if self.origin_rows is None
                   else self.origin_rows[grid_rows])
        at_cols = (torch.zeros_like(grid_cols) if self.origin_cols is None
                   else self.origin_cols[grid_cols])
        pad_row = rows.neg_inf_row if self.pad == "-inf" else rows.zero_row
        return rows.gather(self.window_rows[grid_rows], self.window_cols[grid_cols],
                           at_rows, at_cols, self.size, pad_row)


@dataclass(frozen=True)
class _Read:
    """One input of an operation: the value of layer ``name``, or a gather of its rows."""

    name: str
    gather: _Gather | None = None


@dataclass(frozen=True)
class _Operation:
    """One layer of the program: ``fn(*reads)``, then the values no later operation reads."""

    name: str
    fn: Callable[..., Any]
    reads: tuple[_Read, ...]
    release: tuple[str, ...]


class _IncrementalSession(Session):
    """One patch grid on one image: the step plan compiled into a program of operations."""

    def __init__(
        self,
        output: str,
        steps: StepPlan,
        theoretical_ratio: float,
        activations: Mapping[str, Any],
        grid: PatchGrid,
        patch: Tensor,
    ) -> None:
        self._output = output
        self._plan_steps = steps
        self._ratio = theoretical_ratio
        self._columns = len(grid.cols)
        self._patch = patch
        self._by_name = {step.layer.name: step for step in steps.steps}
        self._full_maps: dict[str, _Gather] = {}
        input_step = next(s for s in steps.steps if s.layer.kind is LayerKind.INPUT)
        assert input_step.rows is not None and input_step.cols is not None
        self._input = input_step.layer.name
        self._input_window = (input_step.rows.width, input_step.cols.width)
        self._program = self._compile(steps)
        self._rows = {
            name: _Rows(activations[name], self._window_size(name))
            for name in {r.gather.source for op in self._program for r in op.reads if r.gather}
        }

    def flops_per_position(self) -> tuple[int, int]:
        return 2 * self._plan_steps.macs_full, 2 * self._plan_steps.macs_incremental

    def theoretical_ratio(self) -> float:
        return self._ratio

    def bytes_per_position(self) -> int:
        cells = 0
        for step in self._plan_steps.steps:
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

    def occluded_outputs(self, positions: Tensor) -> Tensor:
        grid_rows, grid_cols = positions // self._columns, positions % self._columns
        values: dict[str, Any] = {
            self._input: self._patch.expand(positions.numel(), -1, *self._input_window)}
        written: set[str] = set()
        gathered: dict[int, Tensor] = {}

        def read(r: _Read) -> Any:
            if r.gather is None:
                return values[r.name]
            if id(r.gather) not in gathered:
                rows = self._rows[r.gather.source]
                if r.gather.source not in written:
                    rows.write(values[r.gather.source])
                    written.add(r.gather.source)
                gathered[id(r.gather)] = r.gather(rows, grid_rows, grid_cols)
            return gathered[id(r.gather)]

        for op in self._program:
            values[op.name] = op.fn(*(read(r) for r in op.reads))
            for name in op.release:
                values.pop(name, None)
        outputs: Tensor = values[self._output]
        return outputs

    def _compile(self, steps: StepPlan) -> tuple[_Operation, ...]:
        """One operation per layer (the input's patch is set per batch), in plan order."""
        operations = [self._operation(step) for step in steps.steps
                      if step.layer.kind is not LayerKind.INPUT]
        last_read = {r.name: index for index, op in enumerate(operations) for r in op.reads}
        return tuple(
            _Operation(op.name, op.fn, op.reads, tuple(
                name for name, index in last_read.items()
                if index == position and name != self._output))
            for position, op in enumerate(operations)
        )

    def _operation(self, step: Step) -> _Operation:
        layer, name = step.layer, step.layer.name
        inputs = layer.inputs
        if step.mode is Mode.CONSTANT:
            return _Operation(name, layer.call, (), ())
        if step.mode is Mode.FULL:
            return _Operation(name, layer.call, tuple(self._whole(n) for n in inputs), ())
        if layer.kind is LayerKind.SLIDING:
            assert layer.sliding is not None and step.rows is not None and step.cols is not None
            assert step.rows.context_starts is not None and step.cols.context_starts is not None
            (source,) = inputs
            context = self._gather(source, step.rows.context_starts, step.cols.context_starts,
                                   (step.rows.context_width, step.cols.context_width),
                                   "-inf" if layer.sliding.pad_value < 0 else "zero")
            return _Operation(name, layer.sliding.window_fn, (_Read(source, context),), ())
        if layer.kind is LayerKind.MERGE:
            return _Operation(name, layer.call, tuple(self._window(n, step) for n in inputs), ())
        (source,) = inputs  # pointwise on the window
        return _Operation(name, _identity if step.passthrough else layer.call,
                          (_Read(source),), ())

    def _whole(self, name: str) -> _Read:
        """Read layer ``name``'s whole map: its own value, or its rows with the windows in."""
        if self._by_name[name].mode is not Mode.WINDOW:
            return _Read(name)
        if name not in self._full_maps:
            shape = self._by_name[name].shape
            assert shape is not None
            self._full_maps[name] = self._gather(name, None, None, (shape[1], shape[2]), "zero")
        return _Read(name, self._full_maps[name])

    def _window(self, name: str, step: Step) -> _Read:
        """Read layer ``name`` over ``step``'s window: as it is where the windows agree."""
        source = self._by_name[name]
        if _same_window(source, step):
            return _Read(name)
        assert step.rows is not None and step.cols is not None
        return _Read(name, self._gather(name, step.rows.starts, step.cols.starts,
                                        (step.rows.width, step.cols.width), "zero"))

    def _gather(self, source: str, origin_rows: npt.NDArray[np.int64] | None,
                origin_cols: npt.NDArray[np.int64] | None, size: tuple[int, int],
                pad: Padding) -> _Gather:
        step = self._by_name[source]
        assert step.rows is not None and step.cols is not None
        device = self._patch.device

        def table(values: npt.NDArray[np.int64] | None) -> Tensor | None:
            return None if values is None else torch.as_tensor(values, dtype=torch.long,
                                                                device=device)

        window_rows, window_cols = table(step.rows.starts), table(step.cols.starts)
        assert window_rows is not None and window_cols is not None
        return _Gather(source, window_rows, window_cols, table(origin_rows),
                       table(origin_cols), size, pad)

    def _window_size(self, name: str) -> tuple[int, int]:
        step = self._by_name[name]
        assert step.rows is not None and step.cols is not None
        return step.rows.width, step.cols.width


def _identity(value: Any) -> Any:
    return value


def _same_window(a: Step, b: Step) -> bool:
    assert a.rows is not None and a.cols is not None
    assert b.rows is not None and b.cols is not None
    return (
        a.rows.width == b.rows.width
        and a.cols.width == b.cols.width
        and np.array_equal(a.rows.starts, b.rows.starts)
        and np.array_equal(a.cols.starts, b.cols.starts)
    )
