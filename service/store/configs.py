"""Tuned dataset configs, shared by the API and the workers through the store.

They are kept without expiry: they cost minutes to make. The API also
serves them from their files when the store has lost them
(:mod:`krypton.service.tuned`).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod

from krypton.models import DatasetConfig, DatasetStore

__all__ = ["ConfigStore", "FileConfigs", "MemoryConfigs"]


class ConfigStore(ABC):
    @abstractmethod
    async def get(self, dataset: str) -> DatasetConfig | None:
        """The dataset's tuned config, or ``None`` before it is tuned."""

    @abstractmethod
    async def save(self, config: DatasetConfig) -> None:
        """Keep ``config`` as its dataset's tuned config, replacing any earlier one."""


class FileConfigs(ConfigStore):
    """Configs as files in a folder: the embedded service's, which outlive the process."""

    def __init__(self, files: DatasetStore) -> None:
        self._files = files

    async def get(self, dataset: str) -> DatasetConfig | None:
        return await asyncio.to_thread(self._files.find, dataset)

    async def save(self, config: DatasetConfig) -> None:
        await asyncio.to_thread(self._files.save, config)


class MemoryConfigs(ConfigStore):
    """Configs in a dictionary (tests, and an embedded store given no folder)."""

    def __init__(self) -> None:
        self._configs: dict[str, DatasetConfig] = {}

    async def get(self, dataset: str) -> DatasetConfig | None:
        return self._configs.get(dataset)

    async def save(self, config: DatasetConfig) -> None:
        self._configs[config.dataset] = config
