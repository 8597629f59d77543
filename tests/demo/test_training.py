"""Demo training writes checkpoints the model registry loads like any fine-tuned model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from krypton.demo import LABELS, demo_checkpoint, save_checkpoint, train_demo_model
from krypton.demo.training import TrainingReport, TrainingStreams
from krypton.models import build_model, read_state_dict


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, TrainingReport]:
    # Two steps: enough to see the loop, the schedule and the report work, not to learn.
    return train_demo_model("resnet18", steps=2, batch_size=2, full_size_share=0.5,
                            validation=4)


def test_training_returns_an_eval_mode_model_with_one_output_per_label(trained: tuple) -> None:  # type: ignore[type-arg]
    model, _ = trained
    assert not model.training
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, len(LABELS))


def test_training_changes_the_backbone_and_the_zeroed_head(trained: tuple) -> None:  # type: ignore[type-arg]
    model, _ = trained
    initial = build_model("resnet18", num_classes=len(LABELS), seed=0)
    assert not torch.equal(model.layer4[1].conv2.weight, initial.layer4[1].conv2.weight)
    assert model.fc.weight.abs().sum() > 0  # the head starts at zero and has moved


def test_training_reports_what_it_did(trained: tuple) -> None:  # type: ignore[type-arg]
    _, report = trained
    assert (report.model, report.steps, report.batch_size) == ("resnet18", 2, 2)
    assert report.labels == LABELS
    assert 0.0 <= report.accuracy <= 1.0 and report.validation == 4
    assert report.final_loss > 0.0 and report.seconds > 0.0


def test_the_report_counts_each_validation_image_once_by_true_and_predicted_label(
        trained: tuple) -> None:  # type: ignore[type-arg]
    _, report = trained
    assert len(report.confusion) == len(LABELS)
    assert [sum(row) for row in report.confusion] == [1, 1, 1, 1]  # 4 images, labels in turn
    correct = sum(report.confusion[i][i] for i in range(len(LABELS)))
    assert report.accuracy == correct / 4
    assert list(report.per_class()) == list(LABELS)
    assert sum(report.per_class().values()) == correct


def test_a_saved_checkpoint_loads_into_the_same_architecture(
        trained: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    model, report = trained
    path = save_checkpoint(model, report, demo_checkpoint(tmp_path, "resnet18"))
    assert path == tmp_path / "demo-resnet18.pt"
    loaded = build_model("resnet18", num_classes=len(LABELS), weights=path)
    image = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(image), model(image))


def test_a_saved_checkpoint_carries_its_labels(trained: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    model, report = trained
    path = save_checkpoint(model, report, tmp_path / "demo.pt")
    stored = torch.load(path, weights_only=True)
    assert stored["labels"] == list(LABELS)
    assert stored["training"]["steps"] == 2
    assert set(read_state_dict(path)) == set(model.state_dict())
    assert not (tmp_path / "demo.pt.partial").exists()


@pytest.mark.parametrize("options", [{"steps": 0}, {"steps": 1, "seed": -1},
                                     {"steps": 1, "full_size_share": 2.0},
                                     {"steps": 1, "learning_rate": 0.0},
                                     {"steps": 1, "validation": 0}])
def test_invalid_training_options_raise(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        train_demo_model("resnet18", **options)  # type: ignore[arg-type]


def test_full_size_steps_draw_a_stream_apart_from_the_half_size_one() -> None:
    streams = TrainingStreams.for_model("resnet18", seed=0, occluders=0.5, batch_size=16,
                                        full_from=1)
    half_size, full_size = streams.batch(0), streams.batch(1)
    assert half_size.images.shape[-1] < full_size.images.shape[-1]
    assert not torch.equal(half_size.labels, full_size.labels)


@pytest.mark.parametrize(("name", "expected"), [("vgg11", True), ("resnet18", False)])
def test_only_the_twins_train_a_lesion_map_and_say_so(name: str, expected: bool) -> None:
    lines: list[str] = []
    _, report = train_demo_model(name, steps=1, batch_size=2, validation=1,
                                 report=lines.append)
    assert report.lesion_maps is expected
    assert ("lesion map" in lines[0]) is expected


def test_training_leaves_the_callers_random_state_as_it_was() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_demo_model("resnet18", steps=1, batch_size=1, validation=1)
    assert torch.equal(torch.rand(3), expected)


def test_vgg_trains_as_its_twin_and_returns_the_plain_architecture(tmp_path: Path) -> None:
    model, report = train_demo_model("vgg11", steps=1, batch_size=2, validation=1)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    path = save_checkpoint(model, report, tmp_path / "demo-vgg11.pt")
    loaded = build_model("vgg11", num_classes=len(LABELS), weights=path)  # strict load
    image = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(image), model(image))
