"""Reading weights from the checkpoint files people actually have.

Training scripts save weights in several shapes: a bare ``state_dict``, a dict
wrapping it with the epoch and optimizer, keys prefixed by ``DataParallel`` or
``torch.compile``, or a whole TorchScript module. All are reduced to one flat
``state_dict`` and loaded strictly, so a checkpoint for the wrong architecture
or class count fails loudly instead of explaining a half-random model.

Pickles are never unpickled beyond ``torch.load(weights_only=True)``: a
checkpoint is user-supplied data and a full pickle can run arbitrary code.
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from krypton.models.errors import CheckpointError

__all__ = ["apply_state_dict", "read_labels", "read_state_dict"]

logger = logging.getLogger(__name__)

_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
"""Where training scripts put the weights inside a larger checkpoint dict, tried in order."""

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""Added to every key by ``nn.DataParallel``/``DistributedDataParallel`` and ``torch.compile``."""

_SHOWN = 5
"""How many keys of each kind a mismatch message lists before summarising."""


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Reduce any accepted checkpoint format to a flat ``state_dict`` on the CPU.

    Kept separate from loading so callers can inspect the keys first, e.g. to
    build the architecture variant the checkpoint was trained with.

    Args:
        path: Checkpoint file.

    Returns:
        Parameter and buffer tensors by name, wrapper prefixes removed.

    Raises:
        CheckpointError: The file is missing, unreadable, or holds no weights.
    """
    file = Path(path)
    if not file.exists():
        raise CheckpointError(f"checkpoint {os.fspath(path)!r} does not exist")
    if not file.is_file():
        raise CheckpointError(f"checkpoint {os.fspath(path)!r} is not a file")
    source = os.fspath(path)
    if _is_torchscript(file):
        state = _read_torchscript(file, source)
    else:
        state = _extract_state_dict(_torch_load(file, source), source)
    state = _strip_wrapper_prefixes(state)
    logger.debug("read %d tensors from checkpoint %s", len(state), source)
    return state


def read_labels(path: str | os.PathLike[str]) -> tuple[str, ...] | None:
    """The class names saved beside the weights under ``labels``, if any.

    Training scripts (``krypton demo train`` among them) often store the
    classes' names with the ``state_dict``; with them a command line can name
    the predicted class instead of printing its index. ``None`` for bare
    ``state_dict`` files, TorchScript files and anything else without a list
    of strings there.

    Raises:
        CheckpointError: The file is missing or unreadable.
    """
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"checkpoint {os.fspath(path)!r} does not exist")
    if _is_torchscript(file):
        return None
    obj = _torch_load(file, os.fspath(path))
    labels = obj.get("labels") if isinstance(obj, Mapping) else None
    if not isinstance(labels, list | tuple) or not labels or not all(
            isinstance(label, str) for label in labels):
        return None
    return tuple(labels)


def apply_state_dict(
    model: nn.Module, state: Mapping[str, Tensor], *, source: str = "state_dict"
) -> nn.Module:
    """Copy ``state`` into ``model`` strictly and switch it to eval mode.

    Keys and shapes are compared before anything is copied, so on a mismatch the
    model is left untouched and the error lists every kind of difference at once.

    Args:
        model: The architecture; modified in place.
        state: Parameter and buffer tensors by name.
        source: What to call ``state`` in error messages (usually its file path).

    Returns:
        ``model`` itself, in eval mode.

    Raises:
        CheckpointError: Missing, unexpected, or differently shaped tensors.
    """
    expected = model.state_dict()
    missing = [
        key for key in expected
        # BatchNorm fills a missing counter itself (checkpoints older than PyTorch 0.4.1).
        if key not in state and not key.endswith("num_batches_tracked")
    ]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        (key, tuple(value.shape), tuple(expected[key].shape))
        for key, value in state.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            _describe_mismatch(source, type(model).__name__, missing, unexpected, mismatched)
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {source!r} does not fit {type(model).__name__}: {exc}"
        ) from exc
    logger.info("loaded %d tensors from %s into %s", len(state), source, type(model).__name__)
    return model.eval()


def _is_torchscript(file: Path) -> bool:
    """TorchScript archives are zips with a ``constants.pkl`` and a ``code/`` folder.

    They must be told apart up front: ``torch.load(weights_only=True)`` refuses
    them, and plain ``torch.save`` zips have neither entry.
    """
    try:
        if not zipfile.is_zipfile(file):
            return False
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(
        name.endswith("/constants.pkl") or name == "constants.pkl" or "/code/" in name
        for name in names
    )


def _read_torchscript(file: Path, source: str) -> dict[str, Tensor]:
    """Only the tensors of a TorchScript module; its code is loaded but never run."""
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated upstream, but users still have such files.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated",
                                    category=FutureWarning)
            module = torch.jit.load(str(file), map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise CheckpointError(f"cannot read TorchScript checkpoint {source!r}: {exc}") from exc
    state = dict(module.state_dict())
    if not state:
        raise CheckpointError(f"TorchScript checkpoint {source!r} holds no tensors")
    return state


def _torch_load(file: Path, source: str) -> object:
    """``torch.load`` restricted to tensors and plain containers."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        # torch.load raises UnpicklingError, RuntimeError, KeyError, EOFError, ...
        # depending on how the bytes are broken.
        if "weights only" in str(exc).lower():
            detail = (
                "it holds objects other than tensors (e.g. a pickled nn.Module), which are "
                "not unpickled for safety; re-save it with torch.save(model.state_dict(), path)"
            )
        else:
            detail = f"{type(exc).__name__}: {_first_line(exc)}"
        raise CheckpointError(f"{source!r} is not a readable PyTorch checkpoint: {detail}") from exc


