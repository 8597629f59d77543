"""ResNet (He et al., 2015): residual blocks with batch norm."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from krypton.models.registry import register_model

if TYPE_CHECKING:
    from torch import nn

__all__ = ["resnet18", "resnet50"]


@register_model(
    "resnet18",
    input_size=224,
    gflops=1.814,
    family="resnet",
    description="ResNet-18: basic residual blocks, 11.7M parameters",
)
def resnet18(num_classes: int, **options: Any) -> nn.Module:
    """ResNet-18, the default: small, fast, and a common fine-tuning base."""
    from torchvision import models as tvm

    model: nn.Module = tvm.resnet18(weights=None, num_classes=num_classes, **options)
    return model


@register_model(
    "resnet50",
    input_size=224,
    gflops=4.089,
    family="resnet",
    description="ResNet-50: bottleneck residual blocks, 25.6M parameters",
)
def resnet50(num_classes: int, **options: Any) -> nn.Module:
    """ResNet-50, the usual stronger baseline."""
    from torchvision import models as tvm

    model: nn.Module = tvm.resnet50(weights=None, num_classes=num_classes, **options)
    return model
