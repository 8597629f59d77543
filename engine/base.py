"""What every occlusion engine shares: model preparation, validation, the batch loop.

An engine is built once per model (tracing, copying weights to the device)
and then called per image. Each call *prepares* the image once (the original
forward pass) and opens a :class:`Session` per patch grid on it; the shared
loop asks the session for the logits of each batch of patch positions and
turns them into a heatmap. Drill-down opens two sessions on one preparation:
the coarse grid, then the chosen positions of the fine grid.
"""

from __future__ import annotations

import copy
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from krypton.engine.approximation import (
    Approximation,
    drilldown_count,
    interpolate_coarse,
    top_drop,
)
from krypton.engine.errors import InvalidParamsError
from krypton.engine.patches import PatchGrid, PatchValue, patch_tensor
from krypton.engine.result import OcclusionResult, RunStats

__all__ = ["OcclusionEngine", "Occluder", "ProgressCallback", "Session", "prepare_model"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called after every batch with ``(positions_done, positions_total)``."""

_CPU_BUDGET_BYTES = 1 << 30
_CPU_MAX_BATCH = 64
_CUDA_BUDGET_FRACTION = 0.4
_CUDA_MAX_BATCH = 1024


class Occluder(Protocol):
    """Anything that computes an occlusion heatmap for one image."""

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
        approximation: Approximation | None = None,
    ) -> OcclusionResult: ...


class Session(ABC):
    """One patch grid on one prepared image: occludes batches of its positions."""

    @abstractmethod
    def bytes_per_position(self) -> int:
        """Working memory one extra position in a batch costs (an estimate)."""

    @abstractmethod
    def occluded_logits(self, positions: Tensor) -> Tensor:
        """``(len(positions), classes)`` logits with the patch at each flat grid index."""

    def flops_per_position(self) -> tuple[int, int] | None:
        """Conv FLOPs of a full inference, and what this session spends per position."""
        return None

    def theoretical_ratio(self) -> float | None:
        """The paper's ``R`` for a patch at the image centre, if the engine knows it."""
        return None


class OcclusionEngine(ABC):
    """Base of the naive and incremental engines (see :class:`Occluder`)."""

    mode: str

    def __init__(self, model: nn.Module, *, device: torch.device | str | None = None) -> None:
        self.device = _resolve_device(model, device)
        self.model = prepare_model(model, self.device)

    @abstractmethod
    def _prepare(self, image: Tensor) -> tuple[Tensor, Any]:
        """Run the unoccluded image (``Tensor[1, C, H, W]``, channels-last, on device).

        Returns its ``(1, classes)`` logits and whatever sessions need from it.
        """

    @abstractmethod
    def _session(self, prepared: Any, grid: PatchGrid, patch: Tensor, tau: float) -> Session:
        """A session for ``grid`` on a prepared image, with threshold ``tau``."""

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
        approximation: Approximation | None = None,
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
            approximation: projective-field threshold and drill-down; default exact.

        Raises:
            InvalidParamsError: bad image, patch, stride, target or batch size.
        """
        started = time.perf_counter()
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise InvalidParamsError(f"batch_size must be a positive integer, got {batch_size!r}")
        approximation = approximation or Approximation()
        batch = _check_image(image).to(self.device, torch.float32)
        batch = batch.contiguous(memory_format=torch.channels_last)
        grid = PatchGrid(batch.shape[2], batch.shape[3], patch_size, stride)
        patch = patch_tensor(patch_value, batch.shape[1], dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            logits, prepared = self._prepare(batch)
            probabilities = torch.softmax(logits.float(), dim=1)[0]
            predicted = int(probabilities.argmax())
            target = _check_target(target, predicted, probabilities.numel())
            run = _Run(target, batch_size, self.device, progress)
            session = self._session(prepared, grid, patch, approximation.tau)
            if approximation.drills_down:
                assert approximation.coarse_stride is not None
                assert approximation.drilldown_ratio is not None
                drill_ratio = approximation.drilldown_ratio
                coarse_grid = PatchGrid(grid.height, grid.width, patch_size,
                                        approximation.coarse_stride)
                coarse_session = self._session(prepared, coarse_grid, patch, approximation.tau)
                run.total = coarse_grid.size + drilldown_count(grid.size, drill_ratio)
                coarse = run.occlude(coarse_session, _all_positions(coarse_grid, self.device))
                heatmap = interpolate_coarse(coarse.view(coarse_grid.shape), coarse_grid, grid)
                chosen = top_drop(heatmap, drill_ratio)
                heatmap.view(-1)[chosen] = run.occlude(session, chosen)
            else:
                run.total = grid.size
                heatmap = run.occlude(session, _all_positions(grid, self.device)).view(grid.shape)
            heatmap_np = heatmap.cpu().numpy().astype(np.float32)
        seconds = time.perf_counter() - started
        logger.debug("%s occlusion: %d positions in %.3f s", self.mode, run.done, seconds)
        ratio = session.theoretical_ratio()
        flops = run.flops(grid.size)
        return OcclusionResult(
            heatmap=heatmap_np,
            target=target,
            target_probability=float(probabilities[target]),
            predicted_class=predicted,
            predicted_probability=float(probabilities[predicted]),
            patch_size=patch_size,
            stride=stride,
            stats=RunStats(
                mode=self.mode if approximation.is_exact else "approximate",
                device=str(self.device),
                positions=run.done,
                batches=run.batches,
                batch_size=run.batch_size or 0,
                seconds=seconds,
                flops_full=flops[0] if flops else None,
                flops_incremental=flops[1] if flops else None,
                theoretical_ratio=ratio,
                tau=approximation.tau,
                drilldown_ratio=approximation.drilldown_ratio,
                coarse_stride=approximation.coarse_stride,
            ),
        )


class _Run:
    """The batch loop of one ``attribute`` call, across its sessions."""

    def __init__(self, target: int, batch_size: int | None, device: torch.device,
                 progress: ProgressCallback | None) -> None:
        self.target, self.batch_size, self.device = target, batch_size, device
        self.progress = progress
        self.total = self.done = self.batches = 0
        self._flops_full = 0
        self._flops_spent = 0
        self._counted = True

    def occlude(self, session: Session, positions: Tensor) -> Tensor:
        """Probabilities of the target with the patch at each of ``positions``."""
        size = self.batch_size or _default_batch_size(
            session.bytes_per_position(), self.device, positions.numel()
        )
        self.batch_size = self.batch_size or size
        out = torch.empty(positions.numel(), dtype=torch.float32, device=self.device)
        for start in range(0, positions.numel(), size):
            chunk = positions[start : start + size]
            logits = session.occluded_logits(chunk)
            out[start : start + chunk.numel()] = torch.softmax(logits.float(), 1)[:, self.target]
            self.done += chunk.numel()
            self.batches += 1
            if self.progress is not None:
                self.progress(self.done, max(self.total, self.done))
        flops = session.flops_per_position()
        if flops is None:
            self._counted = False
        else:
            self._flops_full = flops[0]
            self._flops_spent += flops[1] * positions.numel()
        return out

    def flops(self, fine_positions: int) -> tuple[int, int] | None:
        """Full-inference FLOPs and FLOPs spent, each per position of the final heatmap."""
        if not self._counted:
            return None
        return self._flops_full, round(self._flops_spent / fine_positions)


def _all_positions(grid: PatchGrid, device: torch.device) -> Tensor:
    return torch.arange(grid.size, device=device)


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """A private, eval-mode, channels-last copy of ``model`` on ``device``.

    The engine copies so that switching in-place activations off (it keeps
    every original activation and must not see them overwritten) and moving
    weights never touch the caller's model.

    Raises:
        InvalidParamsError: the model is in training mode.
    """
    if not isinstance(model, nn.Module):
        raise InvalidParamsError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise InvalidParamsError("model is in training mode; call model.eval() first")
    private = copy.deepcopy(model)
    for module in private.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False  # type: ignore[assignment]
    private.requires_grad_(False)
    private.to(device)
    private.to(memory_format=torch.channels_last)
    return private


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

