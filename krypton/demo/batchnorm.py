"""Train VGG with batch norm, deploy it without: fold each norm into its convolution.

VGG16 has no normalisation layers, and from its random initialisation it did
not learn the demo task in a CPU-sized run: its loss stayed at ln 4 for
hundreds of steps (also with Adam at 1e-4, SGD with momentum and a
layer-sequential unit-variance initialisation), where ResNet18 leaves ln 4
after about 50. The same network with a batch norm after every convolution
(torchvision's ``vgg16_bn``) learns as fast as ResNet18 does. In eval mode a
batch norm is an affine map per channel, so it folds exactly into the
convolution before it: the result is a plain VGG16, the architecture that is
deployed and explained, with the trained network's outputs.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torchvision.models as tvm
from torch import nn

__all__ = ["BATCH_NORM_TWINS", "batch_norm_twin", "fold_batch_norm"]

BATCH_NORM_TWINS = {"vgg11": tvm.vgg11_bn, "vgg16": tvm.vgg16_bn}
"""Architectures the demo trains as their batch-norm twin, by registered name."""


def batch_norm_twin(name: str, num_classes: int, seed: int) -> nn.Module:
    """``name``'s batch-norm twin, initialised under ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        twin: nn.Module = BATCH_NORM_TWINS[name](weights=None, num_classes=num_classes)
        return twin


@torch.no_grad()
def fold_batch_norm(twin: nn.Module, plain: nn.Module) -> nn.Module:
    """Load ``twin``'s eval-mode function into ``plain``, a VGG without batch norm.

    Each ``Conv2d -> BatchNorm2d`` pair of ``twin.features`` becomes one
    convolution with weight ``w * g / sqrt(v + eps)`` and bias
    ``(b - m) * g / sqrt(v + eps) + beta``, where the norm's running mean ``m``
    and variance ``v`` stand in for the batch statistics; the classifier is
    copied as it is. Returns ``plain`` in eval mode.

    Raises:
        ValueError: the two networks' convolutions do not pair up.
    """
    twin_features, plain_features = _features(twin), _features(plain)
    pairs = _conv_norm_pairs(twin_features)
    convs = [m for m in plain_features if isinstance(m, nn.Conv2d)]
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
    _classifier(plain).load_state_dict(_classifier(twin).state_dict())
    return plain.eval()


def _features(model: nn.Module) -> nn.Sequential:
    features = model.features
    if not isinstance(features, nn.Sequential):
        raise ValueError(f"{type(model).__name__} has no VGG feature stack")
    return features


def _classifier(model: nn.Module) -> nn.Module:
    classifier = model.classifier
    if not isinstance(classifier, nn.Module):
        raise ValueError(f"{type(model).__name__} has no VGG classifier")
    return classifier


def _conv_norm_pairs(features: nn.Sequential) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    layers = list(features)
    pairs = [(a, b) for a, b in pairwise(layers)
             if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d)]
    if len(pairs) != sum(isinstance(m, nn.Conv2d) for m in layers):
        raise ValueError("every convolution of the twin must be followed by a batch norm")
    return pairs
