"""Registered architectures built into models with reproducible weights."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from krypton.models.checkpoints import apply_state_dict, read_state_dict
from krypton.models.errors import InvalidArgumentError
from krypton.models.registry import get_model_spec

__all__ = ["build_model", "classifier_head", "seeded"]

logger = logging.getLogger(__name__)


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
    with seeded(seed):
        model = spec.builder(num_classes, **options)
    logger.debug("built %s (num_classes=%d, seed=%d, options=%s)", name, num_classes, seed,
                 options)
    if weights is not None and state is not None:
        apply_state_dict(model, state, source=os.fspath(weights))
    return model.eval()


@contextmanager
def seeded(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run with the global generators at ``seed``, restoring the caller's afterwards.

    Seeds the CPU generator, and a CUDA ``device``'s own when one is named, but
    no other GPU's: building a model on the CPU must not reseed the GPU a
    training run or a worker is drawing from.
    """
    target = torch.device(device)
    gpus = [target.index or 0] if target.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):
        torch.default_generator.manual_seed(seed)
        for gpu in gpus:
            with torch.cuda.device(gpu):
                torch.cuda.manual_seed(seed)
        yield


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
