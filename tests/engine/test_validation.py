"""Bad arguments raise InvalidParamsError naming the bad value."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from krypton.engine import EngineError, InvalidParamsError, UnsupportedModelError, occlusion

IMAGE = (3, 16, 16)


@pytest.mark.parametrize(("options", "message"), [
    pytest.param({"patch_size": 0}, "patch_size", id="patch-zero"),
    pytest.param({"patch_size": 17}, "larger than", id="patch-too-large"),
    pytest.param({"patch_size": 2.5}, "patch_size", id="patch-float"),
    pytest.param({"stride": 0}, "stride", id="stride-zero"),
    pytest.param({"stride": -3}, "stride", id="stride-negative"),
    pytest.param({"target": 4}, "target 4", id="target-out-of-range"),
    pytest.param({"target": -1}, "target -1", id="target-negative"),
    pytest.param({"patch_value": (0.1, 0.2)}, "patch_value", id="patch-value-two-channels"),
    pytest.param({"patch_value": float("nan")}, "finite", id="patch-value-nan"),
    pytest.param({"batch_size": 0}, "batch_size", id="batch-zero"),
    pytest.param({"mode": "fast"}, "mode", id="unknown-mode"),
])
def test_occlusion_with_bad_argument_raises_invalid_params(
    tiny_cnn: nn.Module, options: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"patch_size": 4, "stride": 2, **options}
    with pytest.raises(InvalidParamsError, match=message):
        occlusion(tiny_cnn, torch.randn(*IMAGE), **arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize("image", [
    pytest.param(torch.randn(16, 16), id="two-dimensional"),
    pytest.param(torch.randn(2, 3, 16, 16), id="batch-of-two"),
    pytest.param(torch.zeros(3, 16, 16, dtype=torch.uint8), id="integer"),
    pytest.param(torch.full((3, 16, 16), float("nan")), id="nan"),
])
def test_occlusion_with_bad_image_raises_invalid_params(tiny_cnn: nn.Module,
                                                        image: torch.Tensor) -> None:
    with pytest.raises(InvalidParamsError, match="image"):
        occlusion(tiny_cnn, image, 4, 2)


def test_occlusion_with_model_in_training_mode_raises_invalid_params(
    tiny_cnn: nn.Module,
) -> None:
    with pytest.raises(InvalidParamsError, match="eval"):
        occlusion(tiny_cnn.train(), torch.randn(*IMAGE), 4, 2)


def test_occlusion_with_untraceable_model_raises_unsupported_model() -> None:
    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1) if x.sum() > 0 else -x.flatten(1)

    with pytest.raises(UnsupportedModelError, match="torch.fx"):
        occlusion(DataDependent().eval(), torch.randn(*IMAGE), 4, 2)


def test_invalid_params_error_is_an_engine_error_and_a_value_error() -> None:
    assert issubclass(InvalidParamsError, EngineError)
    assert issubclass(InvalidParamsError, ValueError)
