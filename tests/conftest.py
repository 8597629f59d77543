"""Fixtures shared by every suite: a fixed seed and small hand-checkable models."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from krypton.models import build_model


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """Undo the logging set-up of a command run in-process.

    The CLI configures the root logger with a handler on the stderr it sees,
    which under pytest is a capture that closes with the test; a later test's
    log record would then fail to write there ("--- Logging error ---").
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


class TinyCNN(nn.Module):
    """Small enough to check by hand, varied enough to exercise every layer kind.

    conv(pad 1) -> relu -> maxpool(ceil) -> two branches (dilated conv, strided
    1x1 conv + upsample-free add path) -> concat -> avgpool -> global pool -> fc.
    """

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.left = nn.Conv2d(6, 4, 3, padding=2, dilation=2)
        self.right = nn.Conv2d(6, 4, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.down = nn.Conv2d(8, 8, 1, stride=2)
        self.avg = nn.AvgPool2d(3, stride=1, padding=1)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn(self.stem(x))))
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        x = torch.relu(x + self.grouped(x))
        x = self.avg(self.down(x))
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(x)


@pytest.fixture
def tiny_cnn() -> nn.Module:
    model = TinyCNN().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A fine-tuned-like ResNet18 state_dict with three classes, under ``weights/``."""
    path = tmp_path / "weights" / "finetuned.pt"
    path.parent.mkdir()
    torch.save(build_model("resnet18", num_classes=3, seed=11).state_dict(), path)
    return path
