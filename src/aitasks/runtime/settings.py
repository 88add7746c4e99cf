"""Settings: every service address and limit, read from the environment (``AITASKS_*``) on demand.

Nothing is read at import time: call :func:`load_settings` (or build :class:`Settings` directly in
tests). Embedded defaults run on one machine with no services; production points the same names at
real services (GCS, Redis, PostgreSQL, an MLflow server, an OTLP collector).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: The pseudonymisation key of laptops and tests; production refuses it.
DEV_PSEUDONYMIZATION_KEY = "aitasks-dev-only-key"
#: Redis address of the embedded default (a laptop's local Redis).
DEV_REDIS_URL = "redis://127.0.0.1:6379/0"
#: The audit HMAC key of laptops and tests: public, so it proves nothing; production refuses it.
DEV_AUDIT_KEY = "aitasks-dev-only-audit-key"
#: On-demand tasks' broker and result backend of the embedded default (a laptop's RabbitMQ and Redis).
DEV_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
DEV_RESULT_BACKEND = "redis://127.0.0.1:6379/1"


#: Keys of the step Secret (``aitasks-step-secrets``) and the env var each becomes in a step pod: the one
#: source for the compiled pipelines (pipelines/k8s.py) and the PyTorchJob pods (model_training.pytorchjob).
STEP_SECRET_ENV: dict[str, str] = {
    "pseudonymization-key": "AITASKS_PSEUDONYMIZATION_KEY",
    # The full Redis URL, password included: never in the ConfigMap.
    "redis-url": "AITASKS_REDIS_URL",
    # The Feast SQL registry's DSN (postgresql://user:password@host/db), when the registry is in PostgreSQL.
    "feast-registry": "AITASKS_FEAST_REGISTRY",
    # The Optuna study database of reco-tuning (postgresql://user:password@host/db), when tuning runs in pods.
    "tuning-storage": "AITASKS_TUNING_STORAGE",
    # The audit records' HMAC key: whoever holds it can rewrite the audit (docs/en/audit.md).
    "audit-key": "AITASKS_AUDIT_KEY",
}


class Settings(BaseSettings):
    """Platform settings. Environment variables use the ``AITASKS_`` prefix, e.g. ``AITASKS_STORAGE_ROOT``."""

    model_config = SettingsConfigDict(env_prefix="AITASKS_", extra="ignore", frozen=True)

    #: ``production`` (set by the prod overlays) refuses to run on any embedded default: see
    #: :meth:`production_problems`.
    env: Literal["dev", "production"] = "dev"
    #: ``env=production`` refuses to generate synthetic data in place of a missing events/catalog location
    #: (a schedule without its data would otherwise train and analyse on made-up listeners). A staging
    #: environment that runs production settings on synthetic data sets this to true.
    allow_synthetic_data: bool = False

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
    #: Optuna study storage of hyperparameter tuning (SQLAlchemy URL). Empty: an sqlite file under a local
    #: storage root. ``postgresql://user:password@host:5432/db`` where trial steps run in separate pods (the
    #: URL holds a password: keep it in the step Secret).
    tuning_storage: str = ""

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

    #: Storage confinement (docs/en/storage.md). Every URI a task reads (artifacts, catalog roots,
    #: manifests) must resolve, after normalisation and symlink resolution, inside the storage root or one
    #: of these roots: local directories or gs:// prefixes, comma-separated. Empty: the storage root only.
    input_roots: Annotated[tuple[str, ...], NoDecode] = ()
    #: Roots index.publish may publish under besides the storage root (same form). Empty: the storage root only.
    publish_roots: Annotated[tuple[str, ...], NoDecode] = ()
    #: index.publish and `aitasks index prune` remove temp directories of killed publishers (local) and
    #: abandoned version claims (GCS) once they are older than this, in seconds.
    index_sweep_after_s: float = Field(default=3600.0, gt=0)

    @field_validator("input_roots", "publish_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            roots = tuple(str(v).strip() for v in value if str(v).strip())
            if any("\x00" in r for r in roots):
                raise ValueError("must not contain NUL bytes")
            return roots
        return value

    # -- Fault budgets: how long a task may take and how long it keeps retrying (see the runbook). --
    #: Wall-clock deadline of a task call (every attempt and backoff), by task name, overriding the task's
    #: own (``ai_task(deadline_s=...)``); key ``"*"`` for every task not named. Env: JSON, e.g.
    #: ``AITASKS_TASK_DEADLINES_S='{"model.train": 28800}'``.
    task_deadlines_s: dict[str, float] = Field(default_factory=dict)
    #: Deadline of tasks that declare none and are not named in :attr:`task_deadlines_s`.
    task_deadline_default_s: float = Field(default=4 * 3600.0, gt=0)
    #: Retry budget by task name (``"*"``: every task), overriding the task's ``RetryPolicy.budget_s``: how
    #: long after its first retryable failure a task keeps retrying (size it for a service restart).
    task_retry_budgets_s: dict[str, float] = Field(default_factory=dict)
    #: MLflow client: timeout of one HTTP request (connect and each read), and MLflow's own retries of it.
    #: 0 retries: the task runtime is the one retry layer (MLflow's default, 7 with backoff factor 2, made
    #: one unreachable-server call take about 4 minutes).
    mlflow_http_timeout_s: int = Field(default=30, ge=1, le=3600)
    mlflow_http_max_retries: int = Field(default=0, ge=0, le=10)
    #: Redis online store clients (Feast's and the checks): connect and read/write timeouts; redis-py's own
    #: retries are off (the task runtime retries, a long-lived reader fails fast and decides).
    redis_connect_timeout_s: float = Field(default=1.0, gt=0, le=60)
    redis_socket_timeout_s: float = Field(default=5.0, gt=0, le=600)

    @field_validator("task_deadlines_s", "task_retry_budgets_s")
    @classmethod
    def _positive_seconds(cls, value: dict[str, float]) -> dict[str, float]:
        bad = sorted(k for k, v in value.items() if not v > 0)
        if bad:
            raise ValueError(f"seconds must be > 0 (task {', '.join(bad)})")
        return value

    def task_deadline_s(self, task: str, declared: float | None = None) -> float:
        """The deadline of ``task``: settings by name, else settings' ``*``, else the task's own, else the default."""
        for name in (task, "*"):
            if name in self.task_deadlines_s:
                return float(self.task_deadlines_s[name])
        return float(self.task_deadline_default_s if declared is None else declared)

    def task_retry_budget_s(self, task: str, declared: float) -> float:
        """The retry budget of ``task``: settings by name, else settings' ``*``, else the task's policy."""
        return float(self.task_retry_budgets_s.get(task, self.task_retry_budgets_s.get("*", declared)))

    # -- On-demand tasks on Celery workers (aitasks.ondemand; docs/en/ondemand.md) ----------------------
    #: RabbitMQ broker. The URL carries a password: in a cluster it comes from the Secret aitasks-ondemand.
    ondemand_broker_url: SecretStr = SecretStr(DEV_BROKER_URL)
    #: Result backend (Redis; a database of its own, results expire). From the same Secret in a cluster.
    ondemand_result_backend: SecretStr = SecretStr(DEV_RESULT_BACKEND)
    #: The queue submitters send to and workers consume (quorum queue); dead letters: ``<queue>.dead``.
    ondemand_queue: str = Field(default="aitasks", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")
    #: A message redelivered this many times (its worker died each time) is dead-lettered by the broker.
    ondemand_delivery_limit: int = Field(default=5, ge=1, le=100)
    #: Soft time limit of one task call (the task gets an exception it can clean up after), then the hard
    #: one (the worker process is killed). A message may ask for less.
    ondemand_soft_time_limit_s: float = Field(default=3600.0, gt=0)
    ondemand_time_limit_s: float = Field(default=3660.0, gt=0)
    #: Lease TTL of on-demand calls: how soon a redelivered message takes over from a killed worker.
    ondemand_lease_ttl_s: float = Field(default=30.0, ge=1)

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

    def refuse_synthetic(self, missing: str) -> None:
        """Raise :class:`ConfigurationError` when production would generate data in place of ``missing``."""
        if self.env == "production" and not self.allow_synthetic_data:
            from aitasks.runtime.errors import ConfigurationError

            raise ConfigurationError(
                f"{missing} is empty: a production run does not generate synthetic data in its place "
                "(give the location, or set AITASKS_ALLOW_SYNTHETIC_DATA=true for a staging run)"
            )

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
