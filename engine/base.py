"""What every occlusion engine shares: model preparation, validation, the batch loop.

An engine is built once per model (tracing, moving weights to the device)
and then called per image. A call *prepares* the image once (the unoccluded
forward pass) and then *occludes* positions of a patch grid on it, batch by
batch: each engine opens a :class:`Session` per grid that turns a batch of
positions into model outputs, and the shared :class:`BatchLoop` turns those
into probabilities of the explained class. :meth:`OcclusionEngine.attribute`
occludes every position of one grid; wrappers such as
:class:`~krypton.engine.drilldown.DrillDown` occlude several grids on one
preparation.
"""

from __future__ import annotations

import copy
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from krypton.approximation import Approximation
from krypton.engine.errors import InvalidParamsError, RunStopped
from krypton.engine.patches import PatchGrid, PatchValue, patch_tensor
from krypton.engine.result import OcclusionResult
from krypton.run_stats import EngineMode, RunStats

__all__ = [
    "BatchLoop",
    "OcclusionEngine",
    "Output",
    "PartialCallback",
    "Prepared",
    "ProgressCallback",
    "Session",
    "StopCheck",
    "prepare_model",
]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called after every batch with ``(positions_done, positions_total)``."""

StopCheck = Callable[[], bool]
"""Polled before every batch; ``True`` ends the run with :class:`RunStopped`."""

PartialCallback = Callable[[npt.NDArray[np.float32]], None]
"""Called after every batch with the heatmap so far (NaN where not computed yet), so a
viewer can draw it while the run goes on."""

Output = Literal["logits", "probabilities"]
"""What the model returns: logits (softmax applied by the engine) or probabilities."""

_CPU_BUDGET_BYTES = 1 << 30
_CPU_MAX_BATCH = 64
_CUDA_BUDGET_FRACTION = 0.4
_CUDA_MAX_BATCH = 1024


class Session(ABC):
    """One patch grid on one prepared image: occludes batches of its positions."""

    @abstractmethod
    def bytes_per_position(self) -> int:
        """Working memory one extra position in a batch costs (an estimate)."""

    @abstractmethod
    def occluded_outputs(self, positions: Tensor) -> Tensor:
        """``(len(positions), classes)`` model outputs with the patch at each flat grid index."""

    def flops_per_position(self) -> tuple[int, int] | None:
        """Conv FLOPs of a full inference, and what this session spends per position."""
        return None

    def theoretical_ratio(self) -> float | None:
        """The paper's ``R`` for a patch at the image centre, if the engine knows it."""
        return None


@dataclass(frozen=True)
class Prepared:
    """An image run once without a patch: what every grid on it starts from."""

    height: int
    width: int
    patch: Tensor
    """The patch colour, ``Tensor[1, C, 1, 1]`` on the engine's device."""
    probabilities: Tensor
    """``Tensor[classes]`` on the unoccluded image."""
    predicted: int
    target: int
    state: Any
    """What the engine's sessions need (the incremental engine: every activation)."""


