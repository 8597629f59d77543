"""Deployed models loaded once per worker process, one copy on the device each.

A model is built from its checkpoint on first use and kept for the process's
life; its engines (incremental and naive) are built on first use too and
share that one device copy (they adopt it rather than copying it). The
command line uses the same cache for its single model.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from krypton.engine import OcclusionEngine, make_engine
from krypton.models import build_model, to_model_input
from krypton.models.deployment import DeployedModel, Deployment

__all__ = ["COMPUTE_LOCK", "LoadedModel", "ModelCache"]

logger = logging.getLogger(__name__)

COMPUTE_LOCK = threading.Lock()
"""Workers sharing a process take turns with the models: torch.fx tracing (done
when an engine is first built) patches ``nn.Module.__call__`` process-wide, so a
forward pass in another thread during a trace would be traced too. Scale out
with one worker process per GPU; in one process there is nothing to gain."""


@dataclass
class LoadedModel:
    """A deployed model built once: its network on the device, weights identity, engines."""

    deployed: DeployedModel
    network: nn.Module
    weights_id: str
    engines: dict[str, OcclusionEngine] = field(default_factory=dict)

    def model_input(self, pixels: npt.NDArray[np.floating]) -> torch.Tensor:
        """Decoded pixels preprocessed as this model was trained."""
        return to_model_input(pixels, self.deployed.preprocessing)


class ModelCache:
    """Builds each deployed model on first use and keeps it for the process's life."""

    def __init__(self, deployment: Deployment, device: str) -> None:
        self.deployment = deployment
        self.device = device
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> LoadedModel:
        """The loaded model; the first call builds it from its checkpoint (slow)."""
        with self._lock:
            if name not in self._loaded:
                deployed = self.deployment.model(name)
                started = time.perf_counter()
                network = build_model(deployed.architecture, num_classes=deployed.num_classes,
                                      weights=deployed.checkpoint, seed=deployed.seed)
                self._loaded[name] = LoadedModel(deployed, network.to(self.device),
                                                 deployed.weights_id())
                logger.info("loaded model %s (%s) on %s in %.2f s", name, deployed.architecture,
                            self.device, time.perf_counter() - started)
            return self._loaded[name]

    def weights(self) -> dict[str, str]:
        """The weights id of each model built so far."""
        with self._lock:
            return {name: loaded.weights_id for name, loaded in self._loaded.items()}

    def engine(self, name: str, mode: str) -> OcclusionEngine:
        """The model's engine for ``mode`` (``naive`` or the incremental one), built once."""
        loaded = self.get(name)
        kind = "naive" if mode == "naive" else "exact"
        with self._lock:
            if kind not in loaded.engines:
                loaded.engines[kind] = make_engine(loaded.network, kind, device=self.device,
                                                   copy=False)
            return loaded.engines[kind]

    def preload(self) -> list[str]:
        """Build every deployed model and its incremental engine now; returns the failures.

        A deployment with a missing or mismatched checkpoint shows up in the
        worker's log at start, not in the first patient's job, and the first
        job does not pay for tracing.
        """
        failed = []
        for name in self.deployment.models:
            try:
                with COMPUTE_LOCK:
                    self.engine(name, "exact")
            except Exception:
                logger.exception("model %s cannot be loaded; its jobs will fail", name)
                failed.append(name)
        return failed
