"""What a deployment serves: its models and datasets, read from one TOML file.

A hospital deploys its own fine-tuned checkpoints under names its integrators
use (``retina-resnet18``), each with class labels and the preprocessing it was
trained with. Datasets name the deployed model they belong to. Their tuned
approximation configs live where the service keeps its state; ``datasets_dir``
names a folder of config files (``krypton tune`` writes them, see
:class:`~krypton.models.datasets.DatasetStore`) that the service imports on start.

Without a file, :func:`default_deployment` serves the three paper
architectures with seeded random weights, clearly labelled as such, so the
service works on a fresh machine.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Self

from pydantic import Discriminator, Field, FiniteFloat, Tag, model_validator

from krypton.config_files import ARRAY, FileModel, listed_once
from krypton.models.datasets import DATASET_NAME_PATTERN, DEFAULT_DATASETS_DIR
from krypton.models.errors import DatasetConfigError, InvalidArgumentError, UnknownModelError
from krypton.models.pacs import PACS_NAME_PATTERN, PacsServer, StowRoute
from krypton.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from krypton.models.registry import get_model_spec
from krypton.models.weights import weights_id
from krypton.models.windows import Window, WindowChoice

__all__ = [
    "DEMO_LABELS",
    "DeployedDataset",
    "DeployedModel",
    "Deployment",
    "default_deployment",
    "load_deployment",
]

DEMO_LABELS = ("class_0", "class_1", "class_2", "class_3")
"""Neutral class names for the default deployment's untrained models: a model with
random weights must not answer with a clinical finding."""


@dataclass(frozen=True)
class DeployedModel:
    """One servable model: an architecture, its weights, labels and preprocessing."""

    name: str
    architecture: str
    labels: tuple[str, ...]
    checkpoint: Path | None = None
    """``None``: seeded random weights (a demo, not a diagnosis)."""
    seed: int = 0
    input_size: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    window: WindowChoice = None
    """How a grayscale DICOM frame is windowed for this model (see
    :mod:`krypton.models.windows`): part of its preprocessing, like mean and std."""
    description: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def random_weights(self) -> bool:
        return self.checkpoint is None

    @property
    def preprocessing(self) -> Preprocessing:
        size = self.input_size
        if size is None:
            size = get_model_spec(self.architecture).input_size
        return Preprocessing(size=size, mean=self.mean, std=self.std, window=self.window)

    def weights_id(self) -> str:
        """What identifies the weights: the checkpoint's sha256 (reads the whole
        file: workers call it once per model), or the random seed."""
        return weights_id(self.checkpoint, seed=self.seed, num_classes=self.num_classes)


@dataclass(frozen=True)
class DeployedDataset:
    """A use case (e.g. retina OCT) served by one deployed model."""

    name: str
    model: str
    description: str = ""


@dataclass(frozen=True)
class Deployment:
    """The models and datasets one deployment serves, and the folder of configs to import."""

    models: dict[str, DeployedModel]
    datasets: dict[str, DeployedDataset] = field(default_factory=dict)
    datasets_dir: Path = DEFAULT_DATASETS_DIR
    pacs: dict[str, PacsServer] = field(default_factory=dict)
    routes: tuple[StowRoute, ...] = ()
    """Which model explains an instance a PACS sends; none: the default model, results to
    the only PACS if there is exactly one (see :meth:`route`)."""

    def model(self, name: str) -> DeployedModel:
        """Raises UnknownModelError listing the deployed names."""
        try:
            return self.models[name]
        except KeyError:
            raise UnknownModelError(name, self.models) from None

    def default_model(self) -> DeployedModel:
        """The model a request gets when it names none: the first one listed."""
        return next(iter(self.models.values()))

    def dataset(self, name: str) -> DeployedDataset:
        """Raises DatasetConfigError listing the deployed datasets."""
        try:
            return self.datasets[name]
        except KeyError:
            known = ", ".join(sorted(self.datasets)) or "none"
            raise DatasetConfigError(
                f"unknown dataset {name!r}; this deployment serves: {known}") from None

    def route(self, modality: str | None, sop_class_uid: str | None) -> StowRoute | None:
        """The route of an instance a PACS sent: the first that matches; without routes,
        the default model, storing results in the deployment's only PACS (if one)."""
        if not self.routes:
            only = [p.name for p in self.pacs.values() if p.store_results]
            return StowRoute(model=self.default_model().name,
                             results_to=only[0] if len(only) == 1 else None)
        return next((r for r in self.routes if r.matches(modality, sop_class_uid)), None)

    def with_pacs(self, server: PacsServer) -> Deployment:
        """This deployment, also talking to ``server`` (one named in the settings)."""
        return replace(self, pacs={**self.pacs, server.name: server})


