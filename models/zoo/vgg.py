"""VGG (Simonyan & Zisserman, 2014): plain conv stacks, the classic occlusion-study model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from krypton.models.registry import register_model

if TYPE_CHECKING:
    from torch import nn

__all__ = ["vgg11", "vgg16"]


@register_model(
    "vgg11",
    input_size=224,
    gflops=7.609,
    family="vgg",
    description="VGG-11: 8 conv + 3 fully connected layers, no batch norm",
)
def vgg11(num_classes: int, **options: Any) -> nn.Module:
    """VGG-11; the smallest VGG, for quick experiments with the same layer kinds as VGG-16."""
    from torchvision import models as tvm

    # init_weights=True: Kaiming-normal convs, N(0, 0.01) linears, as torchvision trains them.
    model: nn.Module = tvm.vgg11(
        weights=None, num_classes=num_classes, init_weights=True, **options
    )
    return model


@register_model(
    "vgg16",
    input_size=224,
    gflops=15.47,
    family="vgg",
    description="VGG-16: 13 conv + 3 fully connected layers, no batch norm",
)
def vgg16(num_classes: int, **options: Any) -> nn.Module:
    """VGG-16, the model of most occlusion-sensitivity papers."""
    from torchvision import models as tvm

    model: nn.Module = tvm.vgg16(
        weights=None, num_classes=num_classes, init_weights=True, **options
    )
    return model
