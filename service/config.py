"""Service settings, read from the environment (``KRYPTON_*``) once per process."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, AnyHttpUrl, Field, RedisDsn
from pydantic_settings import BaseSettings, SettingsConfigDict

from krypton.models import DEFAULT_DATASETS_DIR, DEFAULT_MAX_PIXELS
from krypton.models.budget import DEFAULT_DECODE_MEMORY_BYTES
from krypton.service import constants

__all__ = ["DeliveryPolicy", "Settings", "get_settings"]


@dataclass(frozen=True)
class DeliveryPolicy:
    """How hard a worker tries to store results: attempts, backoff, and each one's timeout."""

    attempts: int = 4
    backoff_seconds: float = 2.0
    """Wait before the second attempt; it doubles before each later one."""
    timeout_seconds: float = 30.0


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
    decode_memory_bytes: int = Field(
        default=DEFAULT_DECODE_MEMORY_BYTES, ge=16 * 1024**2,
        description="Memory one process may spend decoding images at once; a decode waits "
        "for its share, and one that alone needs more is refused with 413.")
    embedded_workers: int = Field(default=1, ge=0, description="Workers in embedded mode.")
    preload_models: bool = Field(default=True, description="Embedded mode: load and trace "
                                 "every deployed model in the background at start.")
    claim_idle_ms: int = Field(default=constants.CLAIM_IDLE_MS, ge=1)
    heartbeat_ttl_seconds: int = Field(default=constants.HEARTBEAT_TTL_SECONDS, ge=1)
    log_level: str = "INFO"

    pacs_url: AnyHttpUrl | None = Field(
        default=None, description="DICOMweb base URL of a PACS, served as PACS 'pacs' (the "
        "registry's [[pacs]] entries name more, with credentials): heatmaps of its "
        "instances by UIDs, and their results stored back into the study.")
    pacs_timeout_seconds: float = Field(
        default=30.0, gt=0, description="How long one request to a PACS may take.")
    delivery_attempts: int = Field(
        default=4, ge=1, description="STOW-RS requests a worker makes to store a job's "
        "results in an unreachable PACS before the job says the delivery failed.")
    delivery_backoff_seconds: float = Field(
        default=2.0, ge=0, description="Wait before the second delivery attempt; it doubles "
        "before each later one.")

    keys_file: Path | None = Field(
        default=None, description="API keys (`krypton keys add`); unset runs open, which "
        "`krypton serve` allows on loopback only, unless auth is 'none'.")
    auth: Literal["keys", "none"] | None = Field(
        default=None, description="'none' states that a gateway in front authenticates, "
        "so the service may listen beyond loopback without keys.")
    rate_limit_per_minute: int = Field(
        default=constants.DEFAULT_RATE_LIMIT_PER_MINUTE, ge=1,
        description="Jobs one key (or, running open, one client address) may submit a "
        "minute; more get 429 with Retry-After.")
    max_queue_length: int = Field(
        default=constants.DEFAULT_MAX_QUEUE_LENGTH, ge=1,
        description="Jobs waiting or running at once; a submission beyond gets 503 with "
        "Retry-After instead of growing the queue without bound.")
    max_jobs_per_key: int = Field(
        default=constants.DEFAULT_MAX_JOBS_PER_KEY, ge=1,
        description="Jobs one key (or, running open, one client address) may have waiting "
        "or running; more get 429 with Retry-After.")
    max_bytes_per_key: int = Field(
        default=constants.DEFAULT_MAX_BYTES_PER_KEY, ge=1,
        description="Bytes of images one key's unexpired jobs may keep; an upload beyond "
        "gets 429 until older jobs expire or are deleted.")
    redis_max_connections: int = Field(
        default=constants.REDIS_MAX_CONNECTIONS, ge=2,
        description="Connections one process keeps to Redis; requests beyond wait for one.")
    max_job_gflop: float = Field(
        default=constants.DEFAULT_MAX_JOB_GFLOP, gt=0,
        description="Work one heatmap may book: positions times the model's GFLOP per "
        "inference; more is refused with 422 saying the smallest stride that fits.")
    job_timeout_seconds: float = Field(
        default=constants.DEFAULT_JOB_TIMEOUT_SECONDS, gt=0,
        description="A job still running after this long fails, and its worker moves on.")

    @property
    def embedded(self) -> bool:
        return self.redis_url is None

    @property
    def delivery(self) -> DeliveryPolicy:
        return DeliveryPolicy(self.delivery_attempts, self.delivery_backoff_seconds,
                              self.pacs_timeout_seconds)


@lru_cache
def get_settings() -> Settings:
    return Settings()