def default_deployment(datasets_dir: str | os.PathLike[str] = DEFAULT_DATASETS_DIR
                       ) -> Deployment:
    """VGG16, ResNet18 and InceptionV3 with seeded random weights and neutral class names."""
    note = "seeded random weights (demo: shows the pipeline, not a diagnosis)"
    models = {
        name: DeployedModel(name=name, architecture=name, labels=DEMO_LABELS,
                            description=f"{name}, {note}")
        for name in ("resnet18", "vgg16", "inception_v3")
    }
    datasets = {"retina": DeployedDataset(
        name="retina", model="resnet18",
        description="Fundus photographs (scikit-image's retina sample); demo model")}
    return Deployment(models=models, datasets=datasets, datasets_dir=Path(datasets_dir))


def load_deployment(path: str | os.PathLike[str],
                    datasets_dir: str | os.PathLike[str] | None = None) -> Deployment:
    """Read a deployment TOML file (see ``deploy/registry.toml``).

    Relative paths inside the file are taken from the file's folder, so a
    registry and its checkpoints can move together. The file's
    ``datasets_dir`` wins over the ``datasets_dir`` argument, which wins over
    ``<file's folder>/datasets``.

    Raises:
        InvalidArgumentError: unreadable file, unknown or missing fields, bad values,
            or a dataset naming a model the file does not deploy; the message names
            the file, the entry (``model 'retina-resnet18'``) and the field.
        UnknownModelError: a model names an unknown architecture.
    """
    file = Path(path)
    try:
        document = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # unreadable, not UTF-8, not TOML
        raise InvalidArgumentError(f"cannot read registry {file}: {exc}") from exc
    registry = _RegistryFile.read(document, f"registry {file}", InvalidArgumentError)
    base = file.parent
    models = {entry.name: _deployed(entry, base, f"registry {file}")
              for entry in registry.models}
    datasets = {entry.name: DeployedDataset(entry.name, entry.model, entry.description)
                for entry in registry.datasets}
    if registry.datasets_dir is not None:
        tuned_dir = _resolve(base, registry.datasets_dir)
    else:
        tuned_dir = Path(datasets_dir) if datasets_dir is not None else base / "datasets"
    pacs = {entry.name: PacsServer(**entry.model_dump()) for entry in registry.pacs}
    routes = tuple(StowRoute(**entry.model_dump()) for entry in registry.routes)
    return Deployment(models=models, datasets=datasets, datasets_dir=tuned_dir, pacs=pacs,
                      routes=routes)


# ---------------------------------------------------------------- the file's schema

_Name = Annotated[str, Field(min_length=1)]
_Channels = Annotated[tuple[FiniteFloat, ...], ARRAY, Field(min_length=3, max_length=3)]
_PositiveChannels = Annotated[tuple[Annotated[FiniteFloat, Field(gt=0)], ...], ARRAY,
                              Field(min_length=3, max_length=3)]


class _WindowTable(FileModel):
    """``window = {center = 40, width = 400}``, in units after the Modality LUT."""

    center: FiniteFloat
    width: Annotated[FiniteFloat, Field(ge=1)]
    """DICOM's own bound: a narrower window has no meaning."""


def _window_form(value: object) -> str | None:
    """Which form a ``window`` takes; ``None``, neither, gets the discriminator's message."""
    if isinstance(value, dict):
        return "<table>"
    return "<image>" if value == "image" else None


_WindowEntry = Annotated[
    Annotated[_WindowTable, Tag("<table>")] | Annotated[Literal["image"], Tag("<image>")],
    Discriminator(_window_form, custom_error_type="window", custom_error_message=(
        'must be {center = C, width = W} (units after the Modality LUT, e.g. Hounsfield) '
        'or "image"'))]


class _ModelEntry(FileModel):
    """A ``[[models]]`` table; what is not given is :class:`DeployedModel`'s default."""

    name: _Name
    architecture: str
    labels: Annotated[tuple[str, ...], ARRAY, Field(min_length=1)]
    """The class names, in the order of the model's outputs: their count sizes its head."""
    checkpoint: str | None = None
    seed: int = 0
    input_size: Annotated[int, Field(gt=0)] | None = None
    mean: _Channels = IMAGENET_MEAN
    std: _PositiveChannels = IMAGENET_STD
    window: _WindowEntry | None = None
    description: str = ""


