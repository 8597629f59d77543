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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from krypton.models.datasets import DEFAULT_DATASETS_DIR
from krypton.models.errors import DatasetConfigError, InvalidArgumentError, UnknownModelError
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
        InvalidArgumentError: unreadable file, unknown keys, missing fields, or a
            dataset naming a model the file does not deploy.
        UnknownModelError: a model names an unknown architecture.
    """
    file = Path(path)
    try:
        document = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidArgumentError(f"cannot read registry {file}: {exc}") from exc
    base = file.parent
    _check_keys(document, {"datasets_dir", "models", "datasets"}, f"registry {file}")
    models: dict[str, DeployedModel] = {}
    for entry in document.get("models", []):
        deployed = _model(entry, base, file)
        if deployed.name in models:
            raise InvalidArgumentError(f"registry {file}: model {deployed.name!r} listed twice")
        models[deployed.name] = deployed
    if not models:
        raise InvalidArgumentError(f"registry {file} deploys no [[models]]")
    datasets: dict[str, DeployedDataset] = {}
    for entry in document.get("datasets", []):
        _check_keys(entry, {"name", "model", "description"}, f"registry {file} [[datasets]]")
        try:
            dataset = DeployedDataset(name=str(entry["name"]), model=str(entry["model"]),
                                      description=str(entry.get("description", "")))
        except KeyError as exc:
            raise InvalidArgumentError(
                f"registry {file}: a [[datasets]] entry lacks {exc.args[0]!r}") from None
        if dataset.model not in models:
            raise InvalidArgumentError(
                f"registry {file}: dataset {dataset.name!r} names model {dataset.model!r}, "
                f"which is not deployed (deployed: {', '.join(sorted(models))})")
        datasets[dataset.name] = dataset
    if "datasets_dir" in document:
        tuned_dir = _resolve(base, document["datasets_dir"])
    else:
        tuned_dir = Path(datasets_dir) if datasets_dir is not None else base / "datasets"
    return Deployment(models=models, datasets=datasets, datasets_dir=tuned_dir)


_MODEL_KEYS = {"name", "architecture", "checkpoint", "labels", "seed", "input_size", "mean",
               "std", "window", "description"}


def _model(entry: dict[str, Any], base: Path, file: Path) -> DeployedModel:
    _check_keys(entry, _MODEL_KEYS, f"registry {file} [[models]]")
    for key in ("name", "architecture", "labels"):
        if key not in entry:
            raise InvalidArgumentError(f"registry {file}: a [[models]] entry lacks {key!r}")
    get_model_spec(entry["architecture"])
    where = f"registry {file}: model {entry['name']!r}"
    if not isinstance(entry["labels"], list) or not entry["labels"]:
        raise InvalidArgumentError(f"{where} has no labels: give a list of class names, in "
                                   "the order of the model's outputs")
    labels = tuple(str(label) for label in entry["labels"])
    seed = entry.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InvalidArgumentError(f"{where}: seed must be an integer, got {seed!r}")
    checkpoint = entry.get("checkpoint")
    deployed = DeployedModel(
        name=str(entry["name"]),
        architecture=str(entry["architecture"]),
        labels=labels,
        checkpoint=None if checkpoint is None else _resolve(base, checkpoint),
        seed=seed,
        input_size=entry.get("input_size"),
        mean=tuple(entry.get("mean", IMAGENET_MEAN)),
        std=tuple(entry.get("std", IMAGENET_STD)),
        window=_window(entry.get("window"), where),
        description=str(entry.get("description", "")),
    )
    deployed.preprocessing  # noqa: B018 - validates size, mean and std now, not per request
    return deployed


def _window(value: object, where: str) -> WindowChoice:
    """``window = {center = 40, width = 400}``, ``window = "image"``, or none."""
    if value is None or value == "image":
        return value
    if isinstance(value, dict) and set(value) == {"center", "width"}:
        try:
            return Window(value["center"], value["width"])
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{where}: {exc}") from None
    raise InvalidArgumentError(f"{where}: window must be {{center = C, width = W}} (units "
                               f"after the Modality LUT, e.g. Hounsfield) or \"image\", "
                               f"got {value!r}")


def _resolve(base: Path, value: object) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else base / path


def _check_keys(entry: object, allowed: set[str], where: str) -> None:
    if not isinstance(entry, dict):
        raise InvalidArgumentError(f"{where} must be a table")
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise InvalidArgumentError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
