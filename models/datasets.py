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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from krypton.approximation import Approximation, ApproximationError
from krypton.models.errors import DatasetConfigError

__all__ = ["DEFAULT_DATASETS_DIR", "SCHEMA_VERSION", "DatasetConfig", "DatasetStore"]

SCHEMA_VERSION = 1
DEFAULT_DATASETS_DIR = Path("datasets")
"""Where tuned configs are written and read when nothing says otherwise."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


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


@dataclass(frozen=True)
class DatasetConfig:
    """Tuned approximation settings for one dataset on one model and checkpoint."""

    dataset: str
    model: str
    checkpoint: str
    """What identifies the weights (:func:`~krypton.models.weights.weights_id`)."""
    patch_size: int
    stride: int
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
    created: str = field(default_factory=lambda: dt.date.today().isoformat())
    version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not _NAME.match(self.dataset):
            raise DatasetConfigError(
                f"dataset name {self.dataset!r} must be 1-64 letters, digits, '.', '_' or '-'"
            )
        if self.version != SCHEMA_VERSION:
            raise DatasetConfigError(
                f"dataset config version {self.version} is not supported (expected "
                f"{SCHEMA_VERSION})"
            )
        try:
            self.approximation.for_stride(self.stride)
        except ApproximationError as exc:
            raise DatasetConfigError(f"dataset {self.dataset!r}: {exc}") from exc

    @property
    def approximation(self) -> Approximation:
        """The tuned knobs as the one value every part of Krypton checks and runs.

        Raises:
            ApproximationError: knobs that break one of its rules.
        """
        return Approximation(self.tau, self.drilldown_ratio, self.coarse_stride,
                             self.drilldown_tolerance)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> DatasetConfig:
        """Parse and validate a config document.

        Raises:
            DatasetConfigError: not JSON, missing or unknown fields, bad values.
        """
        try:
            document: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetConfigError(f"dataset config is not valid JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise DatasetConfigError("dataset config must be a JSON object")
        try:
            return cls(**document)
        except TypeError as exc:
            raise DatasetConfigError(f"dataset config has wrong fields: {exc}") from exc

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
        return DatasetConfig.from_json(path.read_text(encoding="utf-8"))

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json"))

    def find(self, dataset: str) -> DatasetConfig | None:
        """The dataset's config, or ``None`` when it has none yet."""
        return self.load(dataset) if self.path(dataset).is_file() else None
