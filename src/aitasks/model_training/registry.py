"""The MLflow model registry, without pickle.

A model is plain files (``model.safetensors`` + JSON) logged as run artifacts under ``model/``,
next to a ``model/checksums.json`` (sha256 per file). The model version's ``source`` is that
directory, and the version carries the sha256 of ``checksums.json`` as the tag
``aitasks.checksums_sha256``: the tag lives in the registry database, the files in artifact
storage, so a file changed in storage fails :func:`download_model` even when its checksum list was
rewritten too. Nothing here calls an MLflow flavor's ``log_model`` / ``load_model`` (they pickle),
and every client this module makes first turns MLflow's pickle deserialisation off for the process.

Clients are bound to a :class:`RegistryConfig` (``MlflowClient(tracking_uri=..., registry_uri=...)``);
the process-wide ``mlflow.set_tracking_uri`` is never touched, so two configs in one process do not
leak into each other.

Idempotency of :func:`register_model`: a model version carries ``aitasks.idempotency_key``; the
same key returns that version (``created=False``). A run carries the key too, and is ended
``FINISHED`` only once every param, metric and artifact is logged, *before* the version is created.
So after a crash between the run and the version, the next attempt finds a ``FINISHED`` run with
the same key and the same checksums and makes the version from it (no second upload); a run that
is ``FAILED``/``KILLED``, holds other content, or has been ``RUNNING`` for over an hour (a dead
attempt) is ended and deleted (soft delete, MLflow's garbage collection removes it). A ``RUNNING``
run younger than that may belong to a live concurrent attempt and is left alone. Two attempts racing
past every check both create a version; each then keeps the lowest version holding the key and the
loser deletes its own, so both return the same version.

Errors: an unreachable tracking server or database (connection refused, timeouts, HTTP 5xx/429,
SQL ``OperationalError``) raises :class:`ServiceUnavailableError` (retryable) naming the tracking URI
with any ``user:password@`` replaced by ``***@``; the original exception is not chained because its
text carries the credentials.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

from pydantic import BaseModel, ConfigDict, Field

from aitasks.runtime.errors import (
    DataFormatError,
    FatalError,
    FieldIssue,
    InvalidInputError,
    ServiceUnavailableError,
    TaskError,
)
from aitasks.runtime.hashing import canonical_json, sha256_file, sha256_text

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param
    from mlflow.entities.model_registry import ModelVersion

    from aitasks.runtime.settings import Settings

__all__ = [
    "ARTIFACT_DIR",
    "CHECKSUMS_FILE",
    "CHECKSUMS_TAG",
    "KEY_TAG",
    "PICKLE_SUFFIXES",
    "RegisteredVersion",
    "RegistryConfig",
    "client",
    "download_model",
    "get_version",
    "promote_if_blessed",
    "redact_uri",
    "register_model",
    "registry_config",
    "rollback_alias",
    "set_alias",
]

_TASK: Final = "model.register"
_ALIAS_TASK: Final = "model.promote"
KEY_TAG: Final = "aitasks.idempotency_key"
CHECKSUMS_TAG: Final = "aitasks.checksums_sha256"
ARTIFACT_DIR: Final = "model"
CHECKSUMS_FILE: Final = "checksums.json"
#: Suffixes of pickle-based formats (torch's .pt/.pth/.ckpt are zip files of pickles); never logged or served.
PICKLE_SUFFIXES: Final = frozenset({".pkl", ".pickle", ".pt", ".pth", ".joblib", ".ckpt", ".dill"})
#: Same rule as the tasks' ``MODEL_NAME_PATTERN``: also safe in MLflow filter strings and paths.
_MODEL_NAME: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
#: MLflow's rule for param, metric and tag keys (alphanumerics, ``_ - . / :`` and space), at most 250 chars.
_ENTITY_KEY = re.compile(r"[A-Za-z0-9_.\-/: ]{1,250}")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
_TRANSIENT_CODES: Final = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"})
_HTTP_TRANSIENT = re.compile(r"failed with error code (5\d\d|429)\b")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]*@")
# MLflow's log_batch limits: 100 params, 1000 metrics, 1000 entities per call.
_MAX_PARAMS: Final = 100
_MAX_ENTITIES: Final = 1000
_MAX_TAG_VALUE: Final = 8000
#: A RUNNING run with our key older than this is a dead attempt, not a concurrent one.
_STALE_RUN_S: Final = 3600
_READY_TIMEOUT_S: Final = 300


class RegistryConfig(BaseModel):
    """Where the registry is and which model it manages.

    ``tracking_uri`` may hold credentials (``http://user:password@host``): it is kept out of ``repr``;
    use :func:`redact_uri` to show it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tracking_uri: str = Field(min_length=1, repr=False)
    registry_uri: str | None = Field(default=None, repr=False, description="Default: the tracking URI.")
    artifact_location: str | None = Field(default=None, description="New experiments' artifact root.")
    model_name: str = Field(default="reco-two-tower", pattern=_MODEL_NAME)
    experiment: str = Field(default="reco-training", min_length=1, max_length=500, pattern=r"^[^\x00-\x1f]+$")


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
                _TASK,
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
        return RegistryConfig(tracking_uri=uri, artifact_location=artifacts, model_name=model_name)
    except ValidationError as exc:
        issues = [FieldIssue(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()]
        raise InvalidInputError(_TASK, issues) from None


# --------------------------------------------------------------------------------- client, errors


def client(cfg: RegistryConfig) -> MlflowClient:
    """An MLflow client bound to ``cfg``; sets no process-wide tracking or registry URI.

    Sets, for the process:

    * ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``: MLflow 3.17 still unpickles flavor models by
      default, so any ``mlflow.<flavor>.load_model`` in a process that talks to the registry would
      run code from a tampered artifact. Our models never need it.
    * ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true``: ending a run on a server prints "View run at
      <tracking URI>" to stdout, password included when the URI carries one.
    * ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false`` unless set: progress bars garble the JSON logs.
    """
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.registry_uri or cfg.tracking_uri)


def _is_transient(exc: BaseException) -> bool:
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
def _service(cfg: RegistryConfig) -> Iterator[None]:
    """Turn an unreachable tracking server or database into a retryable error naming the redacted URI."""
    try:
        yield
    except TaskError:
        raise
    except Exception as exc:
        if not _is_transient(exc):
            raise
        detail = redact_uri(str(exc))[:400]
        # ``from None``: the chained exceptions' text holds the URI with its credentials.
        raise ServiceUnavailableError(
            f"MLflow registry at {redact_uri(cfg.tracking_uri)} is unreachable ({type(exc).__name__}): {detail}"
        ) from None


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "error_code", ""))


