"""Helpers for engine tests: informative random models and the exactness check."""

from __future__ import annotations

import numpy as np
import torch
import torchvision
from torch import nn

from krypton.engine import OcclusionResult, occlusion
from krypton.models import classifier_head

TOLERANCE = 1e-4
"""Largest allowed difference between exact and naive probabilities."""


def architecture(name: str, classes: int = 10) -> nn.Module:
    """A torchvision architecture with seeded random weights, in eval mode."""
    options = {"init_weights": True} if name in ("vgg16", "inception_v3") else {}
    if name == "inception_v3":
        options["aux_logits"] = False
    builder = getattr(torchvision.models, name)
    return builder(weights=None, num_classes=classes, **options).eval()


def calibrate(model: nn.Module, image: torch.Tensor, spread: float = 3.0) -> nn.Module:
    """Rescale the last linear layer so the logits spread over ``spread``.

    Random networks often give a saturated softmax (one class at 1.0), whose
    heatmap is flat and would let a broken engine pass. After this the
    probabilities move visibly when a patch hides something.
    """
    head = classifier_head(model)
    with torch.no_grad():
        logits = model(image.unsqueeze(0))
        scale = spread / logits.std().clamp_min(1e-12)
        head.weight.mul_(scale)
        head.bias.mul_(scale)
    return model


def assert_exact(model: nn.Module, image: torch.Tensor, patch: int, stride: int,
                 **options: object) -> tuple[OcclusionResult, OcclusionResult]:
    """Exact incremental equals naive occlusion, on a heatmap that is not flat."""
    naive = occlusion(model, image, patch, stride, mode="naive", **options)  # type: ignore[arg-type]
    exact = occlusion(model, image, patch, stride, mode="exact", **options)  # type: ignore[arg-type]
    assert exact.heatmap.shape == naive.heatmap.shape
    assert float(np.ptp(naive.heatmap)) > 1e-3, "flat heatmap: the check would prove nothing"
    np.testing.assert_allclose(exact.heatmap, naive.heatmap, rtol=0, atol=TOLERANCE)
    return naive, exact
