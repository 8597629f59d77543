"""Lesion maps: teach a network where the lesion is while it learns what it is.

VGG16's twin, trained on the label alone, learns exudates (bright flecks) and
nothing else within a CPU-sized run: its loss sits at 0.8-0.9 and dark
hemorrhages and microaneurysms are read as normal. Soft labels from the trained
ResNet18 (distillation at temperature 4) did not move that plateau in a
150-step probe. What did is a denser signal: the demo generator knows each
lesion's box, so a 1x1 convolution on a mid-level feature grid learns, per
cell, whether the cell overlaps the box. Its gradient reaches the early layers
at every cell instead of through one pooled logit, and they learn to respond to
small dark spots: the label's loss left its plateau within a hundred steps.

The head is a training aid, as InceptionV3's auxiliary classifier is: it reads
the tapped layer through a forward hook and is dropped with the hook, so the
deployed network is the plain architecture. A classifier so trained is still a
classifier; its occlusion heatmap is measured, not assumed, like any other's.
The probes and the runs are recorded in BENCHMARKS.md ("Demo models").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["LesionMapHead", "lesion_cells"]

POSITIVE_WEIGHT = 10.0
"""Weight of a lesion cell against a background cell in the loss. A lesion's
box (19-41 px) covers 1-5% of a 28x28 grid at 224 px and 5-18% of the
half-size steps' 14x14 grid, and a quarter of the images have no lesion, so
unweighted the head can settle on "background" everywhere. 10 is the value the
recorded runs used, not a tuned one."""


class LesionMapHead(nn.Module):
    """Predicts, per cell of ``layer``'s output grid, whether the cell overlaps the lesion.

    Args:
        model: the network being trained; ``layer`` is one of its submodules.
        layer: dotted name of the submodule whose output grid is supervised.
        channels: that output's channel count.
    """

    def __init__(self, model: nn.Module, layer: str, channels: int) -> None:
        super().__init__()
        self.score = nn.Conv2d(channels, 1, kernel_size=1)
        self._features: Tensor | None = None
        self._hook: RemovableHandle = model.get_submodule(layer).register_forward_hook(
            self._keep)

    def loss(self, boxes: Tensor, side: int) -> Tensor:
        """Weighted binary cross-entropy of the last forward pass's map against ``boxes``.

        Args:
            boxes (Tensor[N, 4]): lesion boxes in pixels of a ``side`` px input,
                ``-1`` rows for images without a lesion.
            side: the input's side in pixels.
        """
        if self._features is None:
            raise RuntimeError("run the model forward before asking for the lesion-map loss")
        logits = self.score(self._features)[:, 0]
        target = lesion_cells(boxes, side, logits.shape[-2:]).to(logits)
        return F.binary_cross_entropy_with_logits(
            logits, target, pos_weight=torch.tensor(POSITIVE_WEIGHT, device=logits.device))

    def remove(self) -> None:
        """Detach from the model, which then runs as if the head never existed."""
        self._hook.remove()
        self._features = None

    def _keep(self, module: nn.Module, inputs: object, output: Tensor) -> None:
        self._features = output


def lesion_cells(boxes: Tensor, side: int, grid: torch.Size | tuple[int, int]) -> Tensor:
    """A ``(N, H, W)`` mask of the grid cells each box overlaps (all zero without a lesion)."""
    rows, columns = grid
    cell_height, cell_width = max(1, side // rows), max(1, side // columns)  # its stride
    mask = torch.zeros(len(boxes), rows, columns)
    for index, (top, left, bottom, right) in enumerate(boxes.tolist()):
        if top < 0:
            continue
        mask[index,
             int(top // cell_height):math.ceil(bottom / cell_height),
             int(left // cell_width):math.ceil(right / cell_width)] = 1.0
    return mask
