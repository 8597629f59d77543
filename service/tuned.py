"""The tuned dataset configs the API serves: the store's, else the deployment's files.

With Redis the store is what the workers read, but config files written by
``krypton tune`` (or kept from an earlier deployment) sit in the deployment's
``datasets_dir``. The API copies a file into the store when the store lacks
it: at start, and whenever a request asks for it after Redis lost its data,
so approximate mode comes back without restarting anything.
"""

from __future__ import annotations

import asyncio
import logging

from krypton.models import DatasetConfig, DatasetConfigError, DatasetStore
from krypton.models.deployment import Deployment
from krypton.service.problems import TunedConfigUnreadable
from krypton.service.store import ConfigStore

__all__ = ["import_dataset_configs", "tuned_config"]

logger = logging.getLogger(__name__)


async def tuned_config(configs: ConfigStore, deployment: Deployment,
                       dataset: str) -> DatasetConfig | None:
    """``dataset``'s tuned config: the store's, or its file's, copied into the store.

    Raises:
        TunedConfigUnreadable: the store's or the file's config is broken (logged).
    """
    try:
        config = await configs.get(dataset)
        if config is None and dataset in deployment.datasets:
            config = await _copy_file(configs, deployment, dataset)
    except DatasetConfigError as exc:
        logger.error("tuned config of dataset %r unreadable: %s", dataset, exc)
        raise TunedConfigUnreadable.of(dataset) from exc
    return config


async def import_dataset_configs(configs: ConfigStore, deployment: Deployment) -> list[str]:
    """Copy into the store every config file of a deployed dataset that the store lacks;
    one the store has (tuned by the service since) is left alone. Returns the names."""
    names = await asyncio.to_thread(DatasetStore(deployment.datasets_dir).names)
    imported = []
    for name in names:
        try:
            lacking = name in deployment.datasets and await configs.get(name) is None
            if lacking and await _copy_file(configs, deployment, name) is not None:
                imported.append(name)
        except DatasetConfigError as exc:  # said now, not first at a patient's request
            logger.error("tuned config of dataset %r unreadable: %s", name, exc)
    return imported


async def _copy_file(configs: ConfigStore, deployment: Deployment,
                     dataset: str) -> DatasetConfig | None:
    """``dataset``'s config file, stored in ``configs``; ``None`` where there is no file."""
    config = await asyncio.to_thread(DatasetStore(deployment.datasets_dir).find, dataset)
    if config is not None:
        await configs.save(config)
    return config
