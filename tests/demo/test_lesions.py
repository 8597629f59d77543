"""The demo's synthetic lesions: seeded, drawn where their box says, on real fundus views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from krypton.demo import LABELS, FundusLesions, lesion_samples

SIZE = 96


def _pair(first: int, second: int, **options: float) -> tuple[torch.Tensor, ...]:
    """The same view (same seed) drawn with two different labels."""
    a = FundusLesions(SIZE, seed=3, **options).batch(1, [first])
    b = FundusLesions(SIZE, seed=3, **options).batch(1, [second])
    return a.images[0], b.images[0], b.boxes[0]


def test_the_same_seed_gives_the_same_images() -> None:
    a = FundusLesions(SIZE, seed=5, occluders=0.5).batch(6)
    b = FundusLesions(SIZE, seed=5, occluders=0.5).batch(6)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_another_seed_gives_other_images() -> None:
    a = FundusLesions(SIZE, seed=5).batch(2, [0, 0])
    b = FundusLesions(SIZE, seed=6).batch(2, [0, 0])
    assert not torch.allclose(a.images, b.images)


def test_images_are_rgb_in_the_unit_interval_with_the_requested_labels() -> None:
    batch = FundusLesions(SIZE, seed=1).batch(4, [0, 1, 2, 3])
    assert batch.images.shape == (4, 3, SIZE, SIZE)
    assert batch.images.min() >= 0.0 and batch.images.max() <= 1.0
    assert batch.labels.tolist() == [0, 1, 2, 3]


def test_normal_images_have_no_lesion_box() -> None:
    batch = FundusLesions(SIZE, seed=1).batch(2, [0, 0])
    assert (batch.boxes == -1).all()


@pytest.mark.parametrize("label", [1, 2, 3], ids=LABELS[1:])
def test_a_lesion_changes_pixels_inside_its_box_only(label: int) -> None:
    normal, lesion, box = _pair(0, label)
    top, left, bottom, right = box.tolist()
    assert 0 <= top < bottom <= SIZE and 0 <= left < right <= SIZE
    changed = (normal - lesion).abs().amax(dim=0) > 1e-6
    inside = torch.zeros_like(changed)
    inside[top:bottom, left:right] = True
    assert changed[inside].any()
    assert not changed[~inside].any()


@pytest.mark.parametrize("label", [1, 2, 3], ids=LABELS[1:])
def test_lesions_lie_on_the_fundus_not_the_black_surround(label: int) -> None:
    for seed in range(6):
        normal = FundusLesions(SIZE, seed=seed).batch(1, [0]).images[0]
        lesion = FundusLesions(SIZE, seed=seed).batch(1, [label])
        top, left, bottom, right = lesion.boxes[0].tolist()
        # The same view without the lesion is fundus, not black, under its centre.
        assert normal[:, (top + bottom) // 2, (left + right) // 2].mean() > 0.08


def test_occluder_squares_stay_off_the_lesion() -> None:
    plain = FundusLesions(SIZE, seed=4, occluders=0.0).batch(1, [1])
    squares = FundusLesions(SIZE, seed=4, occluders=1.0).batch(1, [1])
    top, left, bottom, right = squares.boxes[0].tolist()
    changed = (plain.images[0] - squares.images[0]).abs().amax(dim=0) > 1e-6
    assert changed.any()
    assert not changed[top:bottom, left:right].any()


def test_lesion_samples_all_have_a_finding() -> None:
    samples = lesion_samples(SIZE, 4)
    assert len(samples) == 4
    for pixels in samples:
        assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.float32


def test_lesion_samples_come_from_a_seed_training_never_uses() -> None:
    from krypton.demo import SAMPLE_SEED, VALIDATION_SEED

    assert SAMPLE_SEED > VALIDATION_SEED  # training seeds are below VALIDATION_SEED
    a, b = lesion_samples(SIZE, 1), lesion_samples(SIZE, 1, seed=0)
    assert not np.allclose(a[0], b[0])


@pytest.mark.parametrize("options", [{"occluders": 1.5}, {"lesion_scale": 0.0},
                                     {"lesion_scale": 4.0}])
def test_invalid_generator_options_raise(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FundusLesions(SIZE, **options)


def test_labels_outside_the_classes_raise() -> None:
    with pytest.raises(ValueError, match="labels"):
        FundusLesions(SIZE).batch(1, [len(LABELS)])
