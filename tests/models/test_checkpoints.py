"""Checkpoint formats round-trip exactly; bad files fail with CheckpointError saying why."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from krypton.models import (
    CheckpointError,
    apply_state_dict,
    build_model,
    fingerprint,
    read_labels,
    read_state_dict,
)

# TorchScript is deprecated upstream but users still have such files; the warnings
# come from producing them in the tests, not from loading.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:FutureWarning")

CLASSES = 3


def _load(model: nn.Module, path: str | Path) -> nn.Module:
    """A checkpoint file into ``model``, as a deployment's weights are loaded."""
    return apply_state_dict(model, read_state_dict(path), source=str(path))


def _perturb_buffers(model: nn.Module) -> nn.Module:
    """Non-default BatchNorm statistics, so a loader that drops buffers is caught."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.uniform_(-0.2, 0.2, generator=generator)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """A resnet18 whose weights differ from every seed build_model uses below."""
    return _perturb_buffers(build_model("resnet18", num_classes=CLASSES, seed=99))


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def _logits(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model(image)
    return logits


def _save_plain(model: nn.Module, path: Path) -> None:
    torch.save(model.state_dict(), path)


def _save_under_state_dict(model: nn.Module, path: Path) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.save({"epoch": 12, "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(), "best_acc": 0.91}, path)


def _save_under_model(model: nn.Module, path: Path) -> None:
    torch.save({"model": model.state_dict(), "epoch": 3, "args": {"lr": 0.01}}, path)


def _save_data_parallel(model: nn.Module, path: Path) -> None:
    torch.save(nn.DataParallel(model).state_dict(), path)


def _save_data_parallel_wrapped(model: nn.Module, path: Path) -> None:
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)


def _save_compiled_prefix(model: nn.Module, path: Path) -> None:
    torch.save({f"_orig_mod.{k}": v for k, v in model.state_dict().items()}, path)


def _save_scripted(model: nn.Module, path: Path) -> None:
    torch.jit.save(torch.jit.script(model), str(path))


def _save_traced(model: nn.Module, path: Path) -> None:
    traced = torch.jit.trace(model, torch.rand(1, 3, 64, 64))  # type: ignore[no-untyped-call]
    torch.jit.save(traced, str(path))


SAVERS: dict[str, Callable[[nn.Module, Path], None]] = {
    "plain-state-dict": _save_plain,
    "under-state_dict-key": _save_under_state_dict,
    "under-model-key": _save_under_model,
    "data-parallel-prefix": _save_data_parallel,
    "data-parallel-prefix-under-key": _save_data_parallel_wrapped,
    "torch-compile-prefix": _save_compiled_prefix,
    "torchscript-scripted": _save_scripted,
    "torchscript-traced": _save_traced,
}


@pytest.mark.parametrize("save", list(SAVERS.values()), ids=list(SAVERS))
def test_build_model_with_saved_checkpoint_reproduces_outputs(
    save: Callable[[nn.Module, Path], None], trained: nn.Module, image: torch.Tensor,
    tmp_path: Path,
) -> None:
    path = tmp_path / "checkpoint.pt"
    save(trained, path)
    loaded = build_model("resnet18", num_classes=CLASSES, weights=path, seed=1)
    torch.testing.assert_close(_logits(loaded, image), _logits(trained, image), rtol=0, atol=0)


def test_load_checkpoint_returns_same_model_in_eval_mode(
    trained: nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / "weights.pth"
    _save_plain(trained, path)
    model = torchvision.models.resnet18(weights=None, num_classes=CLASSES).train()
    loaded = _load(model, str(path))
    assert loaded is model and not model.training


def test_read_state_dict_data_parallel_checkpoint_strips_module_prefix(
    trained: nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / "dp.pt"
    _save_data_parallel(trained, path)
    assert list(read_state_dict(path)) == list(trained.state_dict())


def test_build_model_inception_checkpoint_with_aux_head_reproduces_outputs(
    tmp_path: Path,
) -> None:
    saved = _perturb_buffers(build_model("inception_v3", num_classes=CLASSES, seed=4))
    path = tmp_path / "inception_aux.pt"
    torch.save(saved.state_dict(), path)
    loaded = build_model("inception_v3", num_classes=CLASSES, weights=path)
    image = torch.rand(1, 3, 75, 75)
    assert loaded.AuxLogits is not None
    torch.testing.assert_close(_logits(loaded, image), _logits(saved, image), rtol=0, atol=0)


def test_build_model_inception_checkpoint_without_aux_head_reproduces_outputs(
    tmp_path: Path,
) -> None:
    saved = _perturb_buffers(torchvision.models.inception_v3(
        weights=None, num_classes=CLASSES, aux_logits=False, init_weights=True))
    path = tmp_path / "inception_no_aux.pt"
    torch.save({"state_dict": saved.state_dict(), "epoch": 1}, path)
    loaded = build_model("inception_v3", num_classes=CLASSES, weights=path)
    image = torch.rand(1, 3, 75, 75)
    assert loaded.AuxLogits is None
    torch.testing.assert_close(_logits(loaded, image), _logits(saved, image), rtol=0, atol=0)


def test_build_model_checkpoint_with_other_class_count_names_shape_mismatch(
    tmp_path: Path,
) -> None:
    path = tmp_path / "five.pt"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=5).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        build_model("resnet18", num_classes=CLASSES, weights=path)
    message = str(info.value)
    assert "fc.weight: checkpoint [5, 512] vs model [3, 512]" in message
    assert "fc.bias: checkpoint [5] vs model [3]" in message


def test_build_model_checkpoint_of_other_architecture_names_missing_and_unexpected_keys(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mobilenet.pt"
    torch.save(torchvision.models.mobilenet_v2(weights=None, num_classes=CLASSES).state_dict(),
               path)
    with pytest.raises(CheckpointError) as info:
        build_model("resnet18", num_classes=CLASSES, weights=path)
    message = str(info.value)
    assert "missing from the checkpoint: conv1.weight" in message
    assert "unexpected key(s) in the checkpoint: features.0.0.weight" in message
    assert "more)" in message


def test_load_checkpoint_mismatch_leaves_model_untouched(tmp_path: Path) -> None:
    path = tmp_path / "partial.pt"
    state = torchvision.models.resnet18(weights=None, num_classes=CLASSES).state_dict()
    del state["fc.bias"]
    torch.save(state, path)
    model = build_model("resnet18", num_classes=CLASSES, seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"1 key\(s\) missing from the checkpoint: fc\.bias"):
        _load(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_load_checkpoint_missing_file_raises_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        _load(nn.Linear(2, 2), tmp_path / "absent.pt")


def test_load_checkpoint_directory_raises_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a file"):
        _load(nn.Linear(2, 2), tmp_path)


@pytest.mark.parametrize("content", [
    pytest.param(b"this is not a checkpoint\n" * 40, id="text"),
    pytest.param(b"", id="empty"),
    pytest.param(b"PK\x03\x04" + b"\x00" * 64, id="broken-zip"),
])
def test_load_checkpoint_garbage_file_raises_chained_checkpoint_error(
    content: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as info:
        _load(nn.Linear(2, 2), path)
    assert info.value.__cause__ is not None


def test_load_checkpoint_pickled_module_is_refused_with_hint(tmp_path: Path) -> None:
    path = tmp_path / "whole_model.pt"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(CheckpointError, match=r"re-save it with torch\.save\(model\.state_dict"):
        _load(nn.Linear(2, 2), path)


@pytest.mark.parametrize("content", [
    pytest.param({"epoch": 3, "optimizer": {"lr": 0.1}}, id="dict-without-weights"),
    pytest.param([torch.zeros(2)], id="list-of-tensors"),
    pytest.param({}, id="empty-dict"),
])
def test_load_checkpoint_without_state_dict_raises_checkpoint_error(
    content: object, tmp_path: Path
) -> None:
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match="state_dict"):
        _load(nn.Linear(2, 2), path)


def test_fingerprint_equals_sha256_of_file_bytes(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    assert fingerprint(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_fingerprint_same_file_is_stable(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    assert fingerprint(path) == fingerprint(str(path))


def test_fingerprint_changed_content_changes_digest(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, path)
    before = fingerprint(path)
    torch.save({"w": torch.ones(3)}, path)
    assert fingerprint(path) != before


def test_fingerprint_missing_file_raises_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="absent.pt"):
        fingerprint(tmp_path / "absent.pt")


def test_read_labels_returns_the_class_names_saved_beside_the_weights(
        trained: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "labelled.pt"
    torch.save({"state_dict": trained.state_dict(), "labels": ["NORMAL", "DRUSEN", "CNV"]},
               path)
    assert read_labels(path) == ("NORMAL", "DRUSEN", "CNV")


@pytest.mark.parametrize("extra", [{}, {"labels": "NORMAL"}, {"labels": [0, 1, 2]},
                                   {"labels": []}], ids=["none", "string", "ints", "empty"])
def test_read_labels_is_none_without_a_list_of_names(
        trained: nn.Module, tmp_path: Path, extra: dict[str, object]) -> None:
    path = tmp_path / "unlabelled.pt"
    torch.save({"state_dict": trained.state_dict(), **extra}, path)
    assert read_labels(path) is None


def test_read_labels_of_a_bare_state_dict_is_none(trained: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "bare.pt"
    torch.save(trained.state_dict(), path)
    assert read_labels(path) is None


def test_read_labels_missing_file_raises_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_labels(tmp_path / "absent.pt")
