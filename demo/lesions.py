"""Synthetic lesions on real fundus views: the demo use case's images and labels.

Every image is a random view (zoom, rotation, flip, exposure) of
scikit-image's fundus photograph, with at most one lesion drawn inside the
fundus. The lesion kinds follow what a fundus screen looks for:

* ``HEMORRHAGE``: one dark red blot, 12-22 px across at a 224 px input;
* ``EXUDATES``: a cluster of small bright yellow flecks;
* ``MICROANEURYSMS``: a cluster of tiny dark red dots.

Sizes are given for a 224 px input and scale with the input side, so a
299 px InceptionV3 sees the same anatomy. The generator is seeded: the same
seed gives the same images, and the benchmark's held-out images use a seed the
training never saw.

``occluders`` pastes plain squares (the colours an occlusion run uses) away
from the lesion in a share of the training images. A model trained so does not
read "a grey square" as a finding, so its heatmap drops only where the lesion
is, not wherever the patch lands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LABELS", "SAMPLE_SEED", "VALIDATION_SEED", "FundusLesions", "LesionBatch",
           "lesion_batch", "lesion_samples"]

LABELS: tuple[str, ...] = ("NORMAL", "HEMORRHAGE", "EXUDATES", "MICROANEURYSMS")
"""Class names, in the order of the trained models' outputs."""

VALIDATION_SEED = 1_000_003
"""Seed of the images accuracy is measured on; training seeds stay below it."""
SAMPLE_SEED = 2_000_003
"""Seed of the sample images that tuning and the benchmark explain."""

_REFERENCE_SIDE = 224
_CLUSTER_RADIUS = 13.0
"""Radius, at 224 px, of the disc a lesion's spots are scattered in."""
_MAX_REACH = 20.0
"""Largest distance, in pixels at 224 px, from a lesion's centre to its box edge."""
_EDGE = 2.0
"""Soft edge of a spot, in pixels at 224 px, beyond its radius."""
_OCCLUDER_COLORS = ((0.485, 0.456, 0.406), (0.5, 0.5, 0.5), (0.0, 0.0, 0.0))
"""ImageNet mean (zero after normalisation), grey and black: the patch colours."""
_FUNDUS_LEVEL = 0.08
"""Mean intensity above which a pixel belongs to the fundus, not the black surround."""


@dataclass(frozen=True)
class LesionBatch:
    """Images in pixel space with their labels and where the lesion was drawn.

    Attributes:
        images (Tensor[N, 3, S, S]): RGB in ``[0, 1]``.
        labels (Tensor[N]): index into :data:`LABELS`.
        boxes (Tensor[N, 4]): ``(top, left, bottom, right)`` pixel bounds of
            the lesion (bottom/right exclusive), ``-1`` for ``NORMAL`` images.
    """

    images: Tensor
    labels: Tensor
    boxes: Tensor

    def pixels(self, index: int) -> npt.NDArray[np.float32]:
        """Image ``index`` as an ``(S, S, 3)`` float array, the layout decoders give."""
        return np.ascontiguousarray(self.images[index].permute(1, 2, 0).numpy())


