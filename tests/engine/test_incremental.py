"""Exact incremental occlusion equals naive occlusion (the core property)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from krypton.engine import (
    IncrementalOcclusion,
    ReferenceOcclusion,
    RunStopped,
    kept_engine,
    occlusion,
)
from krypton.models import build_model, get_model_spec, list_models
from tests.engine.helpers import TOLERANCE, architecture, assert_exact, calibrate


@pytest.mark.parametrize("name", list_models())
def test_exact_equals_naive_on_every_registered_architecture(name: str) -> None:
    # Small for speed, but not square, so that a rows/columns mix-up shows.
    side = max(get_model_spec(name).min_size, 64)
    image = torch.randn(3, side + 3, side)
    model = calibrate(build_model(name, num_classes=10, seed=1), image)
    assert_exact(model, image, 11, 5, patch_value=[0.3, -0.2, 0.1])


@pytest.mark.parametrize("patch", [1, 2, 5, 8, 17, 24], ids=lambda p: f"patch{p}")
def test_exact_equals_naive_for_every_patch_size(tiny_cnn: nn.Module, patch: int) -> None:
    image = torch.randn(3, 24, 29)
    assert_exact(calibrate(tiny_cnn, image), image, patch, 3)


@pytest.mark.parametrize("stride", [1, 2, 3, 7, 17], ids=lambda s: f"stride{s}")
def test_exact_equals_naive_for_every_stride(tiny_cnn: nn.Module, stride: int) -> None:
    image = torch.randn(3, 31, 23)
    assert_exact(calibrate(tiny_cnn, image), image, 6, stride)


@pytest.mark.parametrize("batch_size", [1, 5, 64, None], ids=lambda b: f"batch{b}")
def test_exact_equals_naive_for_every_batch_size(tiny_cnn: nn.Module, batch_size: int | None
                                                 ) -> None:
    image = torch.randn(3, 20, 20)
    assert_exact(calibrate(tiny_cnn, image), image, 5, 2, batch_size=batch_size)


@pytest.mark.parametrize(
    "patch_value", [0.0, -2.0, 5.0, (1.0, -1.0, 0.5)], ids=["zero", "negative", "bright", "rgb"]
)
def test_exact_equals_naive_for_every_patch_colour(tiny_cnn: nn.Module,
                                                   patch_value: object) -> None:
    image = torch.randn(3, 20, 26)
    assert_exact(calibrate(tiny_cnn, image), image, 4, 2, patch_value=patch_value)


@pytest.mark.parametrize("full_threshold", [0.0, 0.3, 1.0, float("inf")],
                         ids=["always-full", "early", "late", "never"])
def test_exact_equals_naive_wherever_it_switches_to_full_inference(
    tiny_cnn: nn.Module, full_threshold: float
) -> None:
    image = torch.randn(3, 22, 22)
    model = calibrate(tiny_cnn, image)
    naive = ReferenceOcclusion(model).attribute(image, 5, 2)
    exact = IncrementalOcclusion(model, full_threshold=full_threshold).attribute(image, 5, 2)
    np.testing.assert_allclose(exact.heatmap, naive.heatmap, rtol=0, atol=TOLERANCE)


def test_exact_equals_naive_on_a_real_retina_image() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    from skimage.transform import resize

    pixels = resize(skimage_data.retina(), (72, 72), anti_aliasing=True)
    image = torch.from_numpy(pixels.transpose(2, 0, 1)).float()
    image = (image - 0.45) / 0.25
    model = calibrate(architecture("resnet18"), image)
    assert_exact(model, image, 12, 6)


def test_exact_heatmap_differs_from_a_shifted_naive_heatmap(tiny_cnn: nn.Module) -> None:
    # Guards the comparison itself: a position mix-up must not pass as exact.
    image = torch.randn(3, 20, 20)
    naive, exact = assert_exact(calibrate(tiny_cnn, image), image, 4, 2)
    assert np.abs(np.roll(naive.heatmap, 1, axis=1) - exact.heatmap).max() > TOLERANCE


@pytest.mark.parametrize(("name", "size", "expected"), [
    pytest.param("vgg16", 224, 6.8, id="vgg16"),
    pytest.param("resnet18", 224, 2.2, id="resnet18"),
    pytest.param("inception_v3", 299, 1.8, id="inception_v3"),
])
def test_theoretical_ratio_matches_the_design_table(name: str, size: int,
                                                    expected: float) -> None:
    image = torch.randn(3, size, size)
    # One position is enough: the ratio describes a patch at the centre.
    result = occlusion(architecture(name), image, 16, size, batch_size=1)
    assert result.stats.theoretical_ratio == pytest.approx(expected, abs=0.05)


def test_result_reports_prediction_of_the_unoccluded_image(tiny_cnn: nn.Module) -> None:
    image = torch.randn(3, 16, 16)
    result = occlusion(tiny_cnn, image, 4, 4)
    with torch.no_grad():
        probabilities = torch.softmax(tiny_cnn(image[None]), 1)[0]
    assert result.predicted_class == int(probabilities.argmax())
    assert result.target == result.predicted_class
    assert result.predicted_probability == pytest.approx(float(probabilities.max()), abs=1e-6)


def test_result_heatmap_has_one_cell_per_position(tiny_cnn: nn.Module) -> None:
    result = occlusion(tiny_cnn, torch.randn(3, 21, 30), 5, 4)
    assert result.heatmap.shape == ((21 - 5) // 4 + 1, (30 - 5) // 4 + 1)
    assert result.heatmap.dtype == np.float32
    assert result.stats.positions == result.heatmap.size


def test_result_explains_the_requested_target(tiny_cnn: nn.Module) -> None:
    image = torch.randn(3, 16, 16)
    result = occlusion(tiny_cnn, image, 4, 4, target=2)
    with torch.no_grad():
        probabilities = torch.softmax(tiny_cnn(image[None]), 1)[0]
    assert result.target == 2
    assert result.target_probability == pytest.approx(float(probabilities[2]), abs=1e-6)


def test_drop_is_unoccluded_probability_minus_heatmap(tiny_cnn: nn.Module) -> None:
    result = occlusion(tiny_cnn, torch.randn(3, 16, 16), 4, 4)
    np.testing.assert_allclose(result.drop, result.target_probability - result.heatmap)


@pytest.mark.parametrize("mode", ["exact", "naive"])
def test_stats_give_the_input_and_heatmap_shapes_height_first(tiny_cnn: nn.Module,
                                                              mode: str) -> None:
    result = occlusion(tiny_cnn, torch.randn(3, 16, 24), 4, 4, mode=mode)
    assert result.stats.input_shape == (16, 24)
    assert result.stats.heatmap_shape == result.heatmap.shape == (4, 6)


def test_stats_count_fewer_incremental_flops_for_a_small_patch() -> None:
    image = torch.randn(3, 64, 64)
    result = occlusion(architecture("vgg16"), image, 4, 60)
    assert result.stats.flops_full is not None and result.stats.flops_incremental is not None
    assert result.stats.flops_incremental < result.stats.flops_full
    assert result.stats.flops_ratio is not None and result.stats.flops_ratio > 1


def test_progress_reports_every_batch_up_to_the_total(tiny_cnn: nn.Module) -> None:
    seen: list[tuple[int, int]] = []
    occlusion(tiny_cnn, torch.randn(3, 16, 16), 4, 2, batch_size=10,
              progress=lambda done, total: seen.append((done, total)))
    assert seen == [(10, 49), (20, 49), (30, 49), (40, 49), (49, 49)]


def test_engine_leaves_the_callers_model_untouched() -> None:
    model = architecture("resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    occlusion(model, torch.randn(3, 32, 32), 8, 8)
    assert model.relu.inplace is True
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).is_contiguous()


def _with_batch_norm_statistics(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters away from their initial 0 and 1, so that
    folding them into the convolutions changes every folded weight and bias."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                for tensor, low, high in ((module.running_mean, -0.5, 0.5),
                                          (module.running_var, 0.5, 2.0),
                                          (module.weight, 0.5, 1.5), (module.bias, -0.3, 0.3)):
                    tensor.uniform_(low, high, generator=generator)
    return model


def test_exact_equals_naive_with_batch_norms_folded_into_convolutions() -> None:
    torch.manual_seed(5)
    image = torch.randn(3, 64, 48)
    model = calibrate(_with_batch_norm_statistics(architecture("resnet18")), image)
    assert_exact(model, image, 8, 4)


def test_an_adopted_model_keeps_its_batch_norms_and_their_values() -> None:
    model = _with_batch_norm_statistics(architecture("resnet18"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    IncrementalOcclusion(model, copy=False).attribute(torch.randn(3, 32, 32), 8, 8)
    assert isinstance(model.bn1, nn.BatchNorm2d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_should_stop_ends_the_run_before_the_next_batch(tiny_cnn: nn.Module) -> None:
    seen: list[int] = []
    with pytest.raises(RunStopped):
        occlusion(tiny_cnn, torch.randn(3, 16, 16), 4, 2, batch_size=10,
                  progress=lambda done, total: seen.append(done),
                  should_stop=lambda: len(seen) >= 2)
    assert seen == [10, 20]


def test_model_ending_in_softmax_gives_the_same_heatmap_with_output_probabilities(
        tiny_cnn: nn.Module) -> None:
    image = torch.randn(3, 20, 20)
    model = calibrate(tiny_cnn, image)
    with_softmax = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    expected = occlusion(model, image, 4, 2).heatmap
    for mode in ("exact", "naive"):
        result = occlusion(with_softmax, image, 4, 2, mode=mode, output="probabilities")
        np.testing.assert_allclose(result.heatmap, expected, atol=TOLERANCE)


def test_occlusion_runs_every_call_for_one_model_on_one_kept_engine(
        tiny_cnn: nn.Module) -> None:
    image = torch.randn(3, 16, 16)
    occlusion(tiny_cnn, image, 4, 4)
    occlusion(tiny_cnn, image, 4, 2, mode="approximate", tau=0.5)
    engine = kept_engine(tiny_cnn)
    assert isinstance(engine, IncrementalOcclusion)
    assert engine.plan_cache.misses == 2  # both calls planned on it
    assert kept_engine(tiny_cnn, "approximate") is engine


def test_occlusion_keeps_a_new_engine_once_the_weights_are_replaced(
        tiny_cnn: nn.Module) -> None:
    before = kept_engine(tiny_cnn)
    assert kept_engine(tiny_cnn) is before
    tiny_cnn.load_state_dict({name: tensor.clone() for name, tensor
                              in tiny_cnn.state_dict().items()}, assign=True)
    assert kept_engine(tiny_cnn) is not before


def test_occlusion_sees_weights_changed_in_place_since_the_last_call(
        tiny_cnn: nn.Module) -> None:
    image = torch.randn(3, 16, 16)
    model = calibrate(tiny_cnn, image)
    before = occlusion(model, image, 4, 2).heatmap
    with torch.no_grad():
        model.head.weight.mul_(-1.0)
    after = occlusion(model, image, 4, 2).heatmap
    expected = ReferenceOcclusion(model).attribute(image, 4, 2).heatmap
    assert np.abs(after - before).max() > TOLERANCE
    np.testing.assert_allclose(after, expected, atol=TOLERANCE)


def test_engine_is_reusable_across_images_of_different_sizes(tiny_cnn: nn.Module) -> None:
    engine = IncrementalOcclusion(tiny_cnn)
    for size in [(16, 16), (20, 25), (16, 16)]:
        image = torch.randn(3, *size)
        expected = ReferenceOcclusion(tiny_cnn).attribute(image, 4, 3).heatmap
        np.testing.assert_allclose(engine.attribute(image, 4, 3).heatmap, expected, atol=TOLERANCE)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["vgg16", "resnet18", "inception_v3"])
def test_exact_on_cuda_equals_naive_on_cpu(name: str) -> None:
    image = torch.randn(3, 80, 80)
    model = calibrate(architecture(name), image)
    naive = occlusion(model, image, 10, 5, mode="naive", device="cpu")
    exact = occlusion(model, image, 10, 5, mode="exact", device="cuda")
    assert exact.stats.device.startswith("cuda")
    np.testing.assert_allclose(exact.heatmap, naive.heatmap, rtol=0, atol=TOLERANCE)


def test_partial_maps_fill_row_by_row_and_end_as_the_heatmap(tiny_cnn: nn.Module) -> None:
    seen: list[np.ndarray] = []
    result = occlusion(tiny_cnn, torch.randn(3, 16, 16), 4, 2, batch_size=10,
                       partial=lambda heatmap: seen.append(heatmap.copy()))
    unknown = [int(np.isnan(heatmap).sum()) for heatmap in seen]
    assert unknown == [39, 29, 19, 9, 0]
    np.testing.assert_array_equal(seen[-1], result.heatmap)