def _as_version(mv: ModelVersion, *, created: bool = False) -> RegisteredVersion:
    return RegisteredVersion(
        name=str(mv.name),
        version=int(mv.version),
        run_id=str(mv.run_id or ""),
        source=str(mv.source or ""),
        tags={str(k): str(v) for k, v in (mv.tags or {}).items()},
        aliases=sorted(str(a) for a in (mv.aliases or [])),
        created=created,
    )


# ------------------------------------------------------------------------------------- register


def _check_inputs(
    idempotency_key: str,
    tags: Mapping[str, str],
    params: Mapping[str, str | int | float],
    metrics: Mapping[str, float],
    curves: Mapping[str, list[float]],
) -> None:
    issues: list[FieldIssue] = []
    if not _KEY.fullmatch(idempotency_key):
        issues.append(FieldIssue("idempotency_key", "must be 1-200 letters, digits, '_', '.', ':' or '-'"))
    for key, value in tags.items():
        if not _ENTITY_KEY.fullmatch(key):
            issues.append(FieldIssue(f"tags.{key}", "key must be 1-250 letters, digits, '_', '-', '.', '/', ':', ' '"))
        elif key in (KEY_TAG, CHECKSUMS_TAG) or key.startswith(("aitasks.previous_", "aitasks.demoted_")):
            issues.append(FieldIssue(f"tags.{key}", "is set by the registry itself"))
        if len(str(value)) > _MAX_TAG_VALUE:
            issues.append(FieldIssue(f"tags.{key}", f"value longer than {_MAX_TAG_VALUE} characters"))
    for group, keys in (("params", params), ("metrics", metrics), ("curves", curves)):
        issues.extend(
            FieldIssue(f"{group}.{k}", "key must be 1-250 letters, digits, '_', '-', '.', '/', ':', ' '")
            for k in keys
            if not _ENTITY_KEY.fullmatch(k)
        )
    for key, metric in metrics.items():
        if not math.isfinite(metric):
            issues.append(FieldIssue(f"metrics.{key}", "must be finite"))
    for key, values in curves.items():
        if key in metrics:
            issues.append(FieldIssue(f"curves.{key}", "has the name of a metric"))
        if not all(math.isfinite(v) for v in values):
            issues.append(FieldIssue(f"curves.{key}", "values must be finite"))
    if issues:
        raise InvalidInputError(_TASK, issues)


