"""The MLflow model registry, without pickle.

Models are plain files (safetensors weights + JSON) logged as run artifacts under ``model/`` with a
``checksums.json``; a model version's ``source`` points at that directory. Nothing here calls an
MLflow flavor's ``log_model``/``load_model`` (they pickle), and the registry module turns MLflow's
pickle deserialisation off for the process before any client is made.

Idempotency: a version carries the tag ``aitasks.idempotency_key``; registering with a key that a
version already has returns that version. A crash between creating the run and creating the version
leaves a run tagged with the key but no version: the next attempt finds that run, and when it is
complete (artifacts with checksums) makes the version from it instead of a second run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field

from aitasks.runtime.errors import DataFormatError, FieldIssue, InvalidInputError, ServiceUnavailableError
from aitasks.runtime.hashing import sha256_file

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from aitasks.runtime.settings import Settings

_TASK: Final = "model.register"
KEY_TAG: Final = "aitasks.idempotency_key"
PREVIOUS_TAG: Final = "aitasks.previous_champion"
CHECKSUMS: Final = "checksums.json"
ARTIFACT_DIR: Final = "model"
#: File suffixes of pickle-based formats; a model directory holding one is refused.
PICKLE_SUFFIXES: Final = (".pkl", ".pickle", ".pt", ".pth", ".joblib", ".ckpt")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_BATCH: Final = 900  # MLflow accepts at most 1000 metrics per log_batch


class RegistryConfig(BaseModel):
    """Where the registry is and which model it manages."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tracking_uri: str = Field(min_length=1)
    registry_uri: str | None = None
    artifact_location: str | None = None
    model_name: str = "reco-two-tower"
    experiment: str = "reco-training"


