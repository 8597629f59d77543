"""Deployments: the registry TOML, the built-in demo deployment, weights and their identity."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from krypton.models import (
    DatasetConfigError,
    InvalidArgumentError,
    UnknownModelError,
    random_weights_id,
)
from krypton.models.deployment import (
    DEMO_LABELS,
    DeployedDataset,
    DeployedModel,
    Deployment,
    default_deployment,
    load_deployment,
)
from krypton.models.windows import Window, WindowChoice

REGISTRY = """\
datasets_dir = "configs"

[[models]]
name = "retina-resnet18"
architecture = "resnet18"
checkpoint = "weights/retina.pt"
labels = ["CNV", "DME", "DRUSEN", "NORMAL"]
input_size = 128
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
description = "fine-tuned on OCT"

[[models]]
name = "demo"
architecture = "vgg16"
labels = ["a", "b"]
seed = 7

[[datasets]]
name = "retina-oct"
model = "retina-resnet18"
description = "Retina OCT B-scans"
"""


def _write(folder: Path, text: str) -> Path:
    path = folder / "registry.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _models_only(extra: str = "", model_extra: str = "") -> str:
    return (f'{extra}\n[[models]]\nname = "m"\narchitecture = "resnet18"\nlabels = ["a", "b"]\n'
            f"{model_extra}\n")


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    return load_deployment(_write(tmp_path, REGISTRY))


# ---------------------------------------------------------------- load_deployment


def test_load_deployment_reads_every_field_of_a_model(deployment: Deployment,
                                                      tmp_path: Path) -> None:
    assert deployment.models["retina-resnet18"] == DeployedModel(
        name="retina-resnet18", architecture="resnet18",
        labels=("CNV", "DME", "DRUSEN", "NORMAL"), checkpoint=tmp_path / "weights/retina.pt",
        seed=0, input_size=128, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
        description="fine-tuned on OCT")


def test_load_deployment_fills_defaults_of_optional_fields(deployment: Deployment) -> None:
    assert deployment.models["demo"] == DeployedModel(name="demo", architecture="vgg16",
                                                      labels=("a", "b"), seed=7)


def test_load_deployment_keeps_models_in_file_order(deployment: Deployment) -> None:
    assert list(deployment.models) == ["retina-resnet18", "demo"]


def test_load_deployment_reads_datasets(deployment: Deployment) -> None:
    assert deployment.datasets == {"retina-oct": DeployedDataset(
        name="retina-oct", model="retina-resnet18", description="Retina OCT B-scans")}


def test_load_deployment_resolves_relative_paths_from_the_file_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    registry = _write(folder, REGISTRY)
    monkeypatch.chdir(tmp_path)
    loaded = load_deployment(registry)
    assert loaded.models["retina-resnet18"].checkpoint == folder / "weights/retina.pt"
    assert loaded.datasets_dir == folder / "configs"


def test_load_deployment_keeps_absolute_paths(tmp_path: Path) -> None:
    checkpoint = tmp_path / "elsewhere" / "model.pt"
    folder = tmp_path / "registry-folder"
    folder.mkdir()
    text = _models_only(f'datasets_dir = "{tmp_path / "cfg"}"',
                        f'checkpoint = "{checkpoint}"')
    loaded = load_deployment(_write(folder, text))
    assert loaded.models["m"].checkpoint == checkpoint
    assert loaded.datasets_dir == tmp_path / "cfg"


def test_load_deployment_without_datasets_dir_uses_the_given_fallback(tmp_path: Path) -> None:
    loaded = load_deployment(_write(tmp_path, _models_only()), tmp_path / "from-settings")
    assert loaded.datasets_dir == tmp_path / "from-settings"


def test_load_deployment_without_datasets_dir_uses_datasets_next_to_the_file(
    tmp_path: Path
) -> None:
    assert load_deployment(_write(tmp_path, _models_only())).datasets_dir == tmp_path / "datasets"


def test_load_deployment_preprocessing_uses_input_size_mean_and_std(
    deployment: Deployment
) -> None:
    preprocessing = deployment.models["retina-resnet18"].preprocessing
    assert (preprocessing.size, preprocessing.mean, preprocessing.std) == (
        128, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.mark.parametrize(("line", "window"), [
    ("window = { center = 40, width = 400 }", Window(40.0, 400.0)),
    ('window = "image"', "image"),
    ("", None),
])
def test_load_deployment_reads_a_models_window(tmp_path: Path, line: str,
                                               window: WindowChoice) -> None:
    loaded = load_deployment(_write(tmp_path, _models_only(model_extra=line)))
    assert loaded.models["m"].preprocessing.window == window


def test_deployed_model_without_input_size_uses_the_architecture_default() -> None:
    model = DeployedModel(name="i", architecture="inception_v3", labels=("a",))
    assert model.preprocessing.size == 299


@pytest.mark.parametrize(("text", "message"), [
    pytest.param(_models_only("owner = 'radiology'"), "owner", id="unknown-top-level-key"),
    pytest.param(_models_only(model_extra='weights = "x.pt"'), "weights",
                 id="unknown-model-key"),
    pytest.param('[[models]]\narchitecture = "resnet18"\nlabels = ["a"]\n', "'name'",
                 id="model-without-name"),
    pytest.param('[[models]]\nname = "m"\nlabels = ["a"]\n', "'architecture'",
                 id="model-without-architecture"),
    pytest.param('[[models]]\nname = "m"\narchitecture = "resnet18"\n', "'labels'",
                 id="model-without-labels"),
    pytest.param('[[models]]\nname = "m"\narchitecture = "resnet18"\nlabels = []\n',
                 "labels", id="empty-labels"),
    pytest.param(_models_only() + _models_only().replace('labels = ["a", "b"]',
                                                         'labels = ["c"]'),
                 "twice", id="duplicate-model"),
    pytest.param('datasets_dir = "x"\n', "'models'", id="no-models"),
    pytest.param(_models_only() + '[[datasets]]\nname = "d"\nmodel = "vgg"\n', "'vgg'",
                 id="dataset-of-undeployed-model"),
    pytest.param(_models_only() + '[[datasets]]\nname = "d"\n', "'model'",
                 id="dataset-without-model"),
    pytest.param(_models_only() + '[[datasets]]\nname = "d"\nmodel = "m"\ncolour = "red"\n',
                 "colour", id="unknown-dataset-key"),
    pytest.param(_models_only(model_extra="input_size = -8"), "size", id="negative-input-size"),
    pytest.param(_models_only(model_extra="input_size = 0"), "size", id="input-size-0"),
    pytest.param(_models_only(model_extra='input_size = "large"'), "size",
                 id="text-input-size"),
    pytest.param(_models_only(model_extra="input_size = 64.0"), "size", id="float-input-size"),
    pytest.param(_models_only(model_extra="mean = [0.5, 0.5]"), "mean", id="two-means"),
    pytest.param('[[models]]\nname = "m"\narchitecture = "resnet18"\nlabels = "CNV"\n',
                 "labels", id="labels-as-one-string"),
    pytest.param(_models_only(model_extra='seed = "seven"'), "seed", id="text-seed"),
    pytest.param(_models_only(model_extra="seed = 1.7"), "seed", id="float-seed"),
    pytest.param(_models_only(model_extra="std = [0.2, 0.0, 0.2]"), "std", id="zero-std"),
    pytest.param("[[models]\nname = ", "cannot read registry", id="not-toml"),
    pytest.param(_models_only(model_extra="window = { center = 40, width = 0 }"), "width",
                 id="window-width-0"),
    pytest.param(_models_only(model_extra="window = { center = 40 }"), "window",
                 id="window-without-width"),
    pytest.param(_models_only(model_extra='window = "lung"'), "window", id="named-window"),
    pytest.param(_models_only() + '[[pacs]]\nname = "p"\nurl = "ftp://x"\n', "url",
                 id="pacs-url-not-http"),
    pytest.param(_models_only() + '[[pacs]]\nname = "../p"\nurl = "http://x"\n', "name",
                 id="pacs-name-not-a-path-segment"),
    pytest.param(_models_only() + ('[[pacs]]\nname = "p"\nurl = "http://x"\n' * 2), "twice",
                 id="duplicate-pacs"),
    pytest.param(_models_only() + '[[pacs]]\nname = "p"\nurl = "http://x"\npassword = "s"\n',
                 "password", id="pacs-password-in-the-file"),
    pytest.param(_models_only() + '[[routes]]\nmodel = "vgg"\n', "'vgg'",
                 id="route-to-undeployed-model"),
    pytest.param(_models_only() + '[[routes]]\nmodel = "m"\nresults_to = "p"\n', "'p'",
                 id="route-to-unknown-pacs"),
    pytest.param(_models_only() + '[[routes]]\nmodel = "m"\nmode = "approximate"\n',
                 "tuned dataset", id="approximate-route-without-dataset"),
    pytest.param(_models_only() + '[[routes]]\nmodel = "m"\ndataset = "d"\n', "'d'",
                 id="route-to-unknown-dataset"),
])
def test_load_deployment_with_bad_registry_raises_naming_the_fault(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message.replace("[", r"\[")):
        load_deployment(_write(tmp_path, text))


@pytest.mark.parametrize(("text", "entry", "field"), [
    pytest.param(_models_only(model_extra='chekpoint = "w.pt"'), "model 'm'", "chekpoint",
                 id="model"),
    pytest.param(_models_only() + '[[datasets]]\nname = "d"\nmodel = "m"\ncolour = "red"\n',
                 "dataset 'd'", "colour", id="dataset"),
])
def test_load_deployment_refuses_an_unknown_field_naming_file_entry_and_field(
    tmp_path: Path, text: str, entry: str, field: str
) -> None:
    registry = _write(tmp_path, text)
    with pytest.raises(InvalidArgumentError) as raised:
        load_deployment(registry)
    message = str(raised.value)
    assert str(registry) in message and entry in message and repr(field) in message


def test_load_deployment_of_a_missing_file_raises_naming_it(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="nowhere.toml"):
        load_deployment(tmp_path / "nowhere.toml")


def test_load_deployment_with_unknown_architecture_lists_the_known_ones(tmp_path: Path
                                                                        ) -> None:
    text = _models_only().replace('"resnet18"', '"alexnet9"')
    with pytest.raises(UnknownModelError, match="alexnet9.*resnet18"):
        load_deployment(_write(tmp_path, text))


def test_load_deployment_of_the_shipped_registry_serves_its_models() -> None:
    shipped = Path(__file__).resolve().parents[2] / "deploy" / "registry.toml"
    if not shipped.is_file():
        pytest.skip("deploy/registry.toml is not in this checkout")
    loaded = load_deployment(shipped)
    assert loaded.models
    assert all(d.model in loaded.models for d in loaded.datasets.values())


# ---------------------------------------------------------------- Deployment lookups


def test_deployment_model_of_unknown_name_lists_deployed_names(deployment: Deployment) -> None:
    with pytest.raises(UnknownModelError, match="demo, retina-resnet18"):
        deployment.model("resnet18")


def test_deployment_dataset_of_unknown_name_lists_deployed_datasets(
    deployment: Deployment
) -> None:
    with pytest.raises(DatasetConfigError, match="retina-oct"):
        deployment.dataset("chest")


# ---------------------------------------------------------------- default_deployment


def test_default_deployment_serves_the_three_paper_architectures() -> None:
    assert sorted(default_deployment().models) == ["inception_v3", "resnet18", "vgg16"]


@pytest.mark.parametrize("name", ["resnet18", "vgg16", "inception_v3"])
def test_default_deployment_flags_random_weights(name: str) -> None:
    model = default_deployment().model(name)
    assert model.random_weights and model.checkpoint is None
    assert "random weights" in model.description
    assert model.labels == DEMO_LABELS


def test_default_deployment_has_a_retina_dataset_on_resnet18(tmp_path: Path) -> None:
    deployment = default_deployment(tmp_path)
    assert deployment.dataset("retina").model == "resnet18"
    assert deployment.datasets_dir == tmp_path


# ---------------------------------------------------------------- weights


def test_deployed_model_weights_id_is_the_checkpoint_sha256(checkpoint: Path) -> None:
    model = DeployedModel(name="m", architecture="resnet18", labels=("a", "b", "c"),
                          checkpoint=checkpoint)
    assert model.weights_id() == hashlib.sha256(checkpoint.read_bytes()).hexdigest()


def test_deployed_model_random_weights_id_names_seed_and_classes() -> None:
    model = DeployedModel(name="m", architecture="resnet18", labels=("a", "b"), seed=4)
    assert model.weights_id() == random_weights_id(4, 2)


@pytest.mark.parametrize("changes", [
    pytest.param({"seed": 5}, id="seed"),
    pytest.param({"labels": ("a", "b", "c")}, id="head-size"),
])
def test_deployed_model_random_weights_id_changes_with_the_weights(changes: dict[str, object]
                                                                   ) -> None:
    fields: dict[str, object] = {"name": "m", "architecture": "resnet18", "labels": ("a", "b"),
                                 "seed": 4}
    first = DeployedModel(**fields)  # type: ignore[arg-type]
    second = DeployedModel(**(fields | changes))  # type: ignore[arg-type]
    assert first.weights_id() != second.weights_id()


@pytest.mark.parametrize("name", ["../../etc/x", "a b/c", ".hidden"])
def test_load_deployment_refuses_a_dataset_name_its_config_file_could_not_have(
        tmp_path: Path, name: str) -> None:
    text = _models_only() + f'[[datasets]]\nname = "{name}"\nmodel = "m"\n'
    with pytest.raises(InvalidArgumentError, match="dataset .*name: should match pattern"):
        load_deployment(_write(tmp_path, text))


PACS_REGISTRY = _models_only() + """
[[models]]
name = "n"
architecture = "resnet18"
labels = ["a", "b"]

