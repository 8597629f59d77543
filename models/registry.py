"""Classifier architectures by name, in the style of torchvision's ``models/_api.py``.

The service and CLI only ever say ``"resnet18"``; this module knows each
name's builder and native input size, and :func:`~krypton.models.build.build_model`
turns a name into a model with reproducible weights. Families register
themselves from :mod:`krypton.models.zoo` with :func:`register_model`. No
torch here: the API lists and validates models without loading it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from krypton.models.errors import InvalidArgumentError, UnknownModelError
from krypton.models.preprocessing import Preprocessing

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "CheckpointOptions",
    "ModelBuilder",
    "ModelSpec",
    "get_model_spec",
    "list_models",
    "register_model",
]


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
        min_size: Smallest square input side the architecture accepts (its
            pooling stages must leave at least one cell), as torchvision's
            weights metadata records it.
        gflops: Multiply-accumulates of one inference at ``input_size``, in
            billions (torchvision's ``_ops``): what one patch position costs a
            naive run, so the service can bound the work of a job.
    """

    name: str
    builder: ModelBuilder
    input_size: int
    family: str
    description: str
    checkpoint_options: CheckpointOptions | None = None
    min_size: int = 32
    gflops: float = 1.0

    def inference_gflops(self, size: int) -> float:
        """:attr:`gflops` scaled to a square input of side ``size`` (convolutions scale
        with the area)."""
        return self.gflops * (size / self.input_size) ** 2

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
    min_size: int = 32,
    gflops: float = 1.0,
) -> Callable[[_B], _B]:
    """Decorator that adds a builder to the registry under ``name``.

    Args:
        name: Registry key; must be new.
        input_size: Native square input side in pixels.
        family: Architecture family.
        description: One line describing the model.
        checkpoint_options: See :attr:`ModelSpec.checkpoint_options`.
        min_size: See :attr:`ModelSpec.min_size`.
        gflops: See :attr:`ModelSpec.gflops`.

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
            min_size=min_size,
            gflops=gflops,
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
