"""Naive occlusion: one full inference per patch position, batched.

This is the oracle the incremental engine is tested against and the baseline
its speed is measured against. It runs the same private channels-last copy of
the model, so a speedup measures incremental inference, not memory layout.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from krypton.engine.base import OcclusionEngine, Session
from krypton.engine.errors import InvalidParamsError
from krypton.engine.patches import PatchGrid

__all__ = ["ReferenceOcclusion"]


class ReferenceOcclusion(OcclusionEngine):
    """Occlusion by full re-inference of every occluded image.

    Example::

        >>> engine = ReferenceOcclusion(model.eval())
        >>> result = engine.attribute(image, patch_size=16, stride=8)
        >>> result.heatmap.shape
        (27, 27)
    """

    mode = "naive"

    def _forward(self, image: Tensor) -> tuple[Tensor, Any]:
        outputs: Tensor = self.model(image)
        return outputs, image

    def _session(self, state: Any, grid: PatchGrid, patch: Tensor, tau: float) -> Session:
        if tau != 1.0:
            raise InvalidParamsError(
                "projective-field thresholding (tau < 1) needs the incremental engine"
            )
        return _NaiveSession(self.model, state, grid, patch)


class _NaiveSession(Session):
    def __init__(self, model: nn.Module, image: Tensor, grid: PatchGrid, patch: Tensor) -> None:
        self._model = model
        self._image = image
        self._grid = grid
        self._patch = patch[0]

    def bytes_per_position(self) -> int:
        # A plain forward keeps a few maps alive at a time; the input is a fair proxy.
        return self._image.numel() * 4 * 64

    def occluded_outputs(self, positions: Tensor) -> Tensor:
        grid, p = self._grid, self._grid.patch
        batch = self._image.expand(positions.numel(), -1, -1, -1).clone(
            memory_format=torch.channels_last
        )
        rows, cols = grid.rows, grid.cols
        for b, k in enumerate(positions.tolist()):
            r, c = int(rows[k // len(cols)]), int(cols[k % len(cols)])
            batch[b, :, r : r + p, c : c + p] = self._patch
        outputs: Tensor = self._model(batch)
        return outputs