def _is_pickle(name: str) -> bool:
    return any(s.lower() in PICKLE_SUFFIXES for s in Path(name).suffixes)


def _model_checksums(model_dir: Path) -> dict[str, str]:
    """sha256 per file of ``model_dir`` (relative POSIX paths), refusing what must not be logged."""
    if not model_dir.is_dir():
        raise DataFormatError(str(model_dir), "model directory does not exist")
    listing: dict[str, str] = {}
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir).as_posix()
        if path.is_symlink():
            # log_artifacts follows links: a link could upload a file from outside the model.
            raise DataFormatError(str(path), "refusing a symbolic link in a model directory")
        if not path.is_file() or rel == CHECKSUMS_FILE:
            continue  # checksums.json is ours and rewritten (e.g. a re-registered download)
        if _is_pickle(rel):
            raise DataFormatError(str(path), "refusing pickle-based file")
        listing[rel] = sha256_file(path)
    if not listing:
        raise DataFormatError(str(model_dir), "model directory holds no files")
    return listing


def _batches(params: list[Param], metrics: list[Metric]) -> Iterator[tuple[list[Param], list[Metric]]]:
    """Split into the fewest ``log_batch`` calls MLflow accepts (one for any usual run)."""
    while params or metrics:
        head_p, params = params[:_MAX_PARAMS], params[_MAX_PARAMS:]
        room = _MAX_ENTITIES - len(head_p)
        head_m, metrics = metrics[:room], metrics[room:]
        yield head_p, head_m


def _log_run(
    c: MlflowClient,
    run_id: str,
    params: Mapping[str, str | int | float],
    metrics: Mapping[str, float],
    curves: Mapping[str, list[float]],
) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    ms = [Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())]
    # Curves are per-epoch histories: step = epoch, counted from 1.
    ms += [Metric(k, float(v), now, e) for k, vs in sorted(curves.items()) for e, v in enumerate(vs, start=1)]
    ps = [Param(k, str(v)) for k, v in sorted(params.items())]
    for batch_params, batch_metrics in _batches(ps, ms):
        c.log_batch(run_id, metrics=batch_metrics, params=batch_params, synchronous=True)


def _experiment_id(c: MlflowClient, cfg: RegistryConfig) -> str:
    exp = c.get_experiment_by_name(cfg.experiment)
    if exp is None:
        try:
            return str(c.create_experiment(cfg.experiment, artifact_location=cfg.artifact_location))
        except Exception as exc:
            if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = c.get_experiment_by_name(cfg.experiment)  # a racing creator won: use theirs
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        c.restore_experiment(exp.experiment_id)
    return str(exp.experiment_id)


def _find_by_key(c: MlflowClient, name: str, key: str) -> list[ModelVersion]:
    found = c.search_model_versions(f"name = '{name}' and tags.`{KEY_TAG}` = '{key}'")
    return sorted(found, key=lambda mv: int(mv.version))