class FundusLesions:
    """A seeded stream of fundus views with synthetic lesions.

    Args:
        size: side of the square images, the model's input size.
        seed: the stream's seed.
        occluders: share of images that get one or two plain squares away from
            the lesion (training augmentation; 0 for evaluation images).
        lesion_scale: lesion (and square) sizes relative to a 224 px input;
            default ``size / 224``. Training on small images for speed keeps
            the lesions at the pixel size the full-size model will see.
    """

    def __init__(self, size: int = 224, *, seed: int = 0, occluders: float = 0.0,
                 lesion_scale: float | None = None) -> None:
        if size < 64:
            raise ValueError(f"size must be at least 64 pixels, got {size}")
        if not 0.0 <= occluders <= 1.0:
            raise ValueError(f"occluders must be in [0, 1], got {occluders}")
        self.size = size
        self.occluders = occluders
        self._scale = size / _REFERENCE_SIDE if lesion_scale is None else lesion_scale
        if not 0.1 <= self._scale <= 4.0:
            raise ValueError(f"lesion scale must be in [0.1, 4], got {self._scale:g} "
                             f"(size {size}, lesion_scale {lesion_scale})")
        if 2 * _MAX_REACH * self._scale >= size:
            raise ValueError(f"lesions at scale {self._scale:g} do not fit a {size} px image")
        self._rng = torch.Generator().manual_seed(seed)
        self._fundus = _fundus_photograph(2 * size)
        rows = torch.arange(size, dtype=torch.float32)
        self._yy, self._xx = torch.meshgrid(rows, rows, indexing="ij")

    def batch(self, count: int, labels: list[int] | None = None) -> LesionBatch:
        """``count`` images; ``labels`` picks their classes, default drawn uniformly."""
        if labels is None:
            labels = [int(v) for v in torch.randint(len(LABELS), (count,), generator=self._rng)]
        if len(labels) != count or any(not 0 <= v < len(LABELS) for v in labels):
            raise ValueError(f"need {count} labels in 0..{len(LABELS) - 1}, got {labels}")
        views, masks = self._views(count)
        boxes = torch.full((count, 4), -1, dtype=torch.int64)
        for i, label in enumerate(labels):
            if label:
                boxes[i] = self._draw_lesion(views[i], masks[i], LABELS[label])
            if self._uniform() < self.occluders:
                self._draw_occluders(views[i], boxes[i])
        return LesionBatch(views.clamp_(0.0, 1.0), torch.tensor(labels), boxes)

    # -- views ---------------------------------------------------------------

    def _views(self, count: int) -> tuple[Tensor, Tensor]:
        """Random zoom/rotation/flip/exposure views and their fundus masks."""
        zoom = self._uniform(count, 0.55, 1.0)
        angle = self._uniform(count, 0.0, 2 * math.pi)
        flip = torch.where(self._uniform(count) < 0.5, -1.0, 1.0)
        shift = self._uniform(count, -1.0, 1.0, shape=(count, 2)) * (1.0 - zoom)[:, None] * 0.8
        cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
        theta = torch.stack([
            torch.stack([cos * flip, -sin, shift[:, 0]], dim=1),
            torch.stack([sin * flip, cos, shift[:, 1]], dim=1),
        ], dim=1)
        grid = F.affine_grid(theta, [count, 4, self.size, self.size], align_corners=False)
        sampled = F.grid_sample(self._fundus.expand(count, -1, -1, -1), grid,
                                mode="bilinear", padding_mode="zeros", align_corners=False)
        views, masks = sampled[:, :3], sampled[:, 3] > 0.5
        gain = self._uniform(count, 0.8, 1.2)[:, None, None, None]
        tint = self._uniform(count, 0.92, 1.08, shape=(count, 3))[:, :, None, None]
        gamma = self._uniform(count, 0.8, 1.25)[:, None, None, None]
        return (views.clamp(0.0, 1.0) ** gamma) * gain * tint, masks

    # -- lesions -------------------------------------------------------------

    def _draw_lesion(self, image: Tensor, mask: Tensor, kind: str) -> Tensor:
        k = self._scale
        if kind == "HEMORRHAGE":
            spots = [(0.0, 0.0, self._uniform(1, 6.0, 11.0).item() * k)]
            color, opacity = (0.32, 0.04, 0.03), 0.85
        elif kind == "EXUDATES":
            spots = self._cluster(int(self._integer(4, 8)), 2.2 * k, 3.6 * k)
            color, opacity = (1.0, 0.93, 0.55), 0.9
        else:
            spots = self._cluster(int(self._integer(5, 10)), 1.5 * k, 2.4 * k)
            color, opacity = (0.28, 0.02, 0.02), 0.9
        reach = math.ceil(max(math.hypot(dy, dx) + r for dy, dx, r in spots) + _EDGE * k) + 1
        cy, cx = self._lesion_centre(mask, reach)
        for dy, dx, radius in spots:
            self._blend_disc(image, cy + dy, cx + dx, radius, color, opacity)
        return torch.tensor([max(cy - reach, 0), max(cx - reach, 0),
                             min(cy + reach + 1, self.size), min(cx + reach + 1, self.size)])

    def _cluster(self, count: int, low: float, high: float) -> list[tuple[float, float, float]]:
        """``count`` spots of radius in ``[low, high]`` scattered in the cluster disc."""
        reach = _CLUSTER_RADIUS * self._scale
        distance = reach * self._uniform(count).sqrt()
        angle = self._uniform(count, 0.0, 2 * math.pi)
        radius = self._uniform(count, low, high)
        return [(float(d * torch.sin(a)), float(d * torch.cos(a)), float(r))
                for d, a, r in zip(distance, angle, radius, strict=True)]

    def _lesion_centre(self, mask: Tensor, reach: int) -> tuple[int, int]:
        """A random pixel whose ``reach`` neighbourhood lies inside the fundus."""
        inside = -F.max_pool2d(-mask[None, None].float(), 2 * reach + 1, 1, reach)[0, 0]
        inside[:reach], inside[-reach:], inside[:, :reach], inside[:, -reach:] = 0, 0, 0, 0
        if inside.sum() == 0:  # a view with hardly any fundus: anywhere not at the border
            inside[reach:-reach, reach:-reach] = 1.0
        flat = int(torch.multinomial(inside.flatten(), 1, generator=self._rng))
        return divmod(flat, self.size)

    def _blend_disc(self, image: Tensor, cy: float, cx: float, radius: float,
                    color: tuple[float, float, float], opacity: float) -> None:
        distance = torch.hypot(self._yy - cy, self._xx - cx)
        alpha = opacity * torch.sigmoid((radius - distance) / (0.6 * self._scale))
        alpha[distance > radius + _EDGE * self._scale] = 0.0  # keep the lesion in its box
        target = torch.tensor(color).view(3, 1, 1)
        image.mul_(1.0 - alpha).add_(alpha * target)

    # -- occluders -----------------------------------------------------------

    def _draw_occluders(self, image: Tensor, box: Tensor) -> None:
        for _ in range(int(self._integer(1, 3))):
            high = min(round(28 * self._scale), self.size // 3)
            side = int(self._integer(min(round(10 * self._scale), high), high + 1))
            top, left = (int(self._integer(0, self.size - side + 1)) for _ in range(2))
            if box[0] >= 0 and _overlaps((top, left, top + side, left + side), box):
                continue
            color = _OCCLUDER_COLORS[int(self._integer(0, len(_OCCLUDER_COLORS)))]
            image[:, top:top + side, left:left + side] = torch.tensor(color).view(3, 1, 1)

    # -- randomness ----------------------------------------------------------

    def _uniform(self, count: int = 1, low: float = 0.0, high: float = 1.0,
                 shape: tuple[int, ...] | None = None) -> Tensor:
        values = torch.rand(shape or (count,), generator=self._rng)
        return low + (high - low) * values

    def _integer(self, low: int, high: int) -> int:
        return int(torch.randint(low, high, (1,), generator=self._rng))


def lesion_batch(size: int, count: int, *, seed: int = SAMPLE_SEED) -> LesionBatch:
    """``count`` images with a lesion each (the kinds in turn), with their boxes.

    What a clinician asks to have explained: images with a finding. The
    default seed is one the training never draws from.
    """
    labels = [1 + i % (len(LABELS) - 1) for i in range(count)]
    return FundusLesions(size, seed=seed).batch(count, labels)


def lesion_samples(size: int, count: int, *, seed: int = SAMPLE_SEED
                   ) -> list[npt.NDArray[np.float32]]:
    """The images of :func:`lesion_batch` as ``(S, S, 3)`` arrays."""
    batch = lesion_batch(size, count, seed=seed)
    return [batch.pixels(i) for i in range(count)]


def _overlaps(a: tuple[int, int, int, int], b: Tensor) -> bool:
    top, left, bottom, right = (int(v) for v in b)
    return a[0] < bottom and top < a[2] and a[1] < right and left < a[3]


def _fundus_photograph(side: int) -> Tensor:
    """scikit-image's fundus photograph at ``side`` px: RGB plus a fundus-mask channel."""
    from skimage import data

    rgb = torch.from_numpy(np.asarray(data.retina(), dtype=np.float32) / 255.0)
    rgb = rgb.permute(2, 0, 1)[None]
    rgb = F.interpolate(rgb, size=(side, side), mode="bilinear", antialias=True,
                        align_corners=False)
    mask = (rgb.mean(dim=1, keepdim=True) > _FUNDUS_LEVEL).float()
    return torch.cat([rgb, mask], dim=1)
