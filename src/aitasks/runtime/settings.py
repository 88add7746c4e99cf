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

#: The pseudonymisation key of laptops and tests; production refuses it.
DEV_PSEUDONYMIZATION_KEY = "aitasks-dev-only-key"
#: Redis address of the embedded default (a laptop's local Redis).
DEV_REDIS_URL = "redis://127.0.0.1:6379/0"
#: The audit HMAC key of laptops and tests: public, so it proves nothing; production refuses it.
DEV_AUDIT_KEY = "aitasks-dev-only-audit-key"


class Settings(BaseSettings):
    """Platform settings. Environment variables use the ``AITASKS_`` prefix, e.g. ``AITASKS_STORAGE_ROOT``."""

    model_config = SettingsConfigDict(env_prefix="AITASKS_", extra="ignore", frozen=True)

    #: ``production`` (set by the prod overlays) refuses to run on any embedded default: see
    #: :meth:`production_problems`.
    env: Literal["dev", "production"] = "dev"

    #: Root of everything a run writes: a local directory or a ``gs://bucket/prefix`` URI.
    storage_root: str = Field(default=".aitasks")
    #: Where the audit log lives. Empty: ``<storage_root>/audit``.
    audit_root: str = ""
    #: Key of the audit records' HMAC chain (from the step Secret, key ``audit-key``). Whoever holds it can
    #: rewrite the audit: give it to the writers (step pods) and auditors only, never to the storage admins.
    audit_key: SecretStr = SecretStr(DEV_AUDIT_KEY)
    #: Where the audit head lives, apart from the log. Empty: beside the log (truncation by someone who can
    #: write the audit root is then not provable). In production: a bucket or prefix with object versioning
    #: or a retention policy, writable by the steps but not rewritable by whoever administers the log bucket.
    audit_head_root: str = ""
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
    pseudonymization_key: SecretStr = SecretStr(DEV_PSEUDONYMIZATION_KEY)

    #: Feast online store: ``sqlite`` (embedded) or ``redis``.
    feast_online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str = DEV_REDIS_URL
    #: Feast registry. Empty: a file registry at ``<storage_root>/feast/<project>/registry.db`` (no locking:
    #: one writer at a time). ``postgresql://user:password@host:5432/db``: a SQL registry on PostgreSQL,
    #: safe under concurrent applies (the URL holds a password: keep it in the step Secret).
    feast_registry: str = ""
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

    #: Content generation bounds: a task input over its bound is refused (naming the setting), never clamped.
    content_max_batch_size: int = Field(default=16, ge=1, le=1024)
    content_max_prompts: int = Field(default=10_000, ge=1)
    content_max_prompt_chars: int = Field(default=1000, ge=1)
    content_max_new_tokens: int = Field(default=512, ge=1)
    content_max_image_steps: int = Field(default=100, ge=1)
    content_max_image_size: int = Field(default=1024, ge=8)
    content_max_audio_seconds: float = Field(default=30.0, gt=0)
    #: Where ``gs://`` model directories are downloaded to, keyed by content. Empty: the system temp dir.
    content_model_cache: str = ""

    #: Turn "service unreachable" into a failure instead of a skip or a fallback (set in CI).
    require_services: bool = False

    @field_validator("storage_root", "audit_root", "audit_head_root")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain NUL bytes")
        return value

    def production_problems(self) -> list[str]:
        """Every setting still at an embedded default that only works on one machine (empty: fine).

        Steps run in separate pods: a local storage root, a sqlite MLflow, a sqlite online store or a
        localhost Redis would silently give each pod its own world.
        """
        problems = []
        if not self.storage_root.startswith("gs://"):
            problems.append(f"AITASKS_STORAGE_ROOT={self.storage_root!r} is a local path (needs gs://)")
        if self.audit_root and not self.audit_root.startswith("gs://"):
            problems.append(f"AITASKS_AUDIT_ROOT={self.audit_root!r} is a local path (needs gs://)")
        if self.audit_head_root and not self.audit_head_root.startswith("gs://"):
            problems.append(f"AITASKS_AUDIT_HEAD_ROOT={self.audit_head_root!r} is a local path (needs gs://)")
        audit_key = self.audit_key.get_secret_value()
        if not audit_key or audit_key == DEV_AUDIT_KEY:
            problems.append("AITASKS_AUDIT_KEY is empty or the public dev key (set it from the step Secret)")
        elif len(audit_key) < 32:
            problems.append("AITASKS_AUDIT_KEY is shorter than 32 characters (use a random 32-byte secret)")
        if not self.mlflow_tracking_uri:
            problems.append("AITASKS_MLFLOW_TRACKING_URI is empty (a sqlite file under the storage root)")
        elif self.mlflow_tracking_uri.startswith(("sqlite:", "file:")) or "://" not in self.mlflow_tracking_uri:
            problems.append("AITASKS_MLFLOW_TRACKING_URI is a local store (needs the MLflow server's URL)")
        if self.pseudonymization_key.get_secret_value() == DEV_PSEUDONYMIZATION_KEY:
            problems.append("AITASKS_PSEUDONYMIZATION_KEY is the public dev key (set it from the step Secret)")
        if not self.pushgateway_url:
            problems.append("AITASKS_PUSHGATEWAY_URL is empty (step metrics would be lost)")
        if not self.feast_registry.startswith(("postgresql://", "postgresql+psycopg://")):
            problems.append(
                "AITASKS_FEAST_REGISTRY is not a postgresql:// URL (a file registry has no locking under "
                "concurrent applies; set it in the step Secret)"
            )
        if self.feast_online_store == "sqlite":
            problems.append("AITASKS_FEAST_ONLINE_STORE=sqlite (a file inside one pod; needs redis)")
        elif self.redis_url == DEV_REDIS_URL:
            problems.append("AITASKS_REDIS_URL is the localhost default (set it from the step Secret)")
        return problems

    def check_production(self) -> None:
        """Raise :class:`ConfigurationError` (one line) when ``env=production`` meets an embedded default."""
        if self.env != "production":
            return
        problems = self.production_problems()
        if problems:
            from aitasks.runtime.errors import ConfigurationError

            raise ConfigurationError("production settings at embedded defaults: " + "; ".join(problems))

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
