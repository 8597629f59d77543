"""One approximation value: every part of Krypton refuses bad knobs with its one message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from krypton.approximation import Approximation, ApproximationError, quality_target
from krypton.cli import app
from krypton.core.plans import resolve_heatmap, resolve_tuning
from krypton.engine import InvalidParamsError, occlusion, tune
from krypton.models import DatasetConfig, DatasetConfigError, InvalidArgumentError
from krypton.models.deployment import default_deployment

BAD_KNOBS = [
    pytest.param({"tau": 1.5}, "tau must be in (0, 1], got 1.5", id="tau-above-one"),
    pytest.param({"drilldown_ratio": 0.5, "coarse_stride": 20, "drilldown_tolerance": 0.1},
                 "drilldown_tolerance needs a coarse_stride that is a multiple of the stride 8, "
                 "got 20", id="bisection-off-the-fine-grid"),
    pytest.param({"drilldown_ratio": 0.5}, "drill-down needs both drilldown_ratio and "
                 "coarse_stride, or neither", id="ratio-without-coarse-stride"),
    pytest.param({"drilldown_ratio": 0.5, "coarse_stride": 16, "drilldown_tolerance": 2.0},
                 "drilldown_tolerance must be in [0, 1], got 2.0", id="tolerance-above-one"),
]
STRIDE = 8


def _value(knobs: dict[str, float]) -> Approximation:
    return Approximation.of(**knobs).for_stride(STRIDE)  # type: ignore[arg-type]


@pytest.mark.parametrize(("knobs", "message"), BAD_KNOBS)
def test_the_value_refuses_bad_knobs_with_its_message(knobs: dict[str, float],
                                                      message: str) -> None:
    with pytest.raises(ApproximationError) as refused:
        _value(knobs)
    assert str(refused.value) == message


@pytest.mark.parametrize(("knobs", "message"), BAD_KNOBS)
def test_the_services_plan_refuses_them_with_the_same_message(knobs: dict[str, float],
                                                              message: str) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        resolve_heatmap(default_deployment(), patch_size=16, stride=STRIDE, mode="approximate",
                        **knobs)  # type: ignore[arg-type]
    assert str(refused.value) == message


@pytest.mark.parametrize(("knobs", "message"), BAD_KNOBS)
def test_a_dataset_config_refuses_them_with_the_same_message(knobs: dict[str, float],
                                                             message: str) -> None:
    fields = {"dataset": "retina", "model": "resnet18", "checkpoint": "ab" * 32,
              "patch_size": 16, "stride": STRIDE, "target_ssim": 0.9, "achieved_ssim": 0.95,
              "drilldown_ratio": None, "coarse_stride": None, **knobs}
    with pytest.raises(DatasetConfigError) as refused:
        DatasetConfig(**{"tau": 1.0, **fields})  # type: ignore[arg-type]
    assert str(refused.value) == f"dataset 'retina': {message}"


@pytest.mark.parametrize(("knobs", "message"), BAD_KNOBS)
def test_the_engine_refuses_them_with_the_same_message(knobs: dict[str, float],
                                                       message: str) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten()).eval()
    with pytest.raises(ApproximationError) as refused:
        occlusion(model, torch.zeros(3, 48, 48), 16, STRIDE, mode="approximate",
                  **knobs)  # type: ignore[arg-type]
    assert str(refused.value) == message


@pytest.mark.parametrize(("knobs", "message"), BAD_KNOBS)
def test_the_command_line_refuses_them_with_the_same_message(
        knobs: dict[str, float], message: str, tmp_path: Path) -> None:
    image = tmp_path / "retina.png"
    Image.fromarray(data.retina()).resize((120, 100)).save(image)
    options = [part for name, value in knobs.items()
               for part in (f"--{name.replace('_', '-')}", str(value))]
    result = CliRunner().invoke(app, ["explain", str(image), "-o", str(tmp_path / "out.png"),
                                      "--mode", "approximate",
                                      "--patch", "16", "--stride", str(STRIDE), *options])
    assert result.exit_code != 0
    assert message in " ".join(result.output.split())


@pytest.mark.parametrize("target", [0.0, 1.5, float("nan")])
def test_the_tuner_and_a_tuning_request_refuse_a_quality_target_with_the_same_message(
        target: float) -> None:
    with pytest.raises(ApproximationError) as expected:
        quality_target(target)
    with pytest.raises(InvalidParamsError) as tuner:
        tune(None, [torch.zeros(3, 8, 8)] * 2, 4, 4,  # type: ignore[arg-type]
             target_ssim=target)
    with pytest.raises(InvalidArgumentError) as request:
        resolve_tuning(default_deployment(), "retina", images=2, patch_size=16, stride=8,
                       target_ssim=target)
    assert str(tuner.value) == str(request.value) == str(expected.value)
