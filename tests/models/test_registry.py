"""The registry: names, native sizes, seeded builds, argument validation."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

from krypton.models import (
    InvalidArgumentError,
    ModelError,
    UnknownModelError,
    build_model,
    get_model_spec,
    list_models,
    register_model,
)

NATIVE_SIZES = {
    "vgg11": 224,
    "vgg16": 224,
    "resnet18": 224,
    "resnet50": 224,
    "densenet121": 224,
    "mobilenet_v2": 224,
    "inception_v3": 299,
}
def _same_weights(first: nn.Module, second: nn.Module) -> bool:
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_list_models_after_import_includes_required_architectures() -> None:
    assert {"vgg16", "resnet18", "inception_v3", "resnet50", "densenet121",
            "mobilenet_v2"} <= set(list_models())


def test_list_models_returns_sorted_names() -> None:
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize(("name", "size"), list(NATIVE_SIZES.items()), ids=list(NATIVE_SIZES))
def test_get_model_spec_known_name_reports_native_input_size(name: str, size: int) -> None:
    spec = get_model_spec(name)
    assert (spec.name, spec.input_size, spec.preprocessing.size) == (name, size, size)


def test_get_model_spec_every_model_has_family_and_description() -> None:
    specs = [get_model_spec(name) for name in list_models()]
    assert all(spec.family and spec.description for spec in specs)


@pytest.mark.parametrize("name", list(NATIVE_SIZES), ids=list(NATIVE_SIZES))
def test_build_model_three_classes_outputs_three_logits_in_eval_mode(name: str) -> None:
    model = build_model(name, num_classes=3)
    side = max(get_model_spec(name).min_size, 64)  # small, to keep CI fast
    with torch.no_grad():
        logits = model(torch.rand(2, 3, side, side))
    assert (model.training, tuple(logits.shape)) == (False, (2, 3))


def test_build_model_same_seed_gives_identical_weights() -> None:
    assert _same_weights(build_model("resnet18", num_classes=3, seed=7),
                         build_model("resnet18", num_classes=3, seed=7))


def test_build_model_default_seed_is_reproducible() -> None:
    assert _same_weights(build_model("mobilenet_v2", num_classes=3),
                         build_model("mobilenet_v2", num_classes=3))


def test_build_model_different_seeds_give_different_weights() -> None:
    first = build_model("resnet18", num_classes=3, seed=1).state_dict()
    second = build_model("resnet18", num_classes=3, seed=2).state_dict()
    assert not torch.equal(first["conv1.weight"], second["conv1.weight"])


def test_build_model_leaves_global_rng_untouched() -> None:
    before = torch.get_rng_state()
    build_model("resnet18", num_classes=3, seed=123)
    assert torch.equal(torch.get_rng_state(), before)


def test_build_model_unknown_name_raises_listing_known_models() -> None:
    with pytest.raises(UnknownModelError, match="resnet18") as info:
        build_model("resnet19")
    assert "vgg16" in str(info.value) and "inception_v3" in str(info.value)


def test_unknown_model_error_is_a_value_error_and_a_model_error() -> None:
    with pytest.raises(UnknownModelError) as info:
        get_model_spec("alexnet")
    assert isinstance(info.value, ValueError) and isinstance(info.value, ModelError)


def test_unknown_model_error_pickles_with_its_known_names() -> None:
    error = UnknownModelError("nope", ["b", "a"])
    restored = pickle.loads(pickle.dumps(error))
    assert (restored.name, restored.known, str(restored)) == ("nope", ("a", "b"), str(error))


@pytest.mark.parametrize("num_classes", [
    pytest.param(0, id="zero"),
    pytest.param(-3, id="negative"),
    pytest.param(2.5, id="float"),
    pytest.param(True, id="bool"),
    pytest.param("3", id="string"),
])
def test_build_model_bad_num_classes_raises_invalid_argument(num_classes: object) -> None:
    with pytest.raises(InvalidArgumentError, match="num_classes"):
        build_model("resnet18", num_classes=num_classes)  # type: ignore[arg-type]


def test_build_model_non_integer_seed_raises_invalid_argument() -> None:
    with pytest.raises(InvalidArgumentError, match="seed"):
        build_model("resnet18", num_classes=3, seed=1.5)  # type: ignore[arg-type]


def test_build_model_inception_options_override_default_aux_head() -> None:
    model = build_model("inception_v3", num_classes=3, aux_logits=False)
    assert model.AuxLogits is None


REGISTER_TINY = """
import torch
from torch import nn
from krypton.models import build_model, list_models, register_model

@register_model("tiny", input_size=32, family="test", description="one linear layer")
def tiny(num_classes, **options):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))

model = build_model("tiny", num_classes=4)
assert "tiny" in list_models() and model(torch.rand(1, 3, 32, 32)).shape == (1, 4)
"""


def test_register_model_new_name_is_listed_and_built() -> None:
    # In a fresh interpreter: a registration lasts for the process, and would add an
    # architecture to every other test that runs over list_models().
    result = subprocess.run([sys.executable, "-c", REGISTER_TINY], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_register_model_duplicate_name_raises_invalid_argument() -> None:
    with pytest.raises(InvalidArgumentError, match="already registered"):
        register_model("resnet18", input_size=224, family="x", description="x")(
            lambda num_classes, **options: nn.Identity()
        )


def test_import_models_loads_neither_engine_nor_service() -> None:
    code = ("import sys, krypton.models; "
            "print(sorted(m for m in sys.modules "
            "if m.startswith(('krypton.engine', 'krypton.service'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_classifier_head_is_the_last_linear_layer() -> None:
    from krypton.models import classifier_head

    model = build_model("vgg16", num_classes=4)
    assert classifier_head(model) is model.classifier[-1]


def test_classifier_head_of_a_model_without_one_raises() -> None:
    import torch.nn as nn

    from krypton.models import InvalidArgumentError, classifier_head

    with pytest.raises(InvalidArgumentError, match="no linear"):
        classifier_head(nn.Sequential(nn.Conv2d(3, 4, 3)))
