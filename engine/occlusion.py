"""The one-call entry point: ``occlusion(model, image, patch_size, stride)``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from krypton.engine.approximation import Approximation
from krypton.engine.base import OcclusionEngine, ProgressCallback
from krypton.engine.errors import InvalidParamsError
from krypton.engine.incremental import IncrementalOcclusion
from krypton.engine.patches import PatchValue
from krypton.engine.reference import ReferenceOcclusion
from krypton.engine.result import OcclusionResult

__all__ = ["MODES", "make_engine", "occlusion"]

MODES: tuple[str, ...] = ("exact", "approximate", "naive")


def make_engine(
    model: nn.Module, mode: str = "exact", *, device: torch.device | str | None = None
) -> OcclusionEngine:
    """The engine for ``mode``; build it once and call ``attribute`` per image.

    ``exact`` and ``approximate`` share the incremental engine; the
    approximation is chosen per call.
    """
    if mode in ("exact", "approximate"):
        return IncrementalOcclusion(model, device=device)
    if mode == "naive":
        return ReferenceOcclusion(model, device=device)
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
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    progress: ProgressCallback | None = None,
    tau: float = 1.0,
    drilldown_ratio: float | None = None,
    coarse_stride: int | None = None,
) -> OcclusionResult:
    """Occlusion sensitivity heatmap of one image.

    Args:
        model: eval-mode CNN returning logits.
        image (Tensor[C, H, W]): the normalised model input.
        patch_size: side of the square occluding patch, in input pixels.
        stride: step between patch positions, in input pixels.
        patch_value: patch colour in model-input space (one value or one per channel).
        target: class to explain; default the predicted class.
        mode: ``"exact"`` (incremental inference), ``"approximate"``
            (incremental with the knobs below) or ``"naive"`` (full
            re-inference per position, the reference).
        batch_size: positions per batch; default what fits a memory budget.
        device: where to run; default the model's device.
        progress: called after every batch with ``(done, total)``.
        tau: projective-field threshold in (0, 1], approximate mode only.
        drilldown_ratio: fraction of fine positions recomputed after a coarse
            pass at ``coarse_stride``; approximate mode only.
        coarse_stride: stride of the drill-down's coarse pass, in input pixels.

    Returns:
        The heatmap (``(H - P) // S + 1`` rows by ``(W - P) // S + 1``
        columns of probabilities of ``target``), the prediction and run stats.

    Example::

        >>> model = torchvision.models.resnet18(num_classes=4).eval()
        >>> result = occlusion(model, torch.randn(3, 224, 224), patch_size=16, stride=8)
        >>> result.heatmap.shape
        (27, 27)
    """
    approximation = Approximation(tau, drilldown_ratio, coarse_stride)
    if mode != "approximate" and not approximation.is_exact:
        raise InvalidParamsError(
            f"tau, drilldown_ratio and coarse_stride need mode='approximate', not {mode!r}"
        )
    engine = make_engine(model, mode, device=device)
    return engine.attribute(
        image, patch_size, stride, patch_value=patch_value, target=target,
        batch_size=batch_size, progress=progress, approximation=approximation,
    )
