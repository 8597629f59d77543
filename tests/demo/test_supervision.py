"""A lesion map supervises a feature grid with the lesions' boxes and leaves the model as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from krypton.demo.supervision import LesionMapHead, lesion_cells

NO_LESION = [-1, -1, -1, -1]


def test_lesion_cells_mark_every_cell_a_box_overlaps() -> None:
    # 32 px on a 4x4 grid: 8 px cells; rows 9-16 and columns 0-7 touch rows 1-2, column 0.
    mask = lesion_cells(torch.tensor([[9, 0, 17, 8]]), 32, (4, 4))
    expected = torch.zeros(1, 4, 4)
    expected[0, 1:3, 0] = 1.0
    assert torch.equal(mask, expected)


def test_an_image_without_a_lesion_has_an_empty_map() -> None:
    assert lesion_cells(torch.tensor([NO_LESION]), 32, (4, 4)).sum() == 0


def _mask_reader() -> tuple[nn.Module, LesionMapHead]:
    """A one-channel 'network' whose tapped layer is its input, read by a confident head."""
    model = nn.Sequential(nn.Identity())
    head = LesionMapHead(model, "0", channels=1)
    with torch.no_grad():
        head.score.weight.fill_(20.0)
        head.score.bias.fill_(-10.0)
    return model, head


def test_the_loss_is_low_for_features_that_mark_the_box_and_high_elsewhere() -> None:
    boxes = torch.tensor([[0, 16, 8, 32], NO_LESION])
    model, head = _mask_reader()
    truth = lesion_cells(boxes, 32, (4, 4))[:, None]
    model(truth)
    right = head.loss(boxes, 32)
    model(truth.flip(-1))  # the same shape on the wrong side
    wrong = head.loss(boxes, 32)
    assert right < 0.01 < 1.0 < wrong


def test_the_head_needs_a_forward_pass_and_stops_reading_once_removed() -> None:
    boxes = torch.tensor([NO_LESION])
    model, head = _mask_reader()
    with pytest.raises(RuntimeError, match="forward"):
        head.loss(boxes, 32)
    model(torch.zeros(1, 1, 4, 4))
    head.loss(boxes, 32)
    head.remove()
    model(torch.zeros(1, 1, 4, 4))
    with pytest.raises(RuntimeError, match="forward"):
        head.loss(boxes, 32)
