"""Per-dataset tuning meets its SSIM target on held-out images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data
from skimage.transform import resize

from krypton.engine import Approximation, IncrementalOcclusion, InvalidParamsError, tune
from krypton.engine.quality import heatmap_ssim
from tests.engine.helpers import architecture, calibrate

SIZE, PATCH, STRIDE = 64, 8, 4


def _retina_samples(count: int) -> list[torch.Tensor]:
    """Crops and flips of the fundus photograph: images of one use case."""
    retina = data.retina().astype(np.float32) / 255.0
    samples = []
    for k in range(count):
        top, left = 200 + 90 * (k % 3), 250 + 110 * (k // 3)
        crop = resize(retina[top : top + 700, left : left + 700], (SIZE, SIZE),
                      anti_aliasing=True)
        if k % 2:
            crop = crop[:, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float()
        samples.append((tensor - 0.45) / 0.25)
    return samples


@pytest.fixture(scope="module")
def tuned() -> tuple[IncrementalOcclusion, list[torch.Tensor], object]:
    torch.manual_seed(11)
    samples = _retina_samples(4)
    engine = IncrementalOcclusion(calibrate(architecture("resnet18"), samples[0]))
    result = tune(engine, samples, PATCH, STRIDE, target_ssim=0.9)
    return engine, samples, result


def test_tuning_meets_the_target_on_held_out_images(tuned: tuple) -> None:  # type: ignore[type-arg]
    engine, samples, result = tuned
    assert result.holdout_ssim >= 0.9
    # Check independently: run the chosen setting on the held-out images.
    for image in samples[result.tuning_images :]:
        exact = engine.attribute(image, PATCH, STRIDE)
        approximate = engine.attribute(image, PATCH, STRIDE, target=exact.target,
                                       approximation=result.approximation)
        assert heatmap_ssim(approximate.heatmap, exact.heatmap) >= 0.9


def test_tuning_reports_the_frontier_it_explored(tuned: tuple) -> None:  # type: ignore[type-arg]
    _, _, result = tuned
    taus = {point.approximation.tau for point in result.frontier}
    assert 0.9 in taus
    assert any(point.approximation.drills_down for point in result.frontier)
    assert all(point.seconds > 0.0 and -1.0 <= point.ssim <= 1.0 for point in result.frontier)


def test_tuning_chooses_the_fastest_setting_that_passes(tuned: tuple) -> None:  # type: ignore[type-arg]
    _, _, result = tuned
    passing = [p for p in result.frontier if p.ssim >= result.target_ssim]
    if result.approximation != Approximation():
        fastest = min(p.seconds for p in passing)
        chosen = next(p for p in passing if p.approximation == result.approximation)
        # Held-out checks may reject faster settings, never pick a slower one first.
        assert all(p.seconds >= fastest for p in passing)
        assert chosen.ssim >= result.target_ssim


def test_tuning_with_one_image_raises_invalid_params() -> None:
    engine = IncrementalOcclusion(architecture("resnet18"))
    with pytest.raises(InvalidParamsError, match="two"):
        tune(engine, _retina_samples(1), PATCH, STRIDE)


@pytest.mark.parametrize("target", [0.0, 1.5])
def test_tuning_with_target_outside_unit_interval_raises(target: float) -> None:
    engine = IncrementalOcclusion(architecture("resnet18"))
    with pytest.raises(InvalidParamsError, match="target_ssim"):
        tune(engine, _retina_samples(2), PATCH, STRIDE, target_ssim=target)
