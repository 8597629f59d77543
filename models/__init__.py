"""Classifier models for Krypton: a registry of architectures, checkpoints, preprocessing.

Knows nothing of occlusion: it turns a model name (and optionally a checkpoint
file) into an ``nn.Module`` in eval mode, and image bytes into the normalised
tensor that model expects. Importing this package registers every architecture
in :mod:`krypton.models.zoo`.
"""

from __future__ import annotations

from krypton.models import zoo
from krypton.models.checkpoints import (
    apply_state_dict,
    fingerprint,
    load_checkpoint,
    read_labels,
    read_state_dict,
)
from krypton.models.datasets import (
    SCHEMA_VERSION,
    DatasetConfig,
    DatasetStore,
    random_weights_id,
)
from krypton.models.errors import (
    CheckpointError,
    DatasetConfigError,
    ImageDecodeError,
    InvalidArgumentError,
    ModelError,
    UnknownModelError,
)
from krypton.models.preprocessing import (
    DEFAULT_MAX_PIXELS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SUPPORTED_FORMATS,
    Preprocessing,
    decode_image,
    denormalize,
    normalize,
    patch_value,
    to_model_input,
)
from krypton.models.registry import (
    CheckpointOptions,
    ModelBuilder,
    ModelSpec,
    build_model,
    classifier_head,
    get_model_spec,
    list_models,
    register_model,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SCHEMA_VERSION",
    "SUPPORTED_FORMATS",
    "CheckpointError",
    "DatasetConfig",
    "DatasetConfigError",
    "DatasetStore",
    "CheckpointOptions",
    "ImageDecodeError",
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
    "denormalize",
    "normalize",
    "fingerprint",
    "get_model_spec",
    "list_models",
    "load_checkpoint",
    "patch_value",
    "random_weights_id",
    "read_labels",
    "read_state_dict",
    "register_model",
    "to_model_input",
    "zoo",
]
