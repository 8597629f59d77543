"""Classifier architectures by name, in the style of torchvision's ``models/_api.py``.

The service and CLI only ever say ``"resnet18"``; this module turns that name
into a model with reproducible weights (seeded random, or a checkpoint) and
knows each architecture's native input size. Families register themselves
from :mod:`krypton.models.zoo` with :func:`register_model`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from krypton.models.checkpoints import apply_state_dict, read_state_dict
from krypton.models.errors import InvalidArgumentError, UnknownModelError
from krypton.models.preprocessing import Preprocessing

__all__ = [
    "CheckpointOptions",
    "ModelBuilder",
    "ModelSpec",
    "build_model",
    "classifier_head",
    "get_model_spec",
    "list_models",
    "register_model",
]

logger = logging.getLogger(__name__)


class ModelBuilder(Protocol):
    """Builds a fresh model with default-initialised weights.

    ``options`` are architecture-specific keyword arguments (for example
    ``aux_logits`` for Inception v3) passed through to the torchvision builder.
    """

    def __call__(self, num_classes: int, **options: Any) -> nn.Module: ...


CheckpointOptions = Callable[[Collection[str]], Mapping[str, Any]]
"""Maps a checkpoint's tensor names to builder options, so the built variant matches the file."""

_B = TypeVar("_B", bound=ModelBuilder)

_MODELS: dict[str, ModelSpec] = {}


@dataclass(frozen=True)
class ModelSpec:
    """Everything known about one registered architecture.

    Attributes:
        name: Registry key, e.g. ``"resnet18"``.
        builder: Called as ``builder(num_classes, **options)``.
        input_size: Native square input side the architecture was designed for.
        family: Architecture family (``"resnet"``, ``"vgg"``, ...), for grouping in UIs.
        description: One line for ``--help`` and the API's model listing.
        checkpoint_options: Derives builder options from a checkpoint's keys, for
            architectures with optional parts (Inception's auxiliary head); ``None``
            when the architecture has a single variant.
    """

    name: str
    builder: ModelBuilder
    input_size: int
    family: str
    description: str
    checkpoint_options: CheckpointOptions | None = None

    @property
    def preprocessing(self) -> Preprocessing:
        """ImageNet normalisation at the native input size, what torchvision models expect."""
        return Preprocessing(size=self.input_size)


def register_model(
    name: str,
    *,
    input_size: int,
    family: str,
    description: str,
    checkpoint_options: CheckpointOptions | None = None,
) -> Callable[[_B], _B]:
    """Decorator that adds a builder to the registry under ``name``.

    Args:
        name: Registry key; must be new.
        input_size: Native square input side in pixels.
        family: Architecture family.
        description: One line describing the model.
        checkpoint_options: See :attr:`ModelSpec.checkpoint_options`.

    Returns:
        The decorator, which returns the builder unchanged.

    Raises:
        InvalidArgumentError: ``name`` is already registered or ``input_size`` is
            not a positive integer.
    """
    if not isinstance(input_size, int) or isinstance(input_size, bool) or input_size < 1:
        raise InvalidArgumentError(f"input_size must be a positive integer, got {input_size!r}")

    def wrapper(builder: _B) -> _B:
        if name in _MODELS:
            raise InvalidArgumentError(f"a model named {name!r} is already registered")
        _MODELS[name] = ModelSpec(
            name=name,
            builder=builder,
            input_size=input_size,
            family=family,
            description=description,
            checkpoint_options=checkpoint_options,
        )
        return builder

    return wrapper


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``.

    Raises:
        UnknownModelError: ``name`` is not registered; the message lists the known names.
    """
    try:
        return _MODELS[name]
    except (KeyError, TypeError):
        raise UnknownModelError(str(name), _MODELS) from None


def list_models() -> list[str]:
    """Every registered name, sorted so listings and error messages are stable."""
    return sorted(_MODELS)


def build_model(
    name: str,
    *,
    num_classes: int = 1000,
    weights: str | os.PathLike[str] | None = None,
    seed: int = 0,
    **options: Any,
) -> nn.Module:
    """A registered model in eval mode, with reproducible weights.

    Without ``weights`` the parameters are drawn under ``seed`` in a forked RNG,
    so the same call always gives the same model and the caller's global RNG
    stream is left exactly where it was. With ``weights`` the checkpoint is read
    first (failing fast, before the costly build) and its keys choose the
    architecture variant where there is a choice, e.g. Inception v3 with or
    without its auxiliary head.

    Args:
        name: A name from :func:`list_models`.
        num_classes: Size of the classifier head; must match the checkpoint.
        weights: Checkpoint to load strictly (any format
            :func:`~krypton.models.checkpoints.read_state_dict` accepts).
        seed: Seed for the random initialisation.
        **options: Architecture-specific builder options (e.g. ``aux_logits``);
            they override what the checkpoint's keys suggest.

    Returns:
        The model, on the CPU, in eval mode.

    Raises:
        UnknownModelError: ``name`` is not registered.
        InvalidArgumentError: ``num_classes`` or ``seed`` is not a valid integer.
        CheckpointError: ``weights`` is unreadable or does not fit the architecture.
    """
    spec = get_model_spec(name)
    if not _is_int(num_classes) or num_classes < 1:
        raise InvalidArgumentError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not _is_int(seed):
        raise InvalidArgumentError(f"seed must be an integer, got {seed!r}")
    state = None
    if weights is not None:
        state = read_state_dict(weights)
        if spec.checkpoint_options is not None:
            options = {**spec.checkpoint_options(state.keys()), **options}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.builder(num_classes, **options)
    logger.debug("built %s (num_classes=%d, seed=%d, options=%s)", name, num_classes, seed,
                 options)
    if weights is not None and state is not None:
        apply_state_dict(model, state, source=os.fspath(weights))
    return model.eval()


def classifier_head(model: nn.Module) -> nn.Linear:
    """The model's last linear layer: the head whose outputs are the logits.

    Raises:
        InvalidArgumentError: the model has no linear layer.
    """
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise InvalidArgumentError(f"{type(model).__name__} has no linear classifier head")
    return heads[-1]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
