"""Registry configuration, the MLflow client bound to it, and service errors as typed errors.

Clients are bound to a :class:`RegistryConfig` (``MlflowClient(tracking_uri=..., registry_uri=...)``);
the process-wide ``mlflow.set_tracking_uri`` is never touched, so two configs in one process do not
leak into each other.

Errors: an unreachable tracking server or database (connection refused, timeouts, HTTP 5xx/429,
SQL ``OperationalError``) raises :class:`ServiceUnavailableError` (retryable): one summary line naming
the tracking URI with any ``user:password@`` replaced by ``***@`` and the exception's type; the detail
(redacted) goes to the logs. The original exception is not chained because its text carries the
credentials.

Timeouts and retries: every client this module makes sets MLflow's HTTP request timeout and retries
explicitly (:attr:`RegistryConfig.http_timeout_s`, :attr:`RegistryConfig.http_max_retries`, from
``AITASKS_MLFLOW_HTTP_TIMEOUT_S`` / ``AITASKS_MLFLOW_HTTP_MAX_RETRIES``). MLflow's defaults (7 retries,
backoff factor 2, 120 s timeout) made one call to an unreachable server take about 4 minutes and a server
that accepts and never answers hang for 16+ minutes; the task runtime owns the retries instead (its
retry budget and deadline), so MLflow retries 0 times by default.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final

from pydantic import BaseModel, ConfigDict, Field

from aitasks.runtime.errors import FieldIssue, InvalidInputError, ServiceUnavailableError, TaskError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from aitasks.runtime.settings import Settings

__all__ = [
    "ALIAS_TASK",
    "MODEL_NAME_PATTERN",
    "TASK",
    "RegisteredVersion",
    "RegistryConfig",
    "as_version",
    "client",
    "error_code",
    "is_transient",
    "redact_uri",
    "registry_config",
    "service",
]

#: Task names in the typed errors of the registry (registration, alias moves).
TASK: Final = "model.register"
ALIAS_TASK: Final = "model.promote"
#: Registered model names: 1-128 letters, digits, '.', '_' or '-' (also safe in MLflow filter strings
#: and paths). Task inputs that name a registered model use this pattern.
MODEL_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_TRANSIENT_CODES: Final = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"})
_HTTP_TRANSIENT = re.compile(r"failed with error code (5\d\d|429)\b")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]*@")


class RegistryConfig(BaseModel):
    """Where the registry is and which model it manages.

    ``tracking_uri`` may hold credentials (``http://user:password@host``): it is kept out of ``repr``;
    use :func:`redact_uri` to show it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tracking_uri: str = Field(min_length=1, repr=False)
    registry_uri: str | None = Field(default=None, repr=False, description="Default: the tracking URI.")
    artifact_location: str | None = Field(default=None, description="New experiments' artifact root.")
    model_name: str = Field(default="reco-two-tower", pattern=MODEL_NAME_PATTERN)
    experiment: str = Field(default="reco-training", min_length=1, max_length=500, pattern=r"^[^\x00-\x1f]+$")
    http_timeout_s: int = Field(default=30, ge=1, le=3600, description="MLflow HTTP request timeout.")
    http_max_retries: int = Field(default=0, ge=0, le=10, description="MLflow's own HTTP retries (0: the task's).")


class RegisteredVersion(BaseModel):
    """One model version as this module sees it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: int
    run_id: str
    source: str
    tags: dict[str, str]
    aliases: list[str]
    created: bool = Field(default=False, description="True only when this call created the version.")


def redact_uri(text: str) -> str:
    """``text`` with the user info of every ``scheme://user:password@`` replaced by ``***@``."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def registry_config(settings: Settings, *, model_name: str = "reco-two-tower") -> RegistryConfig:
    """The registry of these settings.

    ``settings.mlflow_tracking_uri`` (``AITASKS_MLFLOW_TRACKING_URI``) when set, artifacts then go
    wherever the server says. Empty: the embedded registry, ``sqlite:///<storage_root>/mlflow/mlflow.db``
    with artifacts in ``<storage_root>/mlflow/artifacts`` (created here).

    Raises:
        InvalidInputError: A bad model name, or no tracking URI with a remote (``gs://``) storage root:
            pods share no local sqlite file, so production must name its MLflow server.
    """
    from pydantic import ValidationError

    if settings.mlflow_tracking_uri:
        uri = settings.mlflow_tracking_uri
        artifacts: str | None = None
    else:
        if "://" in settings.storage_root:
            raise InvalidInputError(
                TASK,
                [
                    FieldIssue(
                        "mlflow_tracking_uri",
                        f"storage root {redact_uri(settings.storage_root)} is remote: set AITASKS_MLFLOW_TRACKING_URI "
                        "to the MLflow server (the embedded sqlite registry needs a local storage root)",
                    )
                ],
            )
        root = Path(settings.storage_root).expanduser().absolute() / "mlflow"
        (root / "artifacts").mkdir(parents=True, exist_ok=True)
        uri, artifacts = f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts")
    try:
        return RegistryConfig(
            tracking_uri=uri,
            artifact_location=artifacts,
            model_name=model_name,
            http_timeout_s=settings.mlflow_http_timeout_s,
            http_max_retries=settings.mlflow_http_max_retries,
        )
    except ValidationError as exc:
        issues = [FieldIssue(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()]
        raise InvalidInputError(TASK, issues) from None


def client(cfg: RegistryConfig) -> MlflowClient:
    """An MLflow client bound to ``cfg``; sets no process-wide tracking or registry URI.

    Sets, for the process:

    * ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``: MLflow 3.17 still unpickles flavor models by
      default, so any ``mlflow.<flavor>.load_model`` in a process that talks to the registry would
      run code from a tampered artifact. Our models never need it.
    * ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true``: ending a run on a server prints "View run at
      <tracking URI>" to stdout, password included when the URI carries one.
    * ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false`` unless set: progress bars garble the JSON logs.
    * ``MLFLOW_HTTP_REQUEST_TIMEOUT`` / ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` from ``cfg`` and a backoff
      factor of 1 with no jitter (used only if retries are turned back on): one retry layer, the task's.
      MLflow reads them per request, so they hold for every client of the process (the last config wins).
    """
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(cfg.http_timeout_s)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.http_max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0"
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.registry_uri or cfg.tracking_uri)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything in its chain) means "the service is unreachable or overloaded"."""
    import requests
    from mlflow.exceptions import MlflowException, RestException

    try:
        from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

        sql_errors: tuple[type[BaseException], ...] = (OperationalError, InterfaceError, DisconnectionError)
    except ImportError:  # pragma: no cover - sqlalchemy ships with mlflow
        sql_errors = ()
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError, *sql_errors)):
            return True
        if isinstance(current, requests.ConnectionError | requests.Timeout):
            return True
        if isinstance(current, MlflowException):
            # A plain MlflowException defaults to INTERNAL_ERROR (500) even for client-side faults, so
            # 5xx counts only when the server answered it (RestException) or the message carries it.
            status = current.get_http_status_code()
            if current.error_code in _TRANSIENT_CODES or (isinstance(current, RestException) and status >= 500):
                return True
            if _HTTP_TRANSIENT.search(current.message or ""):
                return True
        current = current.__cause__ or current.__context__
    return False


@contextlib.contextmanager
def service(cfg: RegistryConfig) -> Iterator[None]:
    """Turn an unreachable tracking server or database into a retryable error naming the redacted URI."""
    try:
        yield
    except TaskError:
        raise
    except Exception as exc:
        if not is_transient(exc):
            raise
        from aitasks.runtime import logging as rlog

        # The summary is one line; MLflow's text (urllib3's retry chain, several lines) goes to the logs.
        rlog.get_logger().warning(
            "registry.unreachable",
            tracking_uri=redact_uri(cfg.tracking_uri),
            error_kind=type(exc).__name__,
            detail=redact_uri(str(exc))[:2000],
        )
        # ``from None``: the chained exceptions' text holds the URI with its credentials.
        raise ServiceUnavailableError(
            f"MLflow registry at {redact_uri(cfg.tracking_uri)} is unreachable ({type(exc).__name__}: "
            f"{_cause(exc)}; timeout {cfg.http_timeout_s} s, {cfg.http_max_retries} client retries)"
        ) from None


def _cause(exc: BaseException) -> str:
    """The innermost transport error's type (``ConnectionRefusedError``, ``ReadTimeout``): the summary's why."""
    import requests

    seen: set[int] = set()
    found = type(exc).__name__
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError | requests.RequestException):
            found = type(current).__name__
        current = current.__cause__ or current.__context__
    return found


def error_code(exc: Exception) -> str:
    return str(getattr(exc, "error_code", ""))


def as_version(mv: ModelVersion, *, created: bool = False) -> RegisteredVersion:
    return RegisteredVersion(
        name=str(mv.name),
        version=int(mv.version),
        run_id=str(mv.run_id or ""),
        source=str(mv.source or ""),
        tags={str(k): str(v) for k, v in (mv.tags or {}).items()},
        aliases=sorted(str(a) for a in (mv.aliases or [])),
        created=created,
    )
