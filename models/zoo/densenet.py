"""DenseNet (Huang et al., 2016): every layer sees all earlier feature maps of its block."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from krypton.models.registry import register_model

if TYPE_CHECKING:
    from torch import nn

__all__ = ["densenet121"]


@register_model(
    "densenet121",
    input_size=224,
    gflops=2.834,
    family="densenet",
    description="DenseNet-121: four dense blocks, growth rate 32, 8.0M parameters",
)
def densenet121(num_classes: int, **options: Any) -> nn.Module:
    """DenseNet-121, popular for medical imaging (e.g. CheXNet)."""
    from torchvision import models as tvm

    model: nn.Module = tvm.densenet121(weights=None, num_classes=num_classes, **options)
    return model
