"""Service settings, read from the environment (``KRYPTON_*``) once per process."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, RedisDsn
from pydantic_settings import BaseSettings, SettingsConfigDict

from krypton.models import DEFAULT_DATASETS_DIR, DEFAULT_MAX_PIXELS
from krypton.service import constants

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Everything a deployment tunes. Unset, the service runs embedded on the CPU."""

    model_config = SettingsConfigDict(env_prefix="KRYPTON_", extra="ignore")

    redis_url: RedisDsn | None = Field(
        default=None, validation_alias=AliasChoices("KRYPTON_REDIS_URL", "REDIS_URL"),
        description="Redis for the job queue and results; unset runs an in-process queue "
        "and worker (embedded mode).")
    registry: Path | None = Field(
        default=None, description="Deployment registry TOML; unset serves the built-in demo "
        "models with seeded random weights.")
    datasets_dir: Path = Field(
        default=DEFAULT_DATASETS_DIR, description="Tuned dataset config files, when no "
        "registry says: embedded mode keeps its configs there; with Redis, the API imports "
        "the ones Redis lacks on start.")
    device: Literal["cpu", "cuda"] = "cpu"
    result_ttl_seconds: int = Field(default=constants.DEFAULT_RESULT_TTL_SECONDS, ge=1)
    max_upload_bytes: int = Field(default=constants.DEFAULT_MAX_UPLOAD_BYTES, ge=1)
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    embedded_workers: int = Field(default=1, ge=0, description="Workers in embedded mode.")
    claim_idle_ms: int = Field(default=constants.CLAIM_IDLE_MS, ge=1)
    heartbeat_ttl_seconds: int = Field(default=constants.HEARTBEAT_TTL_SECONDS, ge=1)
    log_level: str = "INFO"

    @property
    def embedded(self) -> bool:
        return self.redis_url is None


@lru_cache
def get_settings() -> Settings:
    return Settings()