class RegisteredVersion(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: int
    run_id: str
    source: str
    tags: dict[str, str]
    aliases: list[str]
    created: bool = False


def redact_uri(uri: str) -> str:
    """``uri`` without the password of its user info (for messages and logs)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def registry_config(settings: Settings, *, model_name: str = "reco-two-tower") -> RegistryConfig:
    """``AITASKS_MLFLOW_TRACKING_URI`` when set, else the embedded sqlite registry under the storage root.

    Raises:
        InvalidInputError: A bad model name, or a ``gs://`` storage root without a tracking URI
            (pods share no local sqlite file).
    """
    from aitasks.runtime.storage import is_gcs

    if not _NAME.match(model_name):
        raise InvalidInputError(_TASK, [FieldIssue("model_name", "must be 1-128 letters, digits, '.', '_' or '-'")])
    if settings.mlflow_tracking_uri:
        return RegistryConfig(tracking_uri=settings.mlflow_tracking_uri, model_name=model_name)
    if is_gcs(settings.storage_root):
        raise InvalidInputError(
            _TASK,
            [FieldIssue("mlflow_tracking_uri", "set AITASKS_MLFLOW_TRACKING_URI: a gs:// storage root has no sqlite")],
        )
    root = Path(settings.storage_root).expanduser().absolute() / "mlflow"
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    return RegistryConfig(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_location=(root / "artifacts").as_uri(),
        model_name=model_name,
    )


def _disable_pickle() -> None:
    # MLflow 3.17 still unpickles flavors' models by default; nothing of ours needs it (FIELD_NOTES).
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"


@contextlib.contextmanager
def _service(cfg: RegistryConfig) -> Iterator[None]:
    """Unreachable tracking servers and databases become retryable errors naming the (redacted) URI."""
    try:
        yield
    except (DataFormatError, InvalidInputError):
        raise
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        transient = (
            isinstance(exc, ConnectionError | TimeoutError)
            or type(exc).__name__ in {"OperationalError", "ConnectionError", "ConnectTimeout", "ReadTimeout"}
            or any(s in text for s in ("Max retries exceeded", "Connection refused", "API request to", "503", "502"))
        )
        if transient:
            raise ServiceUnavailableError(
                f"MLflow registry at {redact_uri(cfg.tracking_uri)} is unreachable: {type(exc).__name__}"
            ) from None
        raise


def client(cfg: RegistryConfig) -> MlflowClient:
    """A client bound to ``cfg`` (no process-wide tracking URI is set)."""
    _disable_pickle()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.registry_uri or cfg.tracking_uri)


def _as_version(mv: Any, *, created: bool = False) -> RegisteredVersion:
    return RegisteredVersion(
        name=mv.name,
        version=int(mv.version),
        run_id=mv.run_id or "",
        source=mv.source or "",
        tags={str(k): str(v) for k, v in (mv.tags or {}).items()},
        aliases=sorted(getattr(mv, "aliases", None) or []),
        created=created,
    )


def _find_by_key(c: MlflowClient, name: str, key: str) -> Any | None:
    found = c.search_model_versions(f"name = '{name}' and tags.`{KEY_TAG}` = '{key}'")
    return min(found, key=lambda mv: int(mv.version)) if found else None


def _checksums(model_dir: Path) -> dict[str, str]:
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    bad = [p.name for p in files if p.name.lower().endswith(PICKLE_SUFFIXES)]
    if bad:
        raise DataFormatError(str(model_dir), f"refusing pickle-based file(s): {', '.join(bad)}")
    if not files:
        raise DataFormatError(str(model_dir), "model directory holds no files")
    return {p.relative_to(model_dir).as_posix(): sha256_file(p) for p in files}


def _experiment_id(c: MlflowClient, cfg: RegistryConfig) -> str:
    exp = c.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return str(exp.experiment_id)
    try:
        return str(c.create_experiment(cfg.experiment, artifact_location=cfg.artifact_location))
    except Exception:  # a racing creator won: use theirs
        exp = c.get_experiment_by_name(cfg.experiment)
        if exp is None:
            raise
        return str(exp.experiment_id)


def _log(
    c: MlflowClient,
    run_id: str,
    params: Mapping[str, str | int | float],
    metrics: Mapping[str, float],
    curves: Mapping[str, list[float]],
) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    ms = [Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())]
    ms += [Metric(k, float(v), now, step) for k, values in sorted(curves.items()) for step, v in enumerate(values)]
    ps = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, max(len(ms), 1), _BATCH):
        c.log_batch(run_id, metrics=ms[i : i + _BATCH], params=ps if i == 0 else [], synchronous=True)


def register_model(
    cfg: RegistryConfig,
    model_dir: Path,
    *,
    idempotency_key: str,
    tags: Mapping[str, str],
    params: Mapping[str, str | int | float],
    metrics: Mapping[str, float],
    curves: Mapping[str, list[float]] | None = None,
    run_name: str | None = None,
) -> RegisteredVersion:
    """Log a run with the model's files and create a model version; the same key never makes two.

    Raises:
        DataFormatError: The directory is empty or holds a pickle-based file.
        ServiceUnavailableError: The tracking server or database is unreachable (retryable).
    """
    import tempfile

    from mlflow.exceptions import MlflowException

    checksums = _checksums(model_dir)
    with _service(cfg):
        c = client(cfg)
        existing = _find_by_key(c, cfg.model_name, idempotency_key)
        if existing is not None:
            return _as_version(c.get_model_version(cfg.model_name, existing.version))
        exp_id = _experiment_id(c, cfg)
        # A run from an attempt that crashed before creating the version: reuse it when complete.
        runs = c.search_runs([exp_id], filter_string=f"tags.`{KEY_TAG}` = '{idempotency_key}'", max_results=5)
        run_id = next((r.info.run_id for r in runs if r.info.status == "FINISHED"), None)
        if run_id is None:
            run = c.create_run(exp_id, tags={KEY_TAG: idempotency_key, **tags}, run_name=run_name)
            run_id = run.info.run_id
            _log(c, run_id, params, metrics, curves or {})
            with tempfile.TemporaryDirectory(prefix="aitasks-mlflow-") as tmp:
                (Path(tmp) / CHECKSUMS).write_text(json.dumps(checksums, indent=2, sort_keys=True), "utf-8")
                c.log_artifacts(run_id, str(model_dir), ARTIFACT_DIR)
                c.log_artifact(run_id, str(Path(tmp) / CHECKSUMS), ARTIFACT_DIR)
            c.set_terminated(run_id, "FINISHED")
        try:
            c.create_registered_model(cfg.model_name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code) and "already exists" not in str(exc):
                raise
        source = f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/{ARTIFACT_DIR}"
        mv = c.create_model_version(
            cfg.model_name, source, run_id=run_id, tags={KEY_TAG: idempotency_key, **tags}, await_creation_for=60
        )
        # Two racing registrations can both create: the lowest version with the key is the one.
        winner = _find_by_key(c, cfg.model_name, idempotency_key)
        chosen = winner if winner is not None else mv
        return _as_version(c.get_model_version(cfg.model_name, chosen.version), created=chosen.version == mv.version)


def get_version(
    cfg: RegistryConfig, *, version: int | None = None, alias: str | None = None
) -> RegisteredVersion | None:
    """A version by number or alias; ``None`` when the model, version or alias does not exist."""
    from mlflow.exceptions import MlflowException

    if (version is None) == (alias is None):
        raise InvalidInputError(_TASK, [FieldIssue("version", "give exactly one of version and alias")])
    with _service(cfg):
        c = client(cfg)
        try:
            mv = (
                c.get_model_version_by_alias(cfg.model_name, alias)
                if alias is not None
                else c.get_model_version(cfg.model_name, str(version))
            )
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or "not found" in str(exc):
                return None
            raise
        return _as_version(mv)


def set_alias(cfg: RegistryConfig, alias: str, version: int) -> None:
    with _service(cfg):
        client(cfg).set_registered_model_alias(cfg.model_name, alias, str(version))


def promote_if_blessed(cfg: RegistryConfig, version: int, *, blessed: bool, alias: str = "champion") -> bool:
    """Point ``alias`` at ``version`` when ``blessed``; record the previous holder on the version.

    Returns:
        Whether the alias moved (False when not blessed or already there).
    """
    if not blessed:
        return False
    current = get_version(cfg, alias=alias)
    if current is not None and current.version == version:
        return False
    if get_version(cfg, version=version) is None:
        raise InvalidInputError(_TASK, [FieldIssue("version", f"{cfg.model_name} has no version {version}")])
    with _service(cfg):
        c = client(cfg)
        if current is not None:
            c.set_model_version_tag(cfg.model_name, str(version), PREVIOUS_TAG, str(current.version))
        c.set_registered_model_alias(cfg.model_name, alias, str(version))
    return True


def rollback_alias(cfg: RegistryConfig, alias: str = "champion") -> int:
    """Move ``alias`` back to the version recorded as its previous holder; returns that version."""
    current = get_version(cfg, alias=alias)
    if current is None:
        raise InvalidInputError(_TASK, [FieldIssue("alias", f"{cfg.model_name} has no alias {alias!r}")])
    previous = current.tags.get(PREVIOUS_TAG)
    if not previous:
        raise InvalidInputError(
            _TASK, [FieldIssue("alias", f"{alias} (v{current.version}) records no previous version to roll back to")]
        )
    set_alias(cfg, alias, int(previous))
    return int(previous)


def download_model(
    cfg: RegistryConfig, *, version: int | None = None, alias: str | None = None, dest: Path
) -> tuple[RegisteredVersion, Path]:
    """The version's model files in ``dest/model``, every file checked against ``checksums.json``.

    A ``dest`` that already holds a verified copy is reused (serving caches models this way).

    Raises:
        DataFormatError: Unknown version or alias, a missing or tampered file, or a pickle-based file.
    """
    mv = get_version(cfg, version=version, alias=alias)
    if mv is None:
        raise DataFormatError(cfg.model_name, f"no model version {version if alias is None else alias!r}")
    local = dest / ARTIFACT_DIR
    if not _verified(local):
        import shutil

        shutil.rmtree(local, ignore_errors=True)
        with _service(cfg):
            client(cfg).download_artifacts(mv.run_id, ARTIFACT_DIR, str(dest))
    _verify(local, mv)
    return mv, local


def _verified(local: Path) -> bool:
    try:
        _verify(local, None)
    except DataFormatError:
        return False
    return True


def _verify(local: Path, mv: RegisteredVersion | None) -> None:
    where = f"{mv.name} v{mv.version}" if mv is not None else str(local)
    path = local / CHECKSUMS
    if not path.is_file():
        raise DataFormatError(where, f"{CHECKSUMS} is missing")
    try:
        expected = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataFormatError(where, f"{CHECKSUMS} is not JSON") from None
    present = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file() and p.name != CHECKSUMS}
    bad = sorted(n for n in present if n.lower().endswith(PICKLE_SUFFIXES))
    if bad:
        raise DataFormatError(where, f"refusing pickle-based file(s): {', '.join(bad)}")
    for name, digest in sorted(expected.items()):
        p = local / name
        if not p.is_file():
            raise DataFormatError(where, f"model file {name} is missing")
        if sha256_file(p) != digest:
            raise DataFormatError(where, f"model file {name} does not match its sha256")
    extra = sorted(present - set(expected))
    if extra:
        raise DataFormatError(where, f"unexpected file(s) not in {CHECKSUMS}: {', '.join(extra)}")
