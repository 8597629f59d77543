"""Train VGG as an easier twin, deploy it as plain VGG: fold the twin's extras away.

VGG16 from its random initialisation did not learn the demo task in a
CPU-sized run. Two things stood in the way, and the twin removes them:

* VGG16 has no normalisation layers: its loss stayed at ln 4 for hundreds of
  steps (also with Adam at 1e-4, SGD with momentum and a layer-sequential
  unit-variance initialisation), where ResNet18 leaves ln 4 after about 50.
  The twin has a batch norm after every convolution (torchvision's
  ``vgg16_bn``). In eval mode a batch norm is an affine map per channel, so it
  folds exactly into the convolution before it.
* VGG's head flattens a 7x7 grid of features into a 25088-wide linear layer,
  so it must learn a lesion at each of the 49 cells separately, and what it
  learns on half-size images (a 3x3 grid, stretched to 7x7) does not carry over
  to full size. The twin pools the grid to one cell first, as ResNet does, and
  its first head layer is 512 wide. The mean over the 49 cells is itself a
  linear map of the flattened grid, so that layer folds exactly into VGG's
  25088-wide one, with each weight spread evenly over the 49 cells it stands for.

The result is a plain VGG16, the architecture that is deployed and explained,
with the trained twin's outputs at the input size whose feature grid is the
head's (224 px for VGG16). The twin learns faster, not all of the task: on the
label alone it learns exudates and reads the dark lesions as normal, so it
also trains a lesion map on its stride-8 grid (:func:`lesion_map_layer`,
:mod:`krypton.demo.supervision`).
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torchvision.models as tvm
from torch import nn

from krypton.models import seeded

__all__ = ["TWINS", "fold_twin", "lesion_map_layer", "training_twin"]

TWINS = {"vgg11": tvm.vgg11_bn, "vgg16": tvm.vgg16_bn}
"""Architectures the demo trains as a twin, by registered name."""


def training_twin(name: str, num_classes: int, seed: int) -> nn.Module:
    """``name``'s twin, initialised under ``seed`` without touching the global RNG.

    Batch norm after each convolution, and a head that starts from the mean of
    the feature grid instead of its flattened cells.
    """
    with seeded(seed):
        twin: nn.Module = TWINS[name](weights=None, num_classes=num_classes)
        first = _head_input(twin)
        twin.avgpool = nn.AdaptiveAvgPool2d(1)
        channels = [m for m in _features(twin) if isinstance(m, nn.Conv2d)][-1].out_channels
        _classifier(twin)[0] = nn.Linear(channels, first.out_features)
        return twin


def lesion_map_layer(twin: nn.Module) -> tuple[str, int]:
    """The twin layer a lesion map reads, and its channel count: block 4's last ReLU.

    Its grid has stride 8 (28x28 at 224 px, 14x14 at the half-size steps'
    112 px), fine enough that a lesion's box covers a few cells; deeper grids
    are down to one or two cells at 112 px.
    """
    layers = list(_features(twin))
    pools = [index for index, layer in enumerate(layers) if isinstance(layer, nn.MaxPool2d)]
    if len(pools) < 4:
        raise ValueError(f"{type(twin).__name__} has {len(pools)} pooling stages, not 4 or more")
    convs = [layer for layer in layers[:pools[3]] if isinstance(layer, nn.Conv2d)]
    return f"features.{pools[3] - 1}", convs[-1].out_channels


@torch.no_grad()
def fold_twin(twin: nn.Module, plain: nn.Module) -> nn.Module:
    """Load ``twin``'s eval-mode function into ``plain``, a VGG without batch norm.

    Each ``Conv2d -> BatchNorm2d`` pair of ``twin.features`` becomes one
    convolution with weight ``w * g / sqrt(v + eps)`` and bias
    ``(b - m) * g / sqrt(v + eps) + beta``, where the norm's running mean ``m``
    and variance ``v`` stand in for the batch statistics. The twin's pooled
    head layer becomes ``plain``'s flattened one: each channel's weight, divided
    by the number of grid cells, on every cell of that channel. The rest of the
    classifier is copied as it is. Returns ``plain`` in eval mode.

    Raises:
        ValueError: the two networks' convolutions or heads do not pair up.
    """
    pairs = _conv_norm_pairs(_features(twin))
    convs = [m for m in _features(plain) if isinstance(m, nn.Conv2d)]
    shapes = [conv.weight.shape for conv, _ in pairs]
    if shapes != [conv.weight.shape for conv in convs]:
        raise ValueError(f"the twin's convolutions {len(shapes)} do not match the plain "
                         f"network's {len(convs)} in number or shape")
    for (conv, norm), target in zip(pairs, convs, strict=True):
        mean, variance = norm.running_mean, norm.running_var
        if mean is None or variance is None or target.bias is None:
            raise ValueError("folding needs running statistics and biased plain convolutions")
        scale = norm.weight / torch.sqrt(variance + norm.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
        target.weight.copy_(conv.weight * scale[:, None, None, None])
        target.bias.copy_((bias - mean) * scale + norm.bias)
    _fold_pooled_head(_head_input(twin), _head_input(plain))
    _classifier(plain)[1:].load_state_dict(_classifier(twin)[1:].state_dict())
    return plain.eval()


def _fold_pooled_head(pooled: nn.Linear, flattened: nn.Linear) -> None:
    """Write ``pooled`` (one input per channel) into ``flattened`` (one per channel and cell).

    ``torch.flatten`` of a ``(C, H, W)`` grid puts each channel's cells next to
    each other, so channel ``c``'s weight fills inputs ``c * H * W`` onwards.
    """
    channels, wide = pooled.in_features, flattened.in_features
    if wide % channels or pooled.out_features != flattened.out_features:
        raise ValueError(f"the twin's head ({channels} -> {pooled.out_features}) does not "
                         f"fold into the plain one ({wide} -> {flattened.out_features})")
    cells = wide // channels
    flattened.weight.copy_(pooled.weight.repeat_interleave(cells, dim=1) / cells)
    flattened.bias.copy_(pooled.bias)


def _features(model: nn.Module) -> nn.Sequential:
    features = model.features
    if not isinstance(features, nn.Sequential):
        raise ValueError(f"{type(model).__name__} has no VGG feature stack")
    return features


def _classifier(model: nn.Module) -> nn.Sequential:
    classifier = model.classifier
    if not isinstance(classifier, nn.Sequential):
        raise ValueError(f"{type(model).__name__} has no VGG classifier")
    return classifier


def _head_input(model: nn.Module) -> nn.Linear:
    first = _classifier(model)[0]
    if not isinstance(first, nn.Linear):
        raise ValueError(f"{type(model).__name__}'s classifier does not start with a linear layer")
    return first


def _conv_norm_pairs(features: nn.Sequential) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    layers = list(features)
    pairs = [(a, b) for a, b in pairwise(layers)
             if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d)]
    if len(pairs) != sum(isinstance(m, nn.Conv2d) for m in layers):
        raise ValueError("every convolution of the twin must be followed by a batch norm")
    return pairs