class BatchLoop:
    """The batches of one run, across the grids it occludes: sizes, progress, stop, costs.

    Args:
        batch_size: positions per batch; default what fits a memory budget.
        device: where the run happens (sets the memory budget).
        progress: called after every batch with ``(done, total)``.
        should_stop: polled before every batch; ``True`` raises :class:`RunStopped`.
    """

    def __init__(self, batch_size: int | None, device: torch.device,
                 progress: ProgressCallback | None = None,
                 should_stop: StopCheck | None = None) -> None:
        if batch_size is not None and (
                not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
            raise InvalidParamsError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size, self.device = batch_size, device
        self.progress, self.should_stop = progress, should_stop
        self.total = self.done = self.batches = 0
        self.started = time.perf_counter()
        self.theoretical_ratio: float | None = None
        self._flops_full = 0
        self._flops_spent = 0
        self._counted = True

    def occlude(self, session: Session, positions: Tensor, target: int,
                to_probabilities: Callable[[Tensor], Tensor],
                on_batch: Callable[[Tensor, int], None] | None = None) -> Tensor:
        """Probabilities of ``target`` with the patch at each of ``positions``.

        ``on_batch`` is called after every batch with the output so far and
        how many of its leading entries are filled.
        """
        size = self.batch_size or _default_batch_size(
            session.bytes_per_position(), self.device, positions.numel())
        self.batch_size = self.batch_size or size
        out = torch.empty(positions.numel(), dtype=torch.float32, device=self.device)
        for start in range(0, positions.numel(), size):
            if self.should_stop is not None and self.should_stop():
                raise RunStopped(f"stopped after {self.done} positions")
            chunk = positions[start : start + size]
            outputs = session.occluded_outputs(chunk)
            out[start : start + chunk.numel()] = to_probabilities(outputs)[:, target]
            self.done += chunk.numel()
            self.batches += 1
            if on_batch is not None:
                on_batch(out, start + chunk.numel())
            if self.progress is not None:
                self.progress(self.done, max(self.total, self.done))
        flops = session.flops_per_position()
        if flops is None:
            self._counted = False
        else:
            self._flops_full = flops[0]
            self._flops_spent += flops[1] * positions.numel()
        self.theoretical_ratio = session.theoretical_ratio()
        return out

    def flops(self, fine_positions: int) -> tuple[int, int] | None:
        """Full-inference FLOPs and FLOPs spent, each per position of the final heatmap."""
        if not self._counted:
            return None
        return self._flops_full, round(self._flops_spent / fine_positions)


class OcclusionEngine(ABC):
    """Base of the naive and incremental engines: build once per model, call per image.

    Args:
        model: an eval-mode CNN taking ``Tensor[N, C, H, W]``.
        device: where to run; default the model's device.
        output: what the model returns; ``"probabilities"`` for a model that
            already ends in softmax (the engine then does not apply another).
        copy: work on a private copy of ``model`` (default). ``False`` adopts
            the model itself, switching its in-place activations off and
            moving it to ``device``: for a caller that built the model for the
            engine alone and wants no second copy on the device.
    """

    mode: EngineMode

    def __init__(self, model: nn.Module, *, device: torch.device | str | None = None,
                 output: Output = "logits", copy: bool = True) -> None:
        if output not in ("logits", "probabilities"):
            raise InvalidParamsError(f"output must be 'logits' or 'probabilities', got {output!r}")
        self.device = _resolve_device(model, device)
        self.model = prepare_model(model, self.device, copy=copy)
        self.output = output

    @abstractmethod
    def _forward(self, image: Tensor) -> tuple[Tensor, Any]:
        """Run the unoccluded image (``Tensor[1, C, H, W]``, channels-last, on device).

        Returns its ``(1, classes)`` output and whatever sessions need from it.
        """

    @abstractmethod
    def _session(self, state: Any, grid: PatchGrid, patch: Tensor, tau: float) -> Session:
        """A session for ``grid`` on a prepared image, with threshold ``tau``."""

    def probabilities(self, outputs: Tensor) -> Tensor:
        """The model's outputs (``Tensor[N, classes]``) as float probabilities."""
        if self.output == "probabilities":
            return outputs.float()
        return torch.softmax(outputs.float(), dim=1)

    def prepare(self, image: Tensor, *, patch_value: PatchValue = 0.0,
                target: int | None = None) -> Prepared:
        """Check ``image`` and run it once without a patch (inside ``torch.inference_mode``).

        Raises:
            InvalidParamsError: bad image, patch colour or target.
        """
        batch = _check_image(image).to(self.device, torch.float32)
        batch = batch.contiguous(memory_format=torch.channels_last)
        patch = patch_tensor(patch_value, batch.shape[1], dtype=torch.float32, device=self.device)
        outputs, state = self._forward(batch)
        probabilities = self.probabilities(outputs)[0]
        predicted = int(probabilities.argmax())
        return Prepared(
            height=batch.shape[2], width=batch.shape[3], patch=patch,
            probabilities=probabilities, predicted=predicted,
            target=_check_target(target, predicted, probabilities.numel()), state=state,
        )

    def occlude(self, prepared: Prepared, grid: PatchGrid, loop: BatchLoop, *,
                positions: Tensor | None = None, tau: float = 1.0,
                on_batch: Callable[[Tensor, int], None] | None = None) -> Tensor:
        """Probabilities of the target with the patch at ``positions`` of ``grid`` (default all).

        Positions are flat indices into the grid, row-major; ``on_batch`` as
        :meth:`BatchLoop.occlude`.
        """
        Approximation(tau)  # the one check of tau
        if positions is None:
            positions = torch.arange(grid.size, device=self.device)
        session = self._session(prepared.state, grid, prepared.patch, tau)
        return loop.occlude(session, positions, prepared.target, self.probabilities, on_batch)

    def attribute(
        self,
        image: Tensor,
        patch_size: int,
        stride: int,
        *,
        patch_value: PatchValue = 0.0,
        target: int | None = None,
        batch_size: int | None = None,
        progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
        partial: PartialCallback | None = None,
        tau: float = 1.0,
    ) -> OcclusionResult:
        """Occlusion heatmap of ``image`` for class ``target``.

        Args:
            image (Tensor[C, H, W]): the preprocessed (normalised) model input.
            patch_size: side of the square patch, in input pixels.
            stride: step between patch positions, in input pixels.
            patch_value: the patch colour in model-input space, one value or
                one per channel.
            target: class to explain; default the predicted class.
            batch_size: positions per batch; default what fits a memory budget.
            progress: called after every batch with ``(done, total)``.
            should_stop: polled before every batch; ``True`` ends the run.
            partial: called after every batch with the heatmap so far: the
                rows finished, NaN below them.
            tau: projective-field threshold in (0, 1] (incremental engine
                only); 1 is exact.

        Raises:
            InvalidParamsError: bad image, patch, stride, target or batch size.
            RunStopped: ``should_stop`` said so.
        """
        loop = BatchLoop(batch_size, self.device, progress, should_stop)
        with torch.inference_mode():
            prepared = self.prepare(image, patch_value=patch_value, target=target)
            grid = PatchGrid(prepared.height, prepared.width, patch_size, stride)
            loop.total = grid.size
            heatmap = self.occlude(prepared, grid, loop, tau=tau,
                                   on_batch=_so_far(partial, grid.shape)).view(grid.shape)
        return self.result(prepared, grid, heatmap, loop, Approximation(tau))

    def result(self, prepared: Prepared, grid: PatchGrid, heatmap: Tensor, loop: BatchLoop,
               approximation: Approximation, *, refined: int | None = None,
               rounds: int | None = None) -> OcclusionResult:
        """The finished heatmap of ``grid``, its prediction and how the run went."""
        seconds = time.perf_counter() - loop.started
        approximate = not approximation.is_exact
        logger.debug("%s occlusion: %d positions in %.3f s", self.mode, loop.done, seconds)
        flops = loop.flops(grid.size)
        probabilities = prepared.probabilities
        return OcclusionResult(
            heatmap=heatmap.cpu().numpy().astype(np.float32),
            target=prepared.target,
            target_probability=float(probabilities[prepared.target]),
            predicted_class=prepared.predicted,
            predicted_probability=float(probabilities[prepared.predicted]),
            patch_size=grid.patch,
            stride=grid.stride,
            stats=RunStats(
                mode="approximate" if approximate else self.mode,
                device=str(self.device),
                positions=loop.done,
                batches=loop.batches,
                batch_size=loop.batch_size or 0,
                seconds=seconds,
                input_shape=(prepared.height, prepared.width),
                heatmap_shape=grid.shape,
                flops_full=flops[0] if flops else None,
                flops_incremental=flops[1] if flops else None,
                theoretical_ratio=loop.theoretical_ratio,
                approximation=approximation,
                refined_positions=refined,
                refine_rounds=rounds,
            ),
        )


def _so_far(partial: PartialCallback | None, shape: tuple[int, int]
            ) -> Callable[[Tensor, int], None] | None:
    """An ``on_batch`` that hands ``partial`` the heatmap's leading cells, NaN after them."""
    if partial is None:
        return None

    def report(out: Tensor, filled: int) -> None:
        heatmap = np.full(shape[0] * shape[1], np.nan, dtype=np.float32)
        heatmap[:filled] = out[:filled].cpu().numpy()
        partial(heatmap.reshape(shape))

    return report


def prepare_model(model: nn.Module, device: torch.device, *, copy: bool = True) -> nn.Module:
    """An eval-mode, channels-last model on ``device`` with in-place activations off.

    By default a private copy, so that switching in-place activations off (the
    engine keeps every original activation and must not see them
    overwritten) and moving weights never touch the caller's model.

    Raises:
        InvalidParamsError: the model is in training mode.
    """
    if not isinstance(model, nn.Module):
        raise InvalidParamsError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise InvalidParamsError("model is in training mode; call model.eval() first")
    private = _deepcopy(model) if copy else model
    for module in private.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False  # type: ignore[assignment]
    private.requires_grad_(False)
    private.to(device)
    private.to(memory_format=torch.channels_last)
    return private


def _deepcopy(model: nn.Module) -> nn.Module:
    duplicate: nn.Module = copy.deepcopy(model)
    return duplicate


def _resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        resolved = torch.device(device)
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise InvalidParamsError("device 'cuda' was asked for but CUDA is not available")
        return resolved
    parameter = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    return parameter.device if parameter is not None else torch.device("cpu")


def _check_image(image: Tensor) -> Tensor:
    if not isinstance(image, Tensor):
        raise InvalidParamsError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3:
        raise InvalidParamsError(f"image must have shape (C, H, W), got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise InvalidParamsError(f"image must be a float tensor (normalised), got {image.dtype}")
    if not torch.isfinite(image).all():
        raise InvalidParamsError("image contains NaN or infinite values")
    return image.unsqueeze(0)


def _check_target(target: int | None, predicted: int, classes: int) -> int:
    if target is None:
        return predicted
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise InvalidParamsError(f"target must be a class index, got {target!r}")
    if not 0 <= int(target) < classes:
        raise InvalidParamsError(f"target {target} is not a class of this model (0..{classes - 1})")
    return int(target)


def _default_batch_size(bytes_per_position: int, device: torch.device, positions: int) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget, cap = int(free * _CUDA_BUDGET_FRACTION), _CUDA_MAX_BATCH
    else:
        budget, cap = _CPU_BUDGET_BYTES, _CPU_MAX_BATCH
    fits = budget // max(bytes_per_position, 1)
    return int(max(1, min(fits, cap, positions)))
