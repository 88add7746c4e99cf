"""Settings: every service address and limit, read from the environment (``AITASKS_*``) on demand.

Nothing is read at import time: call :func:`load_settings` (or build :class:`Settings` directly in
tests). Embedded defaults run on one machine with no services; production points the same names at
real services (GCS, Redis, PostgreSQL, an MLflow server, an OTLP collector).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Platform settings. Environment variables use the ``AITASKS_`` prefix, e.g. ``AITASKS_STORAGE_ROOT``."""

    model_config = SettingsConfigDict(env_prefix="AITASKS_", extra="ignore", frozen=True)

    #: Root of everything a run writes: a local directory or a ``gs://bucket/prefix`` URI.
    storage_root: str = Field(default=".aitasks")
    #: Where the audit log lives. Empty: ``<storage_root>/audit``.
    audit_root: str = ""
    #: Who is acting (a person, ``ci``, ``schedule``, a service account); recorded in audit records.
    actor: str = "local"

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    trace_exporter: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"

    #: Prometheus: push to this gateway at the end of a batch step (empty: no push).
    pushgateway_url: str = ""
    #: Prometheus: write ``<dir>/<job>.prom`` for the node-exporter textfile collector (empty: no file).
    metrics_textfile_dir: str = ""
    #: Prometheus: serve /metrics on this port in long-running processes (0: off).
    metrics_port: int = Field(default=0, ge=0, le=65535)

    #: Key for pseudonymising user identifiers in logs (HMAC-SHA256). Set a real secret in production.
    pseudonymization_key: SecretStr = SecretStr("aitasks-dev-only-key")

    #: Feast online store: ``sqlite`` (embedded) or ``redis``.
    feast_online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: MLflow tracking URI. Empty: a sqlite database under the storage root.
    mlflow_tracking_uri: str = ""

    #: Kubeflow Pipelines API host of `python -m pipelines upload|schedule|run` (the token comes from
    #: KFP_TOKEN or the in-cluster service-account token, never from a setting that could be logged).
    kfp_host: str = ""

    #: Audio decoding limits (defaults of the audio tasks; a task input overrides them).
    audio_max_bytes: int = Field(default=256 * 1024**2, ge=1)
    audio_max_duration_s: float = Field(default=1800.0, gt=0)
    #: Hard wall-clock limit per audio file; the worker process is killed past it.
    audio_file_timeout_s: float = Field(default=120.0, gt=0)
    #: Worker processes of audio analysis (0: one per available core).
    audio_workers: int = Field(default=0, ge=0, le=256)

    #: Turn "service unreachable" into a failure instead of a skip or a fallback (set in CI).
    require_services: bool = False

    @field_validator("storage_root", "audit_root")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain NUL bytes")
        return value

    def resolved_audit_root(self) -> str:
        """The audit root, defaulting to ``<storage_root>/audit``."""
        if self.audit_root:
            return self.audit_root
        if self.storage_root.startswith("gs://"):
            return self.storage_root.rstrip("/") + "/audit"
        return str(Path(self.storage_root) / "audit")


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment now, with explicit overrides winning."""
    return Settings(**overrides)  # type: ignore[arg-type]
