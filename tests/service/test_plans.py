"""Resolving a heatmap request into a plan: defaults, datasets, knobs and refusals."""

from __future__ import annotations

import pytest

from krypton.core.plans import DEFAULT_PATCH_SIZE, DEFAULT_STRIDE, resolve_heatmap
from krypton.models import DatasetConfig, DatasetConfigError, InvalidArgumentError
from krypton.models.deployment import DeployedDataset, DeployedModel, Deployment

MODEL, OTHER, DATASET = "fundus", "chest", "retina"


@pytest.fixture
def deployment() -> Deployment:
    return Deployment(
        models={MODEL: DeployedModel(name=MODEL, architecture="resnet18", labels=("a", "b"),
                                     input_size=64, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2)),
                OTHER: DeployedModel(name=OTHER, architecture="vgg16", labels=("c", "d"))},
        datasets={DATASET: DeployedDataset(name=DATASET, model=MODEL)})


def _config(**changes: object) -> DatasetConfig:
    fields: dict[str, object] = {
        "dataset": DATASET, "model": "resnet18", "checkpoint": "ab" * 32, "patch_size": 12,
        "stride": 6, "tau": 0.7, "drilldown_ratio": 0.1, "coarse_stride": 18,
        "target_ssim": 0.9, "achieved_ssim": 0.93}
    return DatasetConfig(**(fields | changes))  # type: ignore[arg-type]


def test_plan_defaults_to_the_first_model_and_the_default_geometry(
        deployment: Deployment) -> None:
    plan = resolve_heatmap(deployment)
    assert (plan.model, plan.patch_size, plan.stride) == (MODEL, DEFAULT_PATCH_SIZE,
                                                         DEFAULT_STRIDE)
    assert (plan.mode, plan.tau, plan.drilldown_ratio, plan.tuned_for) == (
        "exact", 1.0, None, None)


def test_plan_of_a_dataset_runs_its_model_with_its_tuned_geometry(
        deployment: Deployment) -> None:
    plan = resolve_heatmap(deployment, dataset=DATASET, config=_config())
    assert (plan.model, plan.patch_size, plan.stride, plan.mode) == (MODEL, 12, 6, "exact")


def test_approximate_plan_takes_the_dataset_knobs_and_their_checkpoint(
        deployment: Deployment) -> None:
    plan = resolve_heatmap(deployment, dataset=DATASET, config=_config(), mode="approximate")
    assert (plan.tau, plan.drilldown_ratio, plan.coarse_stride) == (0.7, 0.1, 18)
    assert plan.tuned_for == "ab" * 32


def test_approximate_plan_takes_a_tuned_bisection_tolerance(deployment: Deployment) -> None:
    config = _config(drilldown_ratio=0.5, coarse_stride=24, drilldown_tolerance=0.1)
    plan = resolve_heatmap(deployment, dataset=DATASET, config=config, mode="approximate")
    assert (plan.drilldown_ratio, plan.coarse_stride, plan.drilldown_tolerance) == (0.5, 24, 0.1)


def test_approximate_plan_takes_hand_set_knobs_without_a_dataset(
        deployment: Deployment) -> None:
    plan = resolve_heatmap(deployment, mode="approximate", drilldown_ratio=0.2,
                           coarse_stride=16)
    assert (plan.tau, plan.drilldown_ratio, plan.coarse_stride) == (1.0, 0.2, 16)


def test_plan_is_immutable(deployment: Deployment) -> None:
    plan = resolve_heatmap(deployment)
    with pytest.raises(ValueError, match="frozen"):
        plan.stride = 2  # type: ignore[misc]


@pytest.mark.parametrize(("options", "error", "message"), [
    pytest.param({"model": "nope"}, ValueError, "nope", id="unknown-model"),
    pytest.param({"dataset": "nope"}, DatasetConfigError, "nope", id="unknown-dataset"),
    pytest.param({"dataset": DATASET, "model": OTHER}, InvalidArgumentError, "served by",
                 id="dataset-of-another-model"),
    pytest.param({"patch_size": 65}, InvalidArgumentError, "input size 64",
                 id="patch-larger-than-input"),
    pytest.param({"stride": 0}, InvalidArgumentError, "stride", id="stride-zero"),
    pytest.param({"patch_color": ""}, InvalidArgumentError, "colour", id="empty-colour"),
    pytest.param({"target_class": 2}, InvalidArgumentError, "between 0 and 1",
                 id="target-out-of-range"),
    pytest.param({"mode": "approximate"}, DatasetConfigError, "needs a dataset",
                 id="approximate-without-dataset"),
    pytest.param({"mode": "approximate", "dataset": DATASET}, DatasetConfigError,
                 "not tuned", id="approximate-untuned"),
    pytest.param({"mode": "approximate", "dataset": DATASET, "config": _config(stride=4),
                  "stride": 6}, DatasetConfigError, "stride 4", id="approximate-other-stride"),
    pytest.param({"mode": "approximate", "dataset": DATASET,
                  "config": _config(model="vgg16")}, DatasetConfigError, "vgg16",
                 id="approximate-other-architecture"),
    pytest.param({"tau": 0.5}, InvalidArgumentError, "mode approximate",
                 id="knobs-without-approximate"),
    pytest.param({"drilldown_tolerance": 0.1}, InvalidArgumentError, "mode approximate",
                 id="tolerance-without-approximate"),
    pytest.param({"mode": "approximate", "stride": 4, "drilldown_ratio": 0.5,
                  "coarse_stride": 18, "drilldown_tolerance": 0.1}, InvalidArgumentError,
                 "multiple of the stride 4", id="bisection-off-the-fine-grid"),
    pytest.param({"mode": "approximate", "drilldown_tolerance": 0.1}, InvalidArgumentError,
                 "needs drilldown_ratio", id="tolerance-without-cap"),
    pytest.param({"mode": "approximate", "stride": 4, "drilldown_ratio": 0.5,
                  "coarse_stride": 16, "drilldown_tolerance": 1.5}, InvalidArgumentError,
                 r"\[0, 1\]", id="tolerance-above-one"),
    pytest.param({"mode": "approximate", "dataset": DATASET, "config": _config(),
                  "tau": 0.5}, InvalidArgumentError, "not both", id="knobs-and-dataset"),
])
def test_bad_request_is_refused_naming_what_to_change(
        deployment: Deployment, options: dict[str, object], error: type[Exception],
        message: str) -> None:
    with pytest.raises(error, match=message):
        resolve_heatmap(deployment, **options)  # type: ignore[arg-type]


def test_plan_refuses_weights_other_than_those_tuned_on(deployment: Deployment) -> None:
    plan = resolve_heatmap(deployment, dataset=DATASET, config=_config(), mode="approximate")
    plan.check_weights("ab" * 32)
    with pytest.raises(DatasetConfigError, match="tune it again"):
        plan.check_weights("cd" * 32)
