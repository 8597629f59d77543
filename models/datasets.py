"""Per-dataset approximation configs: small versioned JSON documents, pinned to a model.

A config records what tuning found for one use case (say, retina OCT on a
fine-tuned ResNet18): the projective-field threshold, the drill-down ratio and
coarse stride, the SSIM it was tuned to keep and what it achieved. It is only
valid for the model and checkpoint it was tuned on, and for the patch size and
stride it was tuned for, so loading it for anything else is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, Protocol, Self

from pydantic import Field, PrivateAttr, ValidationError, model_validator

from krypton.approximation import Approximation
from krypton.config_files import FileModel, describe
from krypton.models.errors import DatasetConfigError

__all__ = ["DEFAULT_DATASETS_DIR", "SCHEMA_VERSION", "DatasetConfig", "DatasetStore"]

SCHEMA_VERSION: Final = 1
DEFAULT_DATASETS_DIR = Path("datasets")
"""Where tuned configs are written and read when nothing says otherwise."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DATASET_NAME_PATTERN = _NAME.pattern
"""What a dataset may be called: its config is a file of that name."""


class TuningOutcome(Protocol):
    """The fields of a tuning result a config records."""

    @property
    def approximation(self) -> Approximation: ...
    @property
    def target_ssim(self) -> float: ...
    @property
    def holdout_ssim(self) -> float: ...
    @property
    def speedup(self) -> float: ...


class DatasetConfig(FileModel):
    """Tuned approximation settings for one dataset on one model and checkpoint.

    The four knobs are checked together by the :class:`~krypton.approximation.Approximation`
    they make, which the config holds; the other fields by their types.

    Raises:
        DatasetConfigError: on construction, naming the dataset and each bad field.
    """

    dataset: Annotated[str, Field(pattern=_NAME.pattern)]
    """1-64 letters, digits, '.', '_' or '-': it names the config's file."""
    model: str
    checkpoint: str
    """What identifies the weights (:func:`~krypton.models.weights.weights_id`)."""
    patch_size: Annotated[int, Field(gt=0)]
    stride: Annotated[int, Field(gt=0)]
    tau: float
    drilldown_ratio: float | None
    coarse_stride: int | None
    target_ssim: float
    achieved_ssim: float
    """Mean SSIM against exact heatmaps on the held-out sample images."""
    speedup: float | None = None
    """Measured speedup over exact incremental inference while tuning."""
    drilldown_tolerance: float | None = None
    """Refinement by bisection to this tolerance, ``drilldown_ratio`` its cap."""
    created: str = Field(default_factory=lambda: dt.date.today().isoformat())
    version: Literal[1] = SCHEMA_VERSION
    _approximation: Approximation = PrivateAttr()

    if not TYPE_CHECKING:  # a type checker keeps the fields as the signature
        def __init__(self, /, **fields: Any) -> None:
            """Refuses with :class:`DatasetConfigError`, as every reader of configs expects,
            not pydantic's ``ValidationError``."""
            try:
                super().__init__(**fields)
            except ValidationError as exc:
                raise DatasetConfigError(describe(exc, _entry(fields), DatasetConfig,
                                                  fields)) from None

    @model_validator(mode="after")
    def _knobs_make_an_approximation_for_the_stride(self) -> Self:
        """Its rules, and their messages, are the approximation's own: not repeated here."""
        self._approximation = Approximation(
            self.tau, self.drilldown_ratio, self.coarse_stride, self.drilldown_tolerance
        ).for_stride(self.stride)
        return self

    @property
    def approximation(self) -> Approximation:
        """The tuned knobs as the one value every part of Krypton checks and runs."""
        return self._approximation

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "dataset config") -> DatasetConfig:
        """Parse and validate a config document; ``source`` says where it came from, such as
        ``dataset config datasets/retina-oct.json``, for the messages.

        Raises:
            DatasetConfigError: not JSON, missing or unknown fields, bad values; naming
                ``source``, the dataset and the field.
        """
        try:
            document: Any = json.loads(text)
        except (ValueError, RecursionError) as exc:  # not JSON, or nested past the parser
            raise DatasetConfigError(f"{source} is not valid JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise DatasetConfigError(f"{source} must be a JSON object")
        try:
            return cls(**document)
        except DatasetConfigError as exc:
            raise DatasetConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_tuning(cls, result: TuningOutcome, *, dataset: str, model: str, checkpoint: str,
                    patch_size: int, stride: int) -> DatasetConfig:
        """The config a tuning run found, pinned to the model and weights it ran on.

        ``result`` is what :func:`krypton.engine.tune` returns; this package
        reads only the fields it names, so it needs no engine.
        """
        return cls(dataset=dataset, model=model, checkpoint=checkpoint, patch_size=patch_size,
                   stride=stride, **result.approximation.knobs(), target_ssim=result.target_ssim,
                   achieved_ssim=round(result.holdout_ssim, 4),
                   speedup=round(result.speedup, 3))

    @property
    def met_target(self) -> bool:
        return self.achieved_ssim >= self.target_ssim

    def check_compatible(self, model: str, *, patch_size: int | None = None,
                         stride: int | None = None) -> None:
        """Refuse to apply this config to another architecture or heatmap geometry.

        The weights are checked where they are loaded (a worker, the command
        line), against :attr:`checkpoint`.

        Raises:
            DatasetConfigError: naming what differs.
        """
        if model != self.model:
            raise DatasetConfigError(
                f"dataset {self.dataset!r} was tuned for model {self.model!r}, not {model!r}"
            )
        for name, asked, tuned in (("patch_size", patch_size, self.patch_size),
                                   ("stride", stride, self.stride)):
            if asked is not None and asked != tuned:
                raise DatasetConfigError(
                    f"dataset {self.dataset!r} was tuned for {name} {tuned}, not {asked}"
                )


class DatasetStore:
    """Configs as ``<root>/<dataset>.json`` files."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, dataset: str) -> Path:
        if not _NAME.match(dataset):
            raise DatasetConfigError(f"invalid dataset name {dataset!r}")
        return self.root / f"{dataset}.json"

    def save(self, config: DatasetConfig) -> Path:
        path = self.path(config.dataset)
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(config.to_json(), encoding="utf-8")
        temporary.replace(path)  # atomic: a reader never sees half a config
        return path

    def load(self, dataset: str) -> DatasetConfig:
        """Raises DatasetConfigError when the dataset has no config or it is invalid."""
        path = self.path(dataset)
        if not path.is_file():
            known = ", ".join(self.names()) or "none"
            raise DatasetConfigError(
                f"no tuned config for dataset {dataset!r} in {self.root} (known: {known}); "
                "run `krypton tune` first"
            )
        return DatasetConfig.from_json(path.read_bytes().decode("utf-8", "replace"),
                                       source=f"dataset config {path}")

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json"))

    def find(self, dataset: str) -> DatasetConfig | None:
        """The dataset's config, or ``None`` when it has none yet."""
        return self.load(dataset) if self.path(dataset).is_file() else None


def _entry(fields: Mapping[str, object]) -> str:
    """The dataset a config is for, as its messages name it; ``""`` when it names none."""
    name = fields.get("dataset")
    return f"dataset {name!r}" if isinstance(name, str) else ""
