"""The ``krypton`` command end to end, on a real fundus photograph."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import click
import numpy as np
import pytest
import torch
import torchvision
import typer
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from krypton.cli import app
from krypton.core.records import Prediction
from krypton.models.deployment import default_deployment

runner = CliRunner()
FAST = ["--model", "resnet18", "--num-classes", "3", "--patch", "32", "--stride", "32"]


@pytest.fixture(scope="module")
def retina_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "retina.png"
    Image.fromarray(data.retina()).resize((300, 260)).save(path)
    return path


def test_explain_writes_png_and_overlay_at_image_size(retina_png: Path, tmp_path: Path) -> None:
    out = tmp_path / "heat.png"
    result = runner.invoke(app, ["explain", str(retina_png), "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    overlay = tmp_path / "heat.overlay.png"
    assert Image.open(out).format == "PNG"
    assert Image.open(overlay).size == (300, 260)
    assert "seeded random weights" in result.output


def test_explain_writes_json_with_heatmap_and_metadata(retina_png: Path, tmp_path: Path) -> None:
    out = tmp_path / "heat.json"
    result = runner.invoke(app, ["explain", str(retina_png), "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert np.asarray(document["heatmap"]).shape == (7, 7)
    assert document["view"] == "probability" and document["random_weights"] is True
    assert {key: document["params"][key] for key in ("patch_size", "stride", "patch_color",
                                                     "mode")} == {
        "patch_size": 32, "stride": 32, "patch_color": "gray", "mode": "exact"}
    assert 0 <= document["prediction"]["predicted_class"] < 3
    assert document["run"]["heatmap_shape"] == [7, 7]


def test_explain_json_has_the_keys_of_the_services(retina_png: Path, tmp_path: Path) -> None:
    out = tmp_path / "heat.json"
    result = runner.invoke(app, ["explain", str(retina_png), "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert set(document) == {"id", "view", "params", "prediction", "random_weights", "run",
                             "heatmap", "shape", "min", "max"}
    assert set(document["prediction"]) == set(Prediction.model_fields)
    assert set(document["run"]) == {
        "mode", "device", "positions", "batches", "batch_size", "seconds", "input_shape",
        "heatmap_shape", "flops_full", "flops_incremental", "flops_ratio",
        "theoretical_ratio", "approximation", "refined_positions", "refine_rounds"}
    assert set(document["run"]["approximation"]) == {
        "tau", "drilldown_ratio", "coarse_stride", "drilldown_tolerance"}


def test_explain_pictures_of_random_weights_carry_the_warning(retina_png: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "heat.png"
    result = runner.invoke(app, ["explain", str(retina_png), "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    for picture in (out, tmp_path / "heat.overlay.png"):
        with Image.open(picture) as png:
            assert "Warning" in png.text  # type: ignore[attr-defined]


def test_explain_without_weights_runs_the_services_built_in_model(retina_png: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "heat.json"
    result = runner.invoke(app, ["explain", str(retina_png), "-o", str(out), "--model",
                                 "resnet18", "--patch", "32", "--stride", "32"])
    assert result.exit_code == 0, result.output
    prediction = json.loads(out.read_text())["prediction"]
    built_in = default_deployment().model("resnet18")
    assert prediction["predicted_label"] in built_in.labels and len(built_in.labels) == 4


def test_explain_exact_npy_equals_naive_npy(retina_png: Path, tmp_path: Path) -> None:
    outputs = {}
    for mode in ("exact", "naive"):
        out = tmp_path / f"{mode}.npy"
        result = runner.invoke(app, ["explain", str(retina_png), "-o", str(out), *FAST,
                                     "--mode", mode])
        assert result.exit_code == 0, result.output
        outputs[mode] = np.load(out)
    np.testing.assert_allclose(outputs["exact"], outputs["naive"], atol=1e-4)


def test_explain_loads_fine_tuned_checkpoint(retina_png: Path, tmp_path: Path) -> None:
    torch.manual_seed(7)
    checkpoint = tmp_path / "finetuned.pt"
    torch.save({"state_dict": torchvision.models.resnet18(num_classes=3).state_dict(),
                "epoch": 12}, checkpoint)
    out = tmp_path / "heat.npy"
    result = runner.invoke(app, ["explain", str(retina_png), "-o", str(out), *FAST,
                                 "--weights", str(checkpoint)])
    assert result.exit_code == 0, result.output
    assert "random weights" not in result.output


def test_explain_sizes_the_head_from_the_checkpoint_labels_and_names_the_class(
        retina_png: Path, tmp_path: Path) -> None:
    torch.manual_seed(7)
    checkpoint = tmp_path / "labelled.pt"
    torch.save({"state_dict": torchvision.models.resnet18(num_classes=3).state_dict(),
                "labels": ["NORMAL", "DRUSEN", "CNV"]}, checkpoint)
    out = tmp_path / "heat.json"
    result = runner.invoke(app, ["explain", str(retina_png), "-o", str(out), "--model",
                                 "resnet18", "--patch", "32", "--stride", "32", "--weights",
                                 str(checkpoint)])  # no --num-classes: three labels
    assert result.exit_code == 0, result.output
    predicted = json.loads(out.read_text())["prediction"]["predicted_class"]
    name = ("NORMAL", "DRUSEN", "CNV")[predicted]
    assert f"class {predicted} ({name}) predicted" in result.output


def test_explain_with_mismatched_checkpoint_names_the_keys(retina_png: Path,
                                                          tmp_path: Path) -> None:
    checkpoint = tmp_path / "five_classes.pt"
    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), checkpoint)
    result = runner.invoke(app, ["explain", str(retina_png), "-o", str(tmp_path / "h.npy"),
                                 *FAST, "--weights", str(checkpoint)])
    assert result.exit_code == 2
    assert "fc.weight" in result.output


@pytest.mark.parametrize(("arguments", "message"), [
    pytest.param(["--model", "alexnet9"], "resnet18", id="unknown-model"),
    pytest.param(["--patch", "500"], "patch_size must be between 1 and", id="patch-too-large"),
    pytest.param(["--color", "purple"], "purple", id="bad-colour"),
    pytest.param(["--target", "7"], "target_class must be between 0 and 2",
                 id="target-out-of-range"),
])
def test_explain_with_bad_option_exits_2_with_a_clear_error(
    retina_png: Path, tmp_path: Path, arguments: list[str], message: str
) -> None:
    result = runner.invoke(app, ["explain", str(retina_png), "-o", str(tmp_path / "h.npy"),
                                 *FAST, *arguments])
    assert result.exit_code == 2
    assert message in result.output


def test_explain_with_unsupported_output_suffix_exits_2(retina_png: Path,
                                                       tmp_path: Path) -> None:
    result = runner.invoke(app, ["explain", str(retina_png), "-o", str(tmp_path / "h.bmp")])
    assert result.exit_code == 2
    assert ".npy" in result.output


def test_explain_with_a_file_that_is_not_an_image_exits_2(tmp_path: Path) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    result = runner.invoke(app, ["explain", str(fake), "-o", str(tmp_path / "h.npy"), *FAST])
    assert result.exit_code == 2
    assert "error:" in result.output


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, command in group.commands.items():
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths += _command_paths(command, (*prefix, name))
    return paths


@pytest.mark.parametrize("path", _command_paths(cast(click.Group, typer.main.get_command(app))),
                         ids=" ".join)
def test_every_command_prints_its_help(path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_models_lists_the_required_architectures() -> None:
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    for name in ("vgg16", "resnet18", "inception_v3"):
        assert name in result.output


@pytest.mark.parametrize("options", [
    pytest.param(["--check", "2"], id="check-without-approximate"),
    pytest.param(["--approximate", "--setting", "1/0.05/15"], id="setting-with-approximate"),
    pytest.param(["--setting", "fast"], id="malformed-setting"),
])
def test_bench_refuses_options_that_do_not_go_together(options: list[str]) -> None:
    result = runner.invoke(app, ["bench", "--models", "resnet18", *options])
    assert result.exit_code == 2
    assert "--approximate" in result.output or "TAU/R/COARSE" in result.output