def _extract_state_dict(obj: object, source: str) -> dict[str, Tensor]:
    """Find the ``state_dict`` in a bare or wrapped checkpoint."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source!r} holds a {type(obj).__name__}, not a state_dict or a dict containing one"
        )
    if _is_tensor_mapping(obj):
        return _copy_state(obj)
    for key in _NESTED_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and _is_tensor_mapping(inner):
            return _copy_state(inner)
    keys = ", ".join(repr(k) for k in list(obj)[:10]) or "none"
    raise CheckpointError(
        f"{source!r} holds no state_dict: expected tensors by parameter name, or one under "
        f"{' / '.join(repr(k) for k in _NESTED_KEYS)}; top-level keys: {keys}"
    )


def _is_tensor_mapping(obj: Mapping[object, object]) -> bool:
    return bool(obj) and all(
        isinstance(key, str) and isinstance(value, Tensor) for key, value in obj.items()
    )


def _copy_state(obj: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A shallow copy that keeps the per-module version ``_metadata`` torch.save stores."""
    state: OrderedDict[str, Tensor] = OrderedDict(obj)
    metadata = getattr(obj, "_metadata", None)
    if metadata is not None:
        state._metadata = metadata  # type: ignore[attr-defined]
    return state


def _strip_wrapper_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove ``module.``/``_orig_mod.`` when every key carries it (possibly nested)."""
    while True:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            return state
        stripped: OrderedDict[str, Tensor] = OrderedDict(
            (key[len(prefix):], value) for key, value in state.items()
        )
        metadata = getattr(state, "_metadata", None)
        if metadata is not None:
            bare = prefix[:-1]
            stripped._metadata = OrderedDict(  # type: ignore[attr-defined]
                ("" if key == bare else key.removeprefix(prefix), value)
                for key, value in metadata.items()
                if key != ""
            )
        state = stripped


def _describe_mismatch(
    source: str,
    architecture: str,
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
) -> str:
    lines = [f"checkpoint {source!r} does not fit {architecture}:"]
    if mismatched:
        shown = "; ".join(
            f"{key}: checkpoint {list(ckpt)} vs model {list(model)}"
            for key, ckpt, model in mismatched[:_SHOWN]
        )
        lines.append(f"  {len(mismatched)} shape mismatch(es): {shown}{_more(mismatched)}")
    if missing:
        lines.append(
            f"  {len(missing)} key(s) missing from the checkpoint: "
            f"{', '.join(missing[:_SHOWN])}{_more(missing)}"
        )
    if unexpected:
        lines.append(
            f"  {len(unexpected)} unexpected key(s) in the checkpoint: "
            f"{', '.join(unexpected[:_SHOWN])}{_more(unexpected)}"
        )
    if missing and unexpected:
        lines.append("  (was the checkpoint saved from a different architecture?)")
    elif mismatched and not missing and not unexpected:
        lines.append("  (a different num_classes, or a different variant of the architecture?)")
    return "\n".join(lines)


def _more(items: Sequence[object]) -> str:
    return f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"
