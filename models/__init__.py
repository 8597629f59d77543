"""Classifier models for Krypton: a registry of architectures, checkpoints, preprocessing.

Knows nothing of occlusion: it turns a model name (and optionally a checkpoint
file) into an ``nn.Module`` in eval mode, and image bytes into the normalised
tensor that model expects. Importing this package registers every architecture
in :mod:`krypton.models.zoo`.

Importing it loads no torch. The API process reads deployments, validates
requests and decodes image headers with the plain-Python half; the names that
need torch (building models, reading checkpoints, tensors) are imported on
first use, by the workers and the command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from krypton.models import zoo
from krypton.models.datasets import (
    DEFAULT_DATASETS_DIR,
    SCHEMA_VERSION,
    DatasetConfig,
    DatasetStore,
)
from krypton.models.errors import (
    CheckpointError,
    DatasetConfigError,
    ImageDecodeError,
    ImageTooLargeError,
    InvalidArgumentError,
    ModelError,
    UnknownModelError,
)
from krypton.models.images import DEFAULT_MAX_PIXELS, SUPPORTED_FORMATS, decode_image
from krypton.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, patch_value
from krypton.models.registry import (
    CheckpointOptions,
    ModelBuilder,
    ModelSpec,
    get_model_spec,
    list_models,
    register_model,
)
from krypton.models.weights import fingerprint, random_weights_id, weights_id

if TYPE_CHECKING:
    from krypton.models.build import build_model, classifier_head, seeded
    from krypton.models.checkpoints import (
        apply_state_dict,
        read_labels,
        read_state_dict,
    )
    from krypton.models.transforms import normalize, to_model_input

_NEEDS_TORCH = {
    "build_model": "krypton.models.build",
    "classifier_head": "krypton.models.build",
    "seeded": "krypton.models.build",
    "apply_state_dict": "krypton.models.checkpoints",
    "read_labels": "krypton.models.checkpoints",
    "read_state_dict": "krypton.models.checkpoints",
    "normalize": "krypton.models.transforms",
    "to_model_input": "krypton.models.transforms",
}


def __getattr__(name: str) -> Any:
    """Import a torch-dependent name from its module the first time it is asked for."""
    if name in _NEEDS_TORCH:
        return getattr(importlib.import_module(_NEEDS_TORCH[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_DATASETS_DIR",
    "DEFAULT_MAX_PIXELS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SCHEMA_VERSION",
    "SUPPORTED_FORMATS",
    "CheckpointError",
    "CheckpointOptions",
    "DatasetConfig",
    "DatasetConfigError",
    "DatasetStore",
    "ImageDecodeError",
    "ImageTooLargeError",
    "InvalidArgumentError",
    "ModelBuilder",
    "ModelError",
    "ModelSpec",
    "Preprocessing",
    "UnknownModelError",
    "apply_state_dict",
    "build_model",
    "classifier_head",
    "decode_image",
    "fingerprint",
    "get_model_spec",
    "list_models",
    "normalize",
    "patch_value",
    "random_weights_id",
    "read_labels",
    "read_state_dict",
    "seeded",
    "register_model",
    "to_model_input",
    "weights_id",
    "zoo",
]
