"""Inception v3 (Szegedy et al., 2015): multi-branch blocks, 299-pixel input.

Its auxiliary classifier only matters in training, but fine-tuned torchvision
checkpoints carry its ``AuxLogits.*`` tensors while others were trained
without it; the builder follows whichever the checkpoint holds.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from krypton.models.registry import register_model

if TYPE_CHECKING:
    from torch import nn

__all__ = ["inception_v3"]

_AUX_PREFIX = "AuxLogits."


def _aux_head_if_in_checkpoint(keys: Collection[str]) -> dict[str, Any]:
    """Build the auxiliary head only when the checkpoint has weights for it."""
    return {"aux_logits": any(key.startswith(_AUX_PREFIX) for key in keys)}


@register_model(
    "inception_v3",
    input_size=299,
    gflops=5.713,
    family="inception",
    description="Inception v3: factorised multi-branch blocks, 299 px input, 27M parameters",
    checkpoint_options=_aux_head_if_in_checkpoint,
    min_size=75,
)
def inception_v3(num_classes: int, *, aux_logits: bool = True, **options: Any) -> nn.Module:
    """Inception v3; the auxiliary head is on by default, as torchvision trains it.

    In eval mode the model returns plain logits either way.
    """
    from torchvision import models as tvm

    # init_weights=True: truncated-normal init, and no torchvision FutureWarning.
    model: nn.Module = tvm.inception_v3(
        weights=None,
        num_classes=num_classes,
        aux_logits=aux_logits,
        init_weights=True,
        **options,
    )
    return model
