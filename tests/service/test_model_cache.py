"""The worker's model cache: deployed models built once, one device copy shared by engines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from krypton.core.model_cache import ModelCache
from krypton.models import CheckpointError
from krypton.models.deployment import DeployedModel, Deployment, load_deployment
from tests.service import helpers


def _cache(*models: DeployedModel) -> ModelCache:
    return ModelCache(Deployment(models={m.name: m for m in models}), "cpu")


def test_cache_builds_the_model_with_the_checkpoint_weights(checkpoint: Path) -> None:
    model = DeployedModel(name="m", architecture="resnet18", labels=("a", "b", "c"),
                          checkpoint=checkpoint)
    built = _cache(model).get("m").network.state_dict()
    saved = torch.load(checkpoint, weights_only=True)
    assert built.keys() == saved.keys()
    assert all(torch.equal(built[key], saved[key]) for key in saved)


def test_cache_loads_a_registry_checkpoint_given_relative_to_the_registry(
        tmp_path: Path, checkpoint: Path) -> None:
    registry = tmp_path / "registry.toml"
    registry.write_text('[[models]]\nname = "m"\narchitecture = "resnet18"\n'
                        'labels = ["a", "b", "c"]\ncheckpoint = "weights/finetuned.pt"\n')
    network = ModelCache(load_deployment(registry), "cpu").get("m").network
    assert torch.equal(network.state_dict()["fc.weight"],
                       torch.load(checkpoint, weights_only=True)["fc.weight"])


def test_cache_builds_models_in_eval_mode(checkpoint: Path) -> None:
    model = DeployedModel(name="m", architecture="resnet18", labels=("a", "b", "c"),
                          checkpoint=checkpoint)
    assert not _cache(model).get("m").network.training


def test_cache_refuses_a_checkpoint_of_another_head_size(checkpoint: Path) -> None:
    model = DeployedModel(name="m", architecture="resnet18", labels=("a", "b"),
                          checkpoint=checkpoint)
    with pytest.raises(CheckpointError, match="fc"):
        _cache(model).get("m")


def test_random_weights_are_the_same_in_every_cache() -> None:
    model = DeployedModel(name="m", architecture="resnet18", labels=("a", "b"), seed=4)
    first, second = (_cache(model).get("m").network.state_dict() for _ in range(2))
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_cache_builds_each_model_once(deployment: Deployment) -> None:
    cache = ModelCache(deployment, "cpu")
    assert cache.get(helpers.MODEL) is cache.get(helpers.MODEL)


def test_engines_of_a_model_share_its_one_device_copy(deployment: Deployment) -> None:
    cache = ModelCache(deployment, "cpu")
    network = cache.get(helpers.MODEL).network
    assert cache.engine(helpers.MODEL, "exact").model is network
    assert cache.engine(helpers.MODEL, "naive").model is network
    assert cache.engine(helpers.MODEL, "approximate") is cache.engine(helpers.MODEL, "exact")


def test_preload_names_the_models_that_cannot_be_loaded(tmp_path: Path, registry: Path) -> None:
    broken = load_deployment(helpers.write_broken_registry(tmp_path, registry))
    assert ModelCache(broken, "cpu").preload() == [helpers.MODEL]
