"""Registering the repository: an idempotent apply that writes the registry only when something changed.

A dry run (``FeatureStore.plan``) computes what would change; when nothing would, the registry is
not written at all. Feast's file registry has no locking: run apply from one step at a time (the
pipeline does). A SQL registry writes each object in its own transaction, so concurrent applies are
safe; two first applies racing to create the same object collide on its key, and the loser plans
again (the winner's objects are then there) instead of failing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict

from aitasks.platform.feature_store.config import FeastConfig
from aitasks.platform.feature_store.repo import FeatureRepo, build_feature_repo
from aitasks.platform.feature_store.store import (
    local_offline,
    open_store,
    quiet,
    require_offline_files,
    service_errors,
)

__all__ = ["ApplyReport", "ObjectChange", "apply_repo"]


class ObjectChange(BaseModel):
    """One registry object that apply created or updated.

    Attributes:
        kind: Feast object type (``Entity``, ``FeatureView``, ...).
        name: Object name.
        transition: ``CREATE`` or ``UPDATE``.
        properties: Names of the properties that changed (for an update).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    name: str
    transition: str
    properties: list[str] = []


class ApplyReport(BaseModel):
    """What :func:`apply_repo` did.

    Attributes:
        project: Feast project.
        registry_path: The registry file.
        online_store: ``sqlite`` or ``redis``.
        objects: How many objects were applied.
        feature_views: Names of the feature views the repository defines.
        feature_services: Names of the feature services the repository defines.
        changes: Objects created or updated (empty when nothing changed).
        infra_changes: Online-store tables created, updated or deleted.
        unmanaged: Objects in the registry that this repository does not define (left alone).
        changed: Whether the registry or the infrastructure changed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str
    registry_path: str
    online_store: str
    objects: int
    feature_views: list[str]
    feature_services: list[str]
    changes: list[ObjectChange]
    infra_changes: list[str]
    unmanaged: list[str]
    changed: bool


#: A first apply that lost a race on a SQL registry plans again this often before giving up.
_APPLY_ATTEMPTS = 3


def apply_repo(cfg: FeastConfig, repo: FeatureRepo | None = None, *, offline: Path | None = None) -> ApplyReport:
    """Register the repository's objects and create their online tables; idempotent.

    A dry run (``FeatureStore.plan``) computes what would change; when nothing would, the registry
    is not written at all.

    Args:
        cfg: The configuration.
        repo: Objects from :func:`build_feature_repo` (built here when ``None``).
        offline: Local copies of the offline files (:func:`local_offline`); made here when ``None``.

    Returns:
        The report.

    Raises:
        ServiceUnavailableError: The SQL registry or the Redis online store is unreachable.
        DataFormatError: A feature Parquet file is missing or lacks a declared column.
    """
    if offline is None:
        with local_offline(cfg) as local:
            return apply_repo(cfg, repo, offline=local)
    repo = repo or build_feature_repo(cfg)
    require_offline_files(cfg, offline)
    for attempt in range(1, _APPLY_ATTEMPTS + 1):
        try:
            return _apply_once(cfg, repo, offline)
        except Exception as exc:
            if attempt == _APPLY_ATTEMPTS or not _lost_a_race(exc):
                raise
    raise AssertionError("unreachable")


#: SQLSTATEs of a concurrent first ``CREATE TABLE`` in PostgreSQL: duplicate_table, duplicate_object.
_CONCURRENT_CREATE: Final = frozenset({"42P07", "42710"})


def _lost_a_race(exc: BaseException) -> bool:
    """Another writer beat this one on the SQL registry: its insert of the same key, or its creation of the
    registry's tables (``CREATE TABLE IF NOT EXISTS`` is not atomic between two first applies in PostgreSQL:
    the loser gets ``DuplicateTable``, or a unique violation on ``pg_type``)."""
    if type(exc).__name__ not in ("IntegrityError", "ProgrammingError"):
        return False
    import sqlalchemy.exc

    if isinstance(exc, sqlalchemy.exc.IntegrityError):
        return True
    return isinstance(exc, sqlalchemy.exc.ProgrammingError) and (
        getattr(exc.orig, "sqlstate", None) in _CONCURRENT_CREATE
    )


def _apply_once(cfg: FeastConfig, repo: FeatureRepo, offline: Path) -> ApplyReport:
    from feast.diff.property_diff import TransitionType
    from feast.repo_contents import RepoContents

    store = open_store(cfg, offline=offline)
    contents = RepoContents(
        projects=[repo.project],
        data_sources=[repo.user_source, repo.track_source],
        feature_views=list(repo.feature_views),
        on_demand_feature_views=[],
        stream_feature_views=[],
        label_views=[],
        entities=[repo.user, repo.track],
        feature_services=[repo.training, repo.serving],
        permissions=[],
    )
    with quiet(), service_errors(cfg):
        registry_diff, infra_diff, new_infra = store.plan(contents)
    changes: list[ObjectChange] = []
    unmanaged: list[str] = []
    for diff in registry_diff.feast_object_diffs:
        kind = str(getattr(diff.feast_object_type, "value", diff.feast_object_type))
        if diff.transition_type == TransitionType.CREATE:
            changes.append(ObjectChange(kind=kind, name=diff.name, transition="CREATE"))
        elif diff.transition_type == TransitionType.UPDATE:
            props = [p.property_name for p in diff.feast_object_property_diffs if _really_differs(p)]
            if props:
                changes.append(ObjectChange(kind=kind, name=diff.name, transition="UPDATE", properties=props))
        elif diff.transition_type == TransitionType.DELETE and diff.name != "__dummy":
            unmanaged.append(f"{kind}:{diff.name}")
    infra_changes = [
        f"{d.transition_type.name}:{d.infra_object_type}:{d.name}"
        for d in infra_diff.infra_object_diffs
        if d.transition_type != TransitionType.UNCHANGED
    ]
    changed = bool(changes or infra_changes)
    if changed:
        with quiet(), service_errors(cfg):
            store.apply(repo.objects)
            # ``FeatureStore.apply`` creates the tables but, unlike ``feast apply``, does not record
            # them in the registry: without this the next plan would report them as new again.
            store.registry.update_infra(new_infra, cfg.project, commit=True)
    return ApplyReport(
        project=cfg.project,
        registry_path=cfg.resolved_registry_path(),
        online_store=cfg.online_store.kind,
        objects=len(repo.objects),
        feature_views=[v.name for v in repo.feature_views],
        feature_services=[repo.training.name, repo.serving.name],
        changes=changes,
        infra_changes=infra_changes,
        unmanaged=unmanaged,
        changed=changed,
    )


def _really_differs(prop: Any) -> bool:
    """Whether a property diff is more than bookkeeping.

    Feast 0.67 compares a feature view's embedded ``batch_source`` proto including its ``meta``
    (created / last-updated timestamps, set when the source object is first registered), so every
    fresh process sees an "update" of each view. Those timestamps say nothing about the definition.
    """
    existing, declared = prop.val_existing, prop.val_declared
    if hasattr(existing, "DESCRIPTOR") and hasattr(declared, "DESCRIPTOR") and type(existing) is type(declared):
        a, b = type(existing)(), type(declared)()
        a.CopyFrom(existing)
        b.CopyFrom(declared)
        if "meta" in a.DESCRIPTOR.fields_by_name:
            a.ClearField("meta")
            b.ClearField("meta")
        return bool(a != b)
    return bool(existing != declared)
