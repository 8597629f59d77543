"""MobileNet (Sandler et al., 2018): inverted residuals with depthwise convolutions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from krypton.models.registry import register_model

if TYPE_CHECKING:
    from torch import nn

__all__ = ["mobilenet_v2"]


@register_model(
    "mobilenet_v2",
    input_size=224,
    gflops=0.301,
    family="mobilenet",
    description="MobileNetV2: inverted residual blocks with depthwise convs, 3.5M parameters",
)
def mobilenet_v2(num_classes: int, **options: Any) -> nn.Module:
    """MobileNetV2, for edge deployments and the cheapest explanations."""
    from torchvision import models as tvm

    model: nn.Module = tvm.mobilenet_v2(weights=None, num_classes=num_classes, **options)
    return model