[[pacs]]
name = "main"
url = "https://pacs.example/dicom-web"
token_env = "MAIN_TOKEN"

[[routes]]
modality = "OP"
model = "n"
results_to = "main"

[[routes]]
sop_class_uid = "1.2.840.10008.5.1.4.1.1.7"
model = "m"
"""


def test_load_deployment_reads_pacs_without_their_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAIN_TOKEN", "s3cret")
    pacs = load_deployment(_write(tmp_path, PACS_REGISTRY)).pacs["main"]
    assert (pacs.url, pacs.store_results) == ("https://pacs.example/dicom-web", True)
    assert pacs.headers() == {"Authorization": "Bearer s3cret"}


def test_an_instance_takes_the_first_route_its_modality_and_sop_class_match(
        tmp_path: Path) -> None:
    deployment = load_deployment(_write(tmp_path, PACS_REGISTRY))
    photo = deployment.route("OP", "1.2.840.10008.5.1.4.1.1.7")
    capture = deployment.route("OT", "1.2.840.10008.5.1.4.1.1.7")
    assert photo is not None and (photo.model, photo.results_to) == ("n", "main")
    assert capture is not None and (capture.model, capture.results_to) == ("m", None)
    assert deployment.route("CT", "1.2.840.10008.5.1.4.1.1.2") is None


def test_without_routes_an_instance_goes_to_the_first_model_and_the_only_pacs(
        tmp_path: Path) -> None:
    text = PACS_REGISTRY.split("[[routes]]")[0]
    route = load_deployment(_write(tmp_path, text)).route("CT", None)
    assert route is not None and (route.model, route.results_to) == ("m", "main")
