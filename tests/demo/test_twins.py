"""VGG trains as a twin (batch norm, pooled head), is deployed plain, and keeps its outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from krypton.demo.twins import fold_twin, lesion_map_layer, training_twin
from krypton.models import build_model


def _twin_with_running_statistics(name: str) -> nn.Module:
    """A twin whose norms hold non-trivial statistics and affine parameters."""
    twin = training_twin(name, num_classes=4, seed=1).train()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in twin.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
        twin(3.0 * torch.rand(4, 3, 64, 64, generator=generator) + 1.0)
    return twin.eval()


@pytest.mark.parametrize("name", ["vgg11", "vgg16"])
def test_the_folded_plain_network_computes_what_the_eval_mode_twin_does(name: str) -> None:
    twin = _twin_with_running_statistics(name)
    plain = fold_twin(twin, build_model(name, num_classes=4))
    image = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        expected, folded = twin(image), plain(image)
    assert expected.abs().max() > 1e-3  # the comparison is not between two zeros
    torch.testing.assert_close(folded, expected, rtol=1e-4, atol=1e-5)


def test_the_folded_network_has_no_batch_norm_and_is_in_eval_mode() -> None:
    plain = fold_twin(_twin_with_running_statistics("vgg11"),
                      build_model("vgg11", num_classes=4))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert not plain.training


def test_the_twin_is_seeded_and_leaves_the_global_generator_alone() -> None:
    state = torch.random.get_rng_state()
    first, second = training_twin("vgg11", 4, seed=3), training_twin("vgg11", 4, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first.features[0].weight, second.features[0].weight)


def test_folding_into_another_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="do not match"):
        fold_twin(training_twin("vgg11", 4, seed=0), build_model("vgg16", num_classes=4))


def test_a_twin_whose_head_does_not_fold_is_refused() -> None:
    twin = training_twin("vgg11", 4, seed=0)
    twin.classifier[0] = nn.Linear(500, 4096)
    with pytest.raises(ValueError, match="does not fold"):
        fold_twin(twin, build_model("vgg11", num_classes=4))


@pytest.mark.parametrize("name", ["vgg11", "vgg16"])
def test_the_lesion_map_reads_a_stride_8_grid_with_the_channels_it_names(name: str) -> None:
    twin = training_twin(name, num_classes=4, seed=0).eval()
    layer, channels = lesion_map_layer(twin)
    seen: list[torch.Size] = []
    twin.get_submodule(layer).register_forward_hook(lambda m, i, out: seen.append(out.shape))
    with torch.inference_mode():
        twin(torch.zeros(1, 3, 112, 112))
    assert seen == [torch.Size([1, channels, 14, 14])]
