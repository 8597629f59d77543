"""Per-dataset tuning meets its SSIM target on held-out images."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from skimage import data
from skimage.transform import resize

from krypton.engine import (
    Approximation,
    IncrementalOcclusion,
    InvalidParamsError,
    approximate,
    tune,
)
from krypton.engine.quality import heatmap_ssim
from krypton.engine.tuning import FrontierPoint, _timed_side_by_side
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


def test_tuning_held_out_ssim_is_what_the_chosen_setting_scores_there(
        tuned: tuple) -> None:  # type: ignore[type-arg]
    engine, samples, result = tuned
    scores = []
    for image in samples[result.tuning_images :]:
        exact = engine.attribute(image, PATCH, STRIDE)
        approximated = approximate(result.approximation, engine, image, PATCH, STRIDE,
                                   target=exact.target)
        scores.append(heatmap_ssim(approximated.heatmap, exact.heatmap))
    assert result.holdout_ssim == pytest.approx(float(np.mean(scores)), abs=1e-6)
    assert result.holdout_ssim >= result.target_ssim


def test_tuning_chooses_an_approximation_when_one_meets_the_target(
        tuned: tuple) -> None:  # type: ignore[type-arg]
    _, _, result = tuned
    assert result.approximation != Approximation()


def test_tuning_checks_passing_settings_on_held_out_images_fastest_first(
        tuned: tuple) -> None:  # type: ignore[type-arg]
    _, _, result = tuned
    passing = sorted((p for p in result.frontier if p.ssim >= result.target_ssim),
                     key=lambda p: (not p.side_by_side, p.seconds))
    checked = [check.approximation for check in result.holdout_checks]
    assert checked == [p.approximation for p in passing[: len(checked)]]


def test_tuning_chooses_the_first_setting_that_passed_held_out(tuned: tuple) -> None:  # type: ignore[type-arg]
    _, _, result = tuned
    *rejected, chosen = result.holdout_checks
    assert chosen.approximation == result.approximation
    assert chosen.ssim >= result.target_ssim
    assert all(check.ssim < result.target_ssim for check in rejected)


def test_tuning_reports_the_frontier_it_explored(tuned: tuple) -> None:  # type: ignore[type-arg]
    _, _, result = tuned
    assert any(point.approximation.tau < 1.0 for point in result.frontier)
    assert any(point.approximation.drills_down for point in result.frontier)
    assert all(point.seconds > 0.0 and -1.0 <= point.ssim <= 1.0 for point in result.frontier)


def test_tuning_by_the_worst_image_holds_every_held_out_image_to_the_target(
        tuned: tuple) -> None:  # type: ignore[type-arg]
    engine, samples, _ = tuned
    result = tune(engine, samples, PATCH, STRIDE, target_ssim=0.9, score="min")
    scores = []
    for image in samples[result.tuning_images :]:
        exact = engine.attribute(image, PATCH, STRIDE)
        approximated = approximate(result.approximation, engine, image, PATCH, STRIDE,
                                   target=exact.target)
        scores.append(heatmap_ssim(approximated.heatmap, exact.heatmap))
    assert result.holdout_ssim == pytest.approx(min(scores), abs=1e-6)
    assert min(scores) >= 0.9


def test_tuning_with_an_unknown_score_raises() -> None:
    engine = IncrementalOcclusion(architecture("resnet18"))
    with pytest.raises(InvalidParamsError, match="score"):
        tune(engine, _retina_samples(2), PATCH, STRIDE, score="median")  # type: ignore[arg-type]


def test_tuning_with_one_image_raises_invalid_params() -> None:
    engine = IncrementalOcclusion(architecture("resnet18"))
    with pytest.raises(InvalidParamsError, match="two"):
        tune(engine, _retina_samples(1), PATCH, STRIDE)


@pytest.mark.parametrize("target", [0.0, 1.5])
def test_tuning_with_target_outside_unit_interval_raises(target: float) -> None:
    engine = IncrementalOcclusion(architecture("resnet18"))
    with pytest.raises(InvalidParamsError, match="target_ssim"):
        tune(engine, _retina_samples(2), PATCH, STRIDE, target_ssim=target)


def test_tuning_a_heatmap_smaller_than_3x3_raises_before_running_anything() -> None:
    engine = IncrementalOcclusion(architecture("resnet18"))
    calls = []
    with pytest.raises(InvalidParamsError, match="3x3"):
        tune(engine, _retina_samples(2), 60, 8, should_stop=lambda: calls.append(1) or False)
    assert calls == []


def test_tuning_never_tries_a_coarse_lattice_wider_than_the_patch(tuned: tuple) -> None:  # type: ignore[type-arg]
    # Wider, a patch-sized feature can fall between coarse patches and go unrefined.
    _, _, result = tuned
    strides = {p.approximation.coarse_stride for p in result.frontier
               if p.approximation.drills_down}
    assert strides and max(strides) <= PATCH


class _Stopwatch:
    """Side-by-side times fixed in advance, and the settings it was asked to time."""

    def __init__(self, seconds: list[float]) -> None:
        self.seconds, self.asked = seconds, []

    def side_by_side(self, approximations, indices):  # type: ignore[no-untyped-def]
        self.asked.append(list(approximations))
        return self.seconds


def _point(tau: float, seconds: float, ssim: float) -> FrontierPoint:
    return FrontierPoint(Approximation(tau, 0.5, 16, 0.3), seconds, 10.0 / seconds, ssim)


def test_every_passing_setting_is_timed_again_beside_exact_however_slow_its_first_run() -> None:
    quick, slowed = _point(0.5, 1.0, 0.95), _point(0.4, 6.0, 0.93)
    failing = _point(0.3, 0.5, 0.80)
    stopwatch = _Stopwatch([8.0, 1.3, 1.0])
    frontier, exact = _timed_side_by_side(stopwatch, [quick, slowed, failing], 0.9, 10.0,
                                          [0, 1], lambda line: None)
    assert stopwatch.asked == [[Approximation(), quick.approximation, slowed.approximation]]
    assert exact == 8.0
    assert [(p.seconds, p.speedup, p.side_by_side) for p in frontier] == [
        (1.3, 8.0 / 1.3, True), (1.0, 8.0, True), (0.5, 16.0, False)]


def test_without_a_passing_setting_nothing_is_timed_again() -> None:
    stopwatch = _Stopwatch([])
    frontier = [_point(0.3, 0.5, 0.80)]
    assert _timed_side_by_side(stopwatch, frontier, 0.9, 10.0, [0], lambda line: None) == (
        frontier, 10.0)
    assert stopwatch.asked == []


class _BusyMachine:
    """A clock that runs six times slow while a setting of the search runs after every other
    report line, as a machine with other work on it does, and at its real pace elsewhere."""

    def __init__(self) -> None:
        self.busy, self.searching = False, False
        self._last = time.perf_counter()
        self._now = 0.0

    def __call__(self) -> float:
        real = time.perf_counter()
        self._now += (real - self._last) * (6.0 if self.busy else 1.0)
        self._last = real
        return self._now

    def report(self, line: str) -> None:
        if line.startswith("exact:"):
            self.searching = True
        elif line.startswith("timing exact"):
            self.searching = False
        self.busy = self.searching and not self.busy


def test_a_machine_busy_during_the_search_leaves_the_ranking_to_side_by_side_times() -> None:
    torch.manual_seed(11)
    samples = _retina_samples(4)
    engine = IncrementalOcclusion(calibrate(architecture("resnet18"), samples[0]))
    machine = _BusyMachine()
    result = tune(engine, samples, PATCH, STRIDE, target_ssim=0.9, clock=machine,
                  report=machine.report)
    passing = [p for p in result.frontier if p.ssim >= result.target_ssim]
    assert len(passing) >= 2 and all(p.side_by_side for p in passing)
    quickest = min(passing, key=lambda p: p.seconds)
    assert result.holdout_checks[0].approximation == quickest.approximation


def test_tuning_checks_settings_timed_side_by_side_before_slower_first_times(
        tuned: tuple) -> None:  # type: ignore[type-arg]
    _, _, result = tuned
    passing = [p for p in result.frontier if p.ssim >= result.target_ssim]
    retimed = [p for p in passing if p.side_by_side]
    checked = [check.approximation for check in result.holdout_checks]
    assert checked == [p.approximation for p in
                       (retimed + [p for p in passing if not p.side_by_side])[: len(checked)]]