def _reusable_run(c: MlflowClient, exp_id: str, key: str, checksums_sha: str) -> str | None:
    """The run of an earlier attempt with this key that can carry the version; cleans dead ones."""
    runs = c.search_runs([exp_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'", max_results=100)
    now_ms = time.time() * 1000
    reuse: str | None = None
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        info = run.info
        complete = info.status == "FINISHED" and run.data.tags.get(CHECKSUMS_TAG) == checksums_sha
        if complete and reuse is None:
            reuse = info.run_id
        elif info.status == "RUNNING" and now_ms - (info.start_time or 0) < _STALE_RUN_S * 1000:
            continue  # possibly a live concurrent attempt
        elif not complete:
            if info.status == "RUNNING":
                c.set_terminated(info.run_id, "FAILED")
            c.delete_run(info.run_id)
    return reuse


def _new_run(
    c: MlflowClient,
    exp_id: str,
    model_dir: Path,
    checksums_text: str,
    run_tags: dict[str, str],
    params: Mapping[str, str | int | float],
    metrics: Mapping[str, float],
    curves: Mapping[str, list[float]],
    run_name: str | None,
) -> str:
    run_id = str(c.create_run(exp_id, tags=run_tags, run_name=run_name).info.run_id)
    try:
        _log_run(c, run_id, params, metrics, curves)
        c.log_artifacts(run_id, str(model_dir), ARTIFACT_DIR)
        with tempfile.TemporaryDirectory(prefix="aitasks-mlflow-") as tmp:
            path = Path(tmp) / CHECKSUMS_FILE
            path.write_text(checksums_text, "utf-8")
            # After the directory: replaces a stale checksums.json that came with it.
            c.log_artifact(run_id, str(path), ARTIFACT_DIR)
    except BaseException:
        with contextlib.suppress(Exception):
            c.set_terminated(run_id, "FAILED")
        raise
    # FINISHED means "everything logged": a retry may build the version on this run.
    c.set_terminated(run_id, "FINISHED")
    return run_id


def _await_ready(c: MlflowClient, mv: ModelVersion) -> ModelVersion:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while mv.status == "PENDING_REGISTRATION" and time.monotonic() < deadline:
        time.sleep(0.5)
        mv = c.get_model_version(mv.name, mv.version)
    if mv.status == "FAILED_REGISTRATION":
        raise FatalError(f"{mv.name} v{mv.version}: registration failed: {mv.status_message}")
    if mv.status != "READY":
        raise ServiceUnavailableError(f"{mv.name} v{mv.version} not READY after {_READY_TIMEOUT_S} s ({mv.status})")
    return mv


def register_model(
    cfg: RegistryConfig,
    model_dir: Path,
    *,
    idempotency_key: str,
    tags: dict[str, str],
    params: dict[str, str | int | float],
    metrics: dict[str, float],
    curves: dict[str, list[float]] | None = None,
    run_name: str | None = None,
) -> RegisteredVersion:
    """Log a run with the model's files and register it as a new version, at most once per key.

    Args:
        cfg: The registry.
        model_dir: The model's files (safetensors + JSON); subdirectories are kept.
        idempotency_key: Identity of this registration (e.g. a hash of the model's content).
        tags: Lineage tags, set on the run and on the version.
        params: Run parameters.
        metrics: Final metrics (step 0).
        curves: Per-epoch histories, logged as the metric ``name`` at steps 1, 2, ...
        run_name: MLflow run name.

    Returns:
        The version; ``created`` is False when the key already had one (nothing new is logged).

    Raises:
        InvalidInputError: A malformed key, tag, param or metric name, or a non-finite metric.
        DataFormatError: The directory is missing or empty, or holds a pickle-based file or a symlink.
        ServiceUnavailableError: The tracking server or its database is unreachable (retryable).
        FatalError: MLflow reported the version's registration as failed.
    """
    curves = curves or {}
    _check_inputs(idempotency_key, tags, params, metrics, curves)
    checksums = _model_checksums(model_dir)
    checksums_text = canonical_json(checksums)
    checksums_sha = sha256_text(checksums_text)
    lineage = {str(k): str(v) for k, v in tags.items()} | {KEY_TAG: idempotency_key, CHECKSUMS_TAG: checksums_sha}
    name = cfg.model_name
    with _service(cfg):
        c = client(cfg)
        existing = _find_by_key(c, name, idempotency_key)
        if existing:
            return _as_version(c.get_model_version(name, existing[0].version))
        exp_id = _experiment_id(c, cfg)
        run_id = _reusable_run(c, exp_id, idempotency_key, checksums_sha) or _new_run(
            c, exp_id, model_dir, checksums_text, lineage, params, metrics, curves, run_name
        )
        try:
            c.create_registered_model(name, description="Registered by aitasks (safetensors + JSON, no pickle).")
        except Exception as exc:
            if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/{ARTIFACT_DIR}"
        mv = c.create_model_version(name, source, run_id=run_id, tags=lineage, await_creation_for=0)
        mv = _await_ready(c, mv)
        # Racing attempts that both got here agree on the lowest version with the key.
        winner = _find_by_key(c, name, idempotency_key)[0]
        if int(winner.version) != int(mv.version):
            with contextlib.suppress(Exception):
                c.delete_model_version(name, mv.version)
            return _as_version(c.get_model_version(name, winner.version))
        return _as_version(c.get_model_version(name, mv.version), created=True)


# ------------------------------------------------------------------------------- lookup, aliases


def _check_alias(alias: str) -> None:
    if not _ALIAS.fullmatch(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise InvalidInputError(
            _ALIAS_TASK,
            [FieldIssue("alias", "must be 1-63 letters, digits, '_' or '-' starting with a letter (not latest, vN)")],
        )


def _get(c: MlflowClient, cfg: RegistryConfig, version: int | None, alias: str | None) -> ModelVersion | None:
    if (version is None) == (alias is None):
        raise InvalidInputError(_ALIAS_TASK, [FieldIssue("version", "give exactly one of version and alias")])
    try:
        if alias is not None:
            _check_alias(alias)
            # The registered model's alias map, not get_model_version_by_alias: a missing alias
            # is then "None", not an error message to parse.
            target = c.get_registered_model(cfg.model_name).aliases.get(alias)
            if target is None:
                return None
            version = int(target)
        return c.get_model_version(cfg.model_name, str(version))
    except Exception as exc:
        if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def get_version(
    cfg: RegistryConfig, *, version: int | None = None, alias: str | None = None
) -> RegisteredVersion | None:
    """The model version with this number or alias (exactly one of the two).

    Returns:
        The version, or None when the model, the version or the alias does not exist.

    Raises:
        InvalidInputError: Neither or both of ``version`` and ``alias``, or a malformed alias.
        ServiceUnavailableError: The registry is unreachable.
    """
    with _service(cfg):
        mv = _get(client(cfg), cfg, version, alias)
        return None if mv is None else _as_version(mv)


def _previous_tag(alias: str) -> str:
    return f"aitasks.previous_{alias}"


def _demoted_tag(alias: str) -> str:
    return f"aitasks.demoted_{alias}"


def _move_alias(c: MlflowClient, cfg: RegistryConfig, alias: str, version: int) -> bool:
    name = cfg.model_name
    if _get(c, cfg, version, None) is None:
        raise InvalidInputError(_ALIAS_TASK, [FieldIssue("version", f"{name} has no version {version}")])
    current = c.get_registered_model(name).aliases.get(alias)
    if current is not None and int(current) == version:
        return False
    if current is not None:
        # Recorded before the move: a crash in between leaves a tag that the retry rewrites.
        c.set_model_version_tag(name, str(version), _previous_tag(alias), str(current))
    c.set_registered_model_alias(name, alias, str(version))
    return True


def set_alias(cfg: RegistryConfig, alias: str, version: int) -> None:
    """Point ``alias`` at ``version`` (a deliberate, human move: it also lifts an earlier rollback's ban).

    The previous holder is recorded as the version's tag ``aitasks.previous_<alias>``.

    Raises:
        InvalidInputError: A malformed alias or a version that does not exist.
    """
    _check_alias(alias)
    with _service(cfg):
        c = client(cfg)
        _move_alias(c, cfg, alias, version)
        mv = c.get_model_version(cfg.model_name, str(version))
        if _demoted_tag(alias) in (mv.tags or {}):
            c.delete_model_version_tag(cfg.model_name, str(version), _demoted_tag(alias))


def promote_if_blessed(cfg: RegistryConfig, version: int, *, blessed: bool, alias: str = "champion") -> bool:
    """Move ``alias`` to ``version`` only when the evaluation ``blessed`` it.

    The previous holder is recorded as the tag ``aitasks.previous_<alias>`` (``aitasks.previous_champion``)
    on ``version``, for :func:`rollback_alias`. A version that a rollback took the alias away from
    (tag ``aitasks.demoted_<alias>``) is not promoted again automatically; :func:`set_alias` can.

    Returns:
        Whether the alias moved: False when not blessed, demoted, or already pointing at ``version``.

    Raises:
        InvalidInputError: A malformed alias or a version that does not exist.
        ServiceUnavailableError: The registry is unreachable.
    """
    _check_alias(alias)
    if not blessed:
        return False
    with _service(cfg):
        c = client(cfg)
        mv = _get(c, cfg, version, None)
        if mv is not None and _demoted_tag(alias) in (mv.tags or {}):
            return False
        return _move_alias(c, cfg, alias, version)


def rollback_alias(cfg: RegistryConfig, alias: str = "champion") -> int:
    """Move ``alias`` back to the version it pointed at before its current holder; returns that version.

    The version losing the alias is tagged ``aitasks.demoted_<alias>`` so a re-run of the pipeline
    does not promote it again. Repeated rollbacks walk further back through the recorded history.

    Raises:
        InvalidInputError: The alias does not exist, or its holder records no (existing) previous version.
        ServiceUnavailableError: The registry is unreachable.
    """
    _check_alias(alias)
    name = cfg.model_name
    with _service(cfg):
        c = client(cfg)
        current = _get(c, cfg, None, alias)
        if current is None:
            raise InvalidInputError(_ALIAS_TASK, [FieldIssue("alias", f"{name} has no alias {alias!r}")])
        previous = (current.tags or {}).get(_previous_tag(alias))
        if not previous or _get(c, cfg, int(previous), None) is None:
            raise InvalidInputError(
                _ALIAS_TASK,
                [FieldIssue("alias", f"{alias} (v{current.version}) records no existing previous version")],
            )
        c.set_model_version_tag(name, str(current.version), _demoted_tag(alias), "true")
        c.set_registered_model_alias(name, alias, previous)
        return int(previous)


# ------------------------------------------------------------------------------------- download


def _verify(local: Path, expected_sha: str, where: str) -> None:
    """Check ``local`` against its ``checksums.json`` and that file against the version's tag."""
    files = sorted(p for p in local.rglob("*") if p.is_file() or p.is_symlink())
    for path in files:
        if path.is_symlink():
            raise DataFormatError(f"{where}/{path.relative_to(local).as_posix()}", "refusing a symbolic link")
        if _is_pickle(path.name):
            raise DataFormatError(f"{where}/{path.relative_to(local).as_posix()}", "refusing pickle-based file")
    listing_path = local / CHECKSUMS_FILE
    if not listing_path.is_file():
        raise DataFormatError(f"{where}/{CHECKSUMS_FILE}", "missing")
    if sha256_file(listing_path) != expected_sha:
        raise DataFormatError(f"{where}/{CHECKSUMS_FILE}", f"does not match the version's {CHECKSUMS_TAG} tag")
    try:
        expected = json.loads(listing_path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataFormatError(f"{where}/{CHECKSUMS_FILE}", "not valid JSON") from None
    present = {p.relative_to(local).as_posix() for p in files} - {CHECKSUMS_FILE}
    for rel, digest in sorted(expected.items()):
        path = local / rel
        if rel not in present:
            raise DataFormatError(f"{where}/{rel}", "listed in checksums.json but missing")
        if sha256_file(path) != digest:
            raise DataFormatError(f"{where}/{rel}", "sha256 does not match checksums.json")
    extra = sorted(present - set(expected))
    if extra:
        raise DataFormatError(f"{where}/{extra[0]}", "not listed in checksums.json")


def download_model(
    cfg: RegistryConfig, *, version: int | None = None, alias: str | None = None, dest: Path
) -> tuple[RegisteredVersion, Path]:
    """Download a version's ``model/`` files into ``dest/model`` and verify every file.

    Each file must match ``checksums.json``, which must match the version's ``aitasks.checksums_sha256``
    tag; pickle-based files and links are refused. A ``dest/model`` that already verifies is reused
    without a download (so ``dest`` can be a cache); a new copy is verified in a temporary directory
    under ``dest`` and then renamed into place, so a reader never sees a half-downloaded model.

    Args:
        cfg: The registry.
        version: Version number (exactly one of ``version`` and ``alias``).
        alias: Alias, e.g. ``champion``.
        dest: Local directory; created when missing.

    Returns:
        (the version, the local model directory ``dest/model``).

    Raises:
        InvalidInputError: No such version or alias (or neither / both given).
        DataFormatError: A missing, extra, altered or pickle-based file, or no checksums tag.
        ServiceUnavailableError: The registry or artifact store is unreachable.
    """
    mv = get_version(cfg, version=version, alias=alias)
    if mv is None:
        what = f"version {version}" if alias is None else f"alias {alias!r}"
        raise InvalidInputError(_ALIAS_TASK, [FieldIssue("version" if alias is None else "alias", f"no {what}")])
    where = f"{mv.name} v{mv.version}"
    expected_sha = mv.tags.get(CHECKSUMS_TAG)
    if not expected_sha:
        raise DataFormatError(where, f"has no {CHECKSUMS_TAG} tag: not registered by aitasks, refusing to load it")
    local = dest / ARTIFACT_DIR
    if local.is_dir():
        with contextlib.suppress(DataFormatError):
            _verify(local, expected_sha, where)
            return mv, local
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
    try:
        with _service(cfg):
            client(cfg).download_artifacts(mv.run_id, ARTIFACT_DIR, str(staging))
        _verify(staging / ARTIFACT_DIR, expected_sha, where)
        if local.exists():
            local.rename(staging / "stale")
        try:
            (staging / ARTIFACT_DIR).rename(local)
        except OSError:
            # A concurrent download won the rename: use its copy when it verifies.
            _verify(local, expected_sha, where)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return mv, local
