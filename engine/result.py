"""What an occlusion run returns: the heatmap, the prediction, and how it ran."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from krypton.run_stats import RunStats

__all__ = ["OcclusionResult"]


@dataclass(frozen=True)
class OcclusionResult:
    """An occlusion sensitivity heatmap and the prediction it explains.

    ``heatmap[i, j]`` is the softmax probability of ``target`` with the patch's
    top-left corner at input pixel ``(i * stride, j * stride)``.
    """

    heatmap: npt.NDArray[np.float32]
    target: int
    target_probability: float
    """Probability of ``target`` on the unoccluded image."""
    predicted_class: int
    predicted_probability: float
    patch_size: int
    stride: int
    stats: RunStats

    @property
    def drop(self) -> npt.NDArray[np.float32]:
        """``p(target | image) - heatmap``: high where the patch hides evidence."""
        return np.float32(self.target_probability) - self.heatmap