class _DatasetEntry(FileModel):
    """A ``[[datasets]]`` table."""

    name: Annotated[str, Field(pattern=DATASET_NAME_PATTERN)]
    model: str
    description: str = ""


class _PacsEntry(FileModel):
    """A ``[[pacs]]`` table: a DICOMweb server, its credentials named, not written."""

    name: Annotated[str, Field(pattern=PACS_NAME_PATTERN)]
    url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    token_env: str | None = None
    username: str | None = None
    password_env: str | None = None
    store_results: bool = True


class _RouteEntry(FileModel):
    """A ``[[routes]]`` table: which model explains the instances a PACS sends."""

    model: str
    dataset: str | None = None
    modality: str | None = None
    sop_class_uid: str | None = None
    results_to: str | None = None
    mode: Literal["exact", "approximate"] = "exact"


class _RegistryFile(FileModel):
    """The whole file: at least one model, each listed once, and datasets on them."""

    entries: ClassVar[Mapping[str, str]] = {"models": "model", "datasets": "dataset",
                                            "pacs": "pacs", "routes": "route"}

    datasets_dir: str | None = None
    models: Annotated[tuple[_ModelEntry, ...], ARRAY, Field(min_length=1)]
    datasets: Annotated[tuple[_DatasetEntry, ...], ARRAY] = ()
    pacs: Annotated[tuple[_PacsEntry, ...], ARRAY] = ()
    routes: Annotated[tuple[_RouteEntry, ...], ARRAY] = ()

    @model_validator(mode="after")
    def _each_name_once_and_datasets_on_deployed_models(self) -> Self:
        """Across entries, so no field of one entry can say it."""
        listed_once("model", (model.name for model in self.models))
        listed_once("dataset", (dataset.name for dataset in self.datasets))
        deployed = {model.name for model in self.models}
        for dataset in self.datasets:
            if dataset.model not in deployed:
                raise ValueError(
                    f"dataset {dataset.name!r} names model {dataset.model!r}, which is not "
                    f"deployed (deployed: {', '.join(sorted(deployed))})")
        listed_once("pacs", (pacs.name for pacs in self.pacs))
        servers = {pacs.name for pacs in self.pacs}
        served = {dataset.name: dataset.model for dataset in self.datasets}
        for number, route in enumerate(self.routes, 1):
            if route.model not in deployed:
                raise ValueError(f"route #{number} names model {route.model!r}, which is not "
                                 "deployed")
            if route.mode == "approximate" and route.dataset is None:
                raise ValueError(f"route #{number} asks for approximate mode, which needs a "
                                 "tuned dataset: name its dataset")
            if route.dataset is not None and served.get(route.dataset) != route.model:
                raise ValueError(f"route #{number} names dataset {route.dataset!r}, which is "
                                 f"not a dataset of model {route.model!r}")
            if route.results_to is not None and route.results_to not in servers:
                raise ValueError(f"route #{number} sends results to {route.results_to!r}, "
                                 "which is no [[pacs]] entry")
        return self


def _deployed(entry: _ModelEntry, base: Path, where: str) -> DeployedModel:
    """The servable model of an entry; its architecture is looked up now, not per request.

    Raises:
        UnknownModelError: an unknown architecture, naming the file, the entry and the
            field, and listing the known ones.
    """
    try:
        get_model_spec(entry.architecture)
    except UnknownModelError as exc:
        raise UnknownModelError(exc.name, exc.known,
                                where=f"{where}: model {entry.name!r}: architecture") from None
    window = entry.window
    return DeployedModel(
        name=entry.name, architecture=entry.architecture, labels=entry.labels,
        checkpoint=None if entry.checkpoint is None else _resolve(base, entry.checkpoint),
        seed=entry.seed, input_size=entry.input_size, mean=_three(entry.mean),
        std=_three(entry.std), description=entry.description,
        window=Window(window.center, window.width) if isinstance(window, _WindowTable)
        else window)


def _three(values: tuple[float, ...]) -> tuple[float, float, float]:
    """A channel triple, its length checked by the schema, typed as one."""
    red, green, blue = values
    return red, green, blue


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path
