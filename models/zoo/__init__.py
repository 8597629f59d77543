"""The architectures Krypton can explain, one family per module.

Importing this package registers every family; :mod:`krypton.models` does so
on import, so :func:`~krypton.models.registry.list_models` is always complete.
Registering imports no torch: each builder imports torchvision when it is
called, so the API process, which only reads names and input sizes, never
loads it.
"""

from __future__ import annotations

from krypton.models.zoo import densenet, inception, mobilenet, resnet, vgg

__all__ = ["densenet", "inception", "mobilenet", "resnet", "vgg"]
