"""What identifies a model's weights: its checkpoint's sha256, or the seed of random ones.

Tuned dataset configs are pinned to these identities, so a config is never
applied to weights it was not tuned on.
"""

from __future__ import annotations

import hashlib
import os

from krypton.models.errors import CheckpointError

__all__ = ["fingerprint", "random_weights_id", "weights_id"]


def weights_id(checkpoint: str | os.PathLike[str] | None, *, seed: int, num_classes: int) -> str:
    """The checkpoint's :func:`fingerprint`, or :func:`random_weights_id` without one."""
    if checkpoint is None:
        return random_weights_id(seed, num_classes)
    return fingerprint(checkpoint)


def random_weights_id(seed: int, num_classes: int) -> str:
    """What identifies seeded random weights: the seed and the head's size both change them."""
    return f"random-seed-{seed}-classes-{num_classes}"


def fingerprint(path: str | os.PathLike[str]) -> str:
    """SHA-256 of the checkpoint file, to pin tuned settings to the exact weights.

    Hashes the bytes rather than the tensors so it is cheap and independent of
    how the file is later interpreted.

    Args:
        path: Any file.

    Returns:
        64 lowercase hex digits.

    Raises:
        CheckpointError: The file cannot be read.
    """
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as exc:
        raise CheckpointError(
            f"cannot read checkpoint {os.fspath(path)!r}: {exc.strerror or exc}"
        ) from exc
