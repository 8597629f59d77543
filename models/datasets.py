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
from typing import Any

from krypton.models.errors import DatasetConfigError

__all__ = ["SCHEMA_VERSION", "DatasetConfig", "DatasetStore", "random_weights_id"]

SCHEMA_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def random_weights_id(seed: int, num_classes: int) -> str:
    """What identifies seeded random weights: the seed and the head's size both change them."""
    return f"random-seed-{seed}-classes-{num_classes}"


@dataclass(frozen=True)
class DatasetConfig:
    """Tuned approximation settings for one dataset on one model and checkpoint."""

    dataset: str
    model: str
    checkpoint: str
    """sha256 of the checkpoint file, or :func:`random_weights_id` for seeded weights."""
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
        if not 0.0 < self.tau <= 1.0:
            raise DatasetConfigError(f"tau must be in (0, 1], got {self.tau}")
        if (self.drilldown_ratio is None) != (self.coarse_stride is None):
            raise DatasetConfigError("drilldown_ratio and coarse_stride go together")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

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

    def check_compatible(self, model: str, checkpoint: str, patch_size: int | None = None,
                         stride: int | None = None) -> None:
        """Refuse to apply this config to another model, checkpoint or heatmap geometry.

        Raises:
            DatasetConfigError: naming what differs.
        """
        if model != self.model:
            raise DatasetConfigError(
                f"dataset {self.dataset!r} was tuned for model {self.model!r}, not {model!r}"
            )
        if checkpoint != self.checkpoint:
            raise DatasetConfigError(
                f"dataset {self.dataset!r} was tuned for checkpoint {self.checkpoint[:16]}..., "
                f"not {checkpoint[:16]}...; tune it again for this checkpoint"
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
