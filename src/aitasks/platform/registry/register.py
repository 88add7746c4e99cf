"""Registering a model: a run with the model's files, then a model version, at most once per key.

A model is plain files (``model.safetensors`` + JSON) logged as run artifacts under ``model/``,
next to a ``model/checksums.json`` (sha256 per file). The model version's ``source`` is that
directory, and the version carries the sha256 of ``checksums.json`` as the tag
``aitasks.checksums_sha256`` (see :mod:`.download` for the check on the way back).

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
"""

from __future__ import annotations

import contextlib
import math
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

from aitasks.platform.registry.config import (
    TASK,
    RegisteredVersion,
    RegistryConfig,
    as_version,
    client,
    error_code,
    service,
)
from aitasks.runtime.errors import DataFormatError, FatalError, FieldIssue, InvalidInputError, ServiceUnavailableError
from aitasks.runtime.hashing import canonical_json, sha256_file, sha256_text

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param
    from mlflow.entities.model_registry import ModelVersion

__all__ = [
    "ARTIFACT_DIR",
    "CHECKSUMS_FILE",
    "CHECKSUMS_TAG",
    "KEY_TAG",
    "PICKLE_SUFFIXES",
    "is_pickle",
    "register_model",
]

KEY_TAG: Final = "aitasks.idempotency_key"
CHECKSUMS_TAG: Final = "aitasks.checksums_sha256"
ARTIFACT_DIR: Final = "model"
CHECKSUMS_FILE: Final = "checksums.json"
#: Suffixes of pickle-based formats (torch's .pt/.pth/.ckpt are zip files of pickles); never logged or served.
PICKLE_SUFFIXES: Final = frozenset({".pkl", ".pickle", ".pt", ".pth", ".joblib", ".ckpt", ".dill"})
_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
#: MLflow's rule for param, metric and tag keys (alphanumerics, ``_ - . / :`` and space), at most 250 chars.
_ENTITY_KEY = re.compile(r"[A-Za-z0-9_.\-/: ]{1,250}")
# MLflow's log_batch limits: 100 params, 1000 metrics, 1000 entities per call.
_MAX_PARAMS: Final = 100
_MAX_ENTITIES: Final = 1000
_MAX_TAG_VALUE: Final = 8000
#: A RUNNING run with our key older than this is a dead attempt, not a concurrent one.
_STALE_RUN_S: Final = 3600
_READY_TIMEOUT_S: Final = 300


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
        raise InvalidInputError(TASK, issues)


def is_pickle(name: str) -> bool:
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
        if is_pickle(rel):
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
            if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
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
    with service(cfg):
        c = client(cfg)
        existing = _find_by_key(c, name, idempotency_key)
        if existing:
            return as_version(c.get_model_version(name, existing[0].version))
        exp_id = _experiment_id(c, cfg)
        run_id = _reusable_run(c, exp_id, idempotency_key, checksums_sha) or _new_run(
            c, exp_id, model_dir, checksums_text, lineage, params, metrics, curves, run_name
        )
        try:
            c.create_registered_model(name, description="Registered by aitasks (safetensors + JSON, no pickle).")
        except Exception as exc:
            if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/{ARTIFACT_DIR}"
        mv = c.create_model_version(name, source, run_id=run_id, tags=lineage, await_creation_for=0)
        mv = _await_ready(c, mv)
        # Racing attempts that both got here agree on the lowest version with the key.
        winner = _find_by_key(c, name, idempotency_key)[0]
        if int(winner.version) != int(mv.version):
            with contextlib.suppress(Exception):
                c.delete_model_version(name, mv.version)
            return as_version(c.get_model_version(name, winner.version))
        return as_version(c.get_model_version(name, mv.version), created=True)
