"""Exact incremental occlusion agrees with Captum's ``Occlusion`` where they compare.

Captum averages the drop over every window covering a pixel, so the two
describe the same numbers when windows tile the image without overlap
(stride == patch size, and the patch divides the image).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from krypton.engine import occlusion
from tests.engine.helpers import TOLERANCE, architecture, calibrate

captum_attr = pytest.importorskip("captum.attr")


def _captum_drop(model: nn.Module, image: torch.Tensor, patch: int, target: int,
                 patch_value: float) -> np.ndarray:
    def probabilities(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(x), dim=1)

    attribution = captum_attr.Occlusion(probabilities).attribute(
        image.unsqueeze(0),
        sliding_window_shapes=(image.shape[0], patch, patch),
        strides=(image.shape[0], patch, patch),
        baselines=patch_value,
        target=target,
        perturbations_per_eval=16,
    )
    # Every pixel of a window carries that window's drop; read one per window.
    return attribution[0, 0, ::patch, ::patch].detach().numpy()


@pytest.mark.parametrize(("name", "size", "patch"), [
    pytest.param("resnet18", 64, 8, id="resnet18"),
    pytest.param("vgg16", 64, 16, id="vgg16"),
    pytest.param("inception_v3", 80, 16, id="inception_v3"),
])
def test_exact_drop_equals_captum_occlusion_for_non_overlapping_windows(
    name: str, size: int, patch: int
) -> None:
    image = torch.randn(3, size, size)
    model = calibrate(architecture(name), image)
    result = occlusion(model, image, patch, patch, patch_value=-0.5)
    expected = _captum_drop(model, image, patch, result.target, -0.5)
    assert float(np.ptp(expected)) > 1e-3
    np.testing.assert_allclose(result.drop, expected, rtol=0, atol=TOLERANCE)
