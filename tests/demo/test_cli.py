"""``krypton demo``: the commands that make the demo's images and trained models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from krypton.cli import app
from krypton.demo import LABELS, default_steps
from krypton.models import build_model, decode_image

runner = CliRunner()


def test_demo_images_writes_pngs_the_decoder_reads(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "images", "--out", str(tmp_path), "--count", "3",
                                 "--size", "96"])
    assert result.exit_code == 0, result.output
    files = sorted(tmp_path.glob("*.png"))
    assert [f.name for f in files] == ["lesion-000.png", "lesion-001.png", "lesion-002.png"]
    pixels = decode_image(files[0])
    assert pixels.shape == (96, 96, 3) and np.ptp(pixels) > 0.2


def test_demo_images_with_the_same_seed_are_the_same(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        runner.invoke(app, ["demo", "images", "--out", str(tmp_path / folder), "--count", "1",
                            "--size", "96", "--seed", "7"])
    a, b = (decode_image(tmp_path / f / "lesion-000.png") for f in ("a", "b"))
    assert np.array_equal(a, b)


def test_demo_train_writes_a_loadable_checkpoint_and_its_report(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "train", "--model", "resnet18", "--steps", "1",
                                 "--batch-size", "2", "--validation", "4", "--out",
                                 str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "demo-resnet18.json").read_text())
    assert report["model"] == "resnet18" and report["labels"] == list(LABELS)
    assert list(report["per_class"]) == list(LABELS)
    assert re.search(r"NORMAL \d+%", result.output)  # per class, not only the total
    build_model("resnet18", num_classes=len(LABELS), weights=tmp_path / "demo-resnet18.pt")


def test_demo_train_with_an_unknown_model_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "train", "--model", "alexnet9", "--out",
                                 str(tmp_path)])
    assert result.exit_code == 2
    assert "alexnet9" in result.output


def test_demo_train_help_states_the_steps_training_takes_by_default() -> None:
    # The help is written out (the CLI does not import torch to print it): it must agree.
    result = runner.invoke(app, ["demo", "train", "--help"], env={"COLUMNS": "300"})
    assert (f"{default_steps('resnet18')} for resnet18, {default_steps('inception_v3')} for "
            f"inception_v3, {default_steps('vgg16')} for vgg16, "
            f"{default_steps('vgg11')} for the others" in result.output)
    assert default_steps("vgg11") == default_steps("densenet121")


def test_demo_evaluate_prints_the_confusion_matrix_of_a_trained_checkpoint(
        tmp_path: Path) -> None:
    runner.invoke(app, ["demo", "train", "--model", "resnet18", "--steps", "1",
                        "--batch-size", "2", "--validation", "4", "--out", str(tmp_path)])
    result = runner.invoke(app, ["demo", "evaluate", "--model", "resnet18", "--checkpoints",
                                 str(tmp_path), "--validation", "8"])
    assert result.exit_code == 0, result.output
    rows = [row for row in map(str.split, result.output.splitlines()) if row[:1]
            and row[0] in LABELS]
    assert [row[0] for row in rows] == list(LABELS)
    assert [sum(map(int, row[1:])) for row in rows] == [2, 2, 2, 2]  # 8 images, labels in turn
    assert re.search(r"on 8 images: NORMAL \d+%", result.output)


def test_demo_evaluate_without_a_checkpoint_says_which_file_is_missing(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "evaluate", "--model", "resnet18", "--checkpoints",
                                 str(tmp_path)])
    assert result.exit_code != 0
    assert "demo-resnet18.pt" in result.output and "Traceback" not in result.output
