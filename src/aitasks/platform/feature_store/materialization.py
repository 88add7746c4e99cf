"""Materialization: the latest feature row per entity into the online store, incrementally.

Each view continues from the end of its previous materialization. A view that was never
materialized starts at ``end - ttl`` (Feast's own ``materialize_incremental`` would start at
*wall-clock now* - ttl, which makes backfills depend on when they run). Feast's file offline store
reads the window ``[start, end]`` inclusive on both sides and writes the latest row per entity.

Completeness (:mod:`.completeness`): after every view, a sentinel recording what this call wrote is
written last into the online store. When the store has no sentinel, or one whose view ends differ from
the registry's (a lost store, a restart without data, a materialize killed part way), the registry's
"already materialized" is not believed: the sentinel is cleared (readers see "not ready") and every view
is rewritten over ``[end - ttl, end]`` (``end`` at least the registry's).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from aitasks.platform.feature_store.completeness import clear_sentinel, read_sentinel, write_sentinel
from aitasks.platform.feature_store.config import OFFLINE_DIR, FeastConfig
from aitasks.platform.feature_store.schema import (
    ENTITY_KEYS,
    TASK,
    TIMESTAMP_FIELD,
    TRACK_FEATURE_VIEW,
    TRACK_FILE,
    USER_FEATURE_VIEW,
    USER_FILE,
)
from aitasks.platform.feature_store.store import (
    local_offline,
    open_store,
    quiet,
    require_offline_files,
    service_errors,
)
from aitasks.runtime.errors import FatalError, FieldIssue, InvalidInputError

__all__ = ["MaterializeReport", "ViewMaterialization", "materialize"]


class ViewMaterialization(BaseModel):
    """One feature view's part of a materialization.

    Attributes:
        feature_view: The view.
        start: Window start (inclusive); ``None`` when skipped.
        end: Window end (inclusive).
        rows_in_window: Offline rows whose ``event_timestamp`` lies in the window.
        entities_written: Distinct entities in the window: rows written to the online store.
        skipped: ``True`` when the view was already materialized up to ``end``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    feature_view: str
    start: datetime | None
    end: datetime
    rows_in_window: int
    entities_written: int
    skipped: bool


class MaterializeReport(BaseModel):
    """What :func:`materialize` did.

    Attributes:
        online_store: ``sqlite`` or ``redis``.
        end: The requested end.
        views: One entry per feature view.
        entities_written: Sum over views.
        rewritten: Every view was rewritten because the online store did not hold what the registry says.
        rewrite_reason: Why (empty when not rewritten).
        sentinel: The completeness record written last into the online store.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    online_store: str
    end: datetime
    views: list[ViewMaterialization]
    entities_written: int
    rewritten: bool = False
    rewrite_reason: str = ""
    sentinel: dict[str, Any] = {}


def _aware(name: str, value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError(TASK, [FieldIssue(name, "must be timezone-aware (UTC)")])
    return value


def _window_counts(path: Path, key: str, start: datetime, end: datetime) -> tuple[int, int]:
    """Rows and distinct entities with ``start <= event_timestamp <= end`` (Feast's window)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=[key, TIMESTAMP_FIELD])
    ts = table.column(TIMESTAMP_FIELD)
    mask = pc.and_(pc.greater_equal(ts, start), pc.less_equal(ts, end))
    window = table.filter(mask)
    return window.num_rows, len(pc.unique(window.column(key)))


@contextmanager
def _offline(cfg: FeastConfig, given: Path | None) -> Iterator[Path]:
    if given is not None:
        yield given
        return
    with local_offline(cfg) as local:
        yield local


def materialize(
    cfg: FeastConfig, end: datetime, *, start: datetime | None = None, offline: Path | None = None
) -> MaterializeReport:
    """Copy the latest feature row per entity into the online store, incrementally.

    Without ``start``, each view continues from the end of its previous materialization
    (``materialize_incremental``), or from ``end - ttl`` the first time. A view already
    materialized up to ``end`` is skipped, so a repeated call writes nothing. With ``start``, the
    window ``[start, end]`` is (re)written whatever was done before.

    Args:
        cfg: The configuration (the repository must have been applied).
        end: Window end, timezone-aware.
        start: Window start, timezone-aware; ``None`` for incremental.
        offline: Local copies of the offline files (:func:`local_offline`); made here when ``None``
            (a ``gs://`` file is downloaded: Feast's file offline store reads local files only).

    Returns:
        The report.

    Raises:
        InvalidInputError: A naive datetime, or ``start`` after ``end``.
        ServiceUnavailableError: The SQL registry or the Redis online store is unreachable.
        DataFormatError: A feature Parquet file is missing or lacks a declared column.
        FatalError: The repository was never applied.
    """
    _aware("end", end)
    if start is not None and _aware("start", start) > end:
        raise InvalidInputError(TASK, [FieldIssue("start", "must not be after 'end'")])
    with _offline(cfg, offline) as local:
        return _materialize(cfg, end, start, local)


def _materialize(cfg: FeastConfig, end: datetime, start: datetime | None, offline: Path) -> MaterializeReport:
    from feast.errors import FeatureViewNotFoundException
    from feast.utils import make_tzaware

    require_offline_files(cfg, offline)
    store = open_store(cfg, offline=offline)
    fvs: dict[str, Any] = {}
    ends: dict[str, datetime | None] = {}
    for name in (USER_FEATURE_VIEW, TRACK_FEATURE_VIEW):
        try:
            with service_errors(cfg):
                fvs[name] = store.get_feature_view(name)
        except (FeatureViewNotFoundException, FileNotFoundError):  # no view, or no registry at all
            raise FatalError(
                f"feature view {name!r} is not registered in {cfg.project!r}: apply the repo first"
            ) from None
        recorded = fvs[name].most_recent_end_time
        ends[name] = make_tzaware(recorded) if recorded else None
    reason = _rewrite_reason(read_sentinel(cfg), ends) if start is None else ""
    if reason:
        # Readers see "not ready" from here until the sentinel is written again.
        clear_sentinel(cfg)
    views: list[ViewMaterialization] = []
    for name in (USER_FEATURE_VIEW, TRACK_FEATURE_VIEW):
        fv = fvs[name]
        previous = ends[name]
        view_end = end
        if reason:
            # The registry's end is not in the store: rebuild everything up to it, the latest rows first.
            view_end = max(end, previous) if previous is not None else end
            previous = None
        window_start = start if start is not None else (previous or view_end - (fv.ttl or cfg.ttl))
        if start is None and previous is not None and previous >= end:
            views.append(
                ViewMaterialization(
                    feature_view=name,
                    start=None,
                    end=end,
                    rows_in_window=0,
                    entities_written=0,
                    skipped=True,
                )
            )
            continue
        local = offline / OFFLINE_DIR / {USER_FEATURE_VIEW: USER_FILE, TRACK_FEATURE_VIEW: TRACK_FILE}[name]
        rows, entities = _window_counts(local, ENTITY_KEYS[name], window_start, view_end)
        with quiet(), service_errors(cfg):
            if start is None and previous is not None:
                store.materialize_incremental(view_end, feature_views=[name])
            else:
                store.materialize(window_start, view_end, feature_views=[name])
        views.append(
            ViewMaterialization(
                feature_view=name,
                start=window_start,
                end=view_end,
                rows_in_window=rows,
                entities_written=entities,
                skipped=False,
            )
        )
    # The registry's ends after this call (Feast keeps the latest end of every materialized interval).
    after: dict[str, float | None] = {}
    for v in views:
        known = [e for e in (ends[v.feature_view], None if v.skipped else v.end) if e is not None]
        after[v.feature_view] = max(known).timestamp() if known else None
    sentinel = {
        "project": cfg.project,
        "materialization_id": uuid.uuid4().hex,
        "end_epoch": end.timestamp(),
        "views": {
            v.feature_view: {
                "end_epoch": after[v.feature_view],
                "entities_written": v.entities_written,
                "rows_in_window": v.rows_in_window,
                "skipped": v.skipped,
            }
            for v in views
        },
        "entities_written": sum(v.entities_written for v in views),
        "rewritten": bool(reason),
        "written_at": time.time(),
    }
    write_sentinel(cfg, sentinel)  # last: the store is complete up to these ends
    return MaterializeReport(
        online_store=cfg.online_store.kind,
        end=end,
        views=views,
        entities_written=sum(v.entities_written for v in views),
        rewritten=bool(reason),
        rewrite_reason=reason,
        sentinel=sentinel,
    )


def _rewrite_reason(sentinel: dict[str, Any] | None, ends: dict[str, datetime | None]) -> str:
    """Why the online store cannot be trusted to hold what the registry says (empty: it can).

    Nothing materialized yet (no registry end) needs no rewrite: the first materialization writes all.
    """
    if all(e is None for e in ends.values()):
        return ""
    if sentinel is None:
        return "the online store has no completeness sentinel (data lost, or a materialize died part way)"
    recorded = sentinel.get("views")
    for name, end in ends.items():
        mine = recorded.get(name) if isinstance(recorded, dict) else None
        at = mine.get("end_epoch") if isinstance(mine, dict) else None
        want = None if end is None else end.timestamp()
        if (at is None) != (want is None) or (at is not None and want is not None and abs(float(at) - want) > 1e-3):
            return (
                f"the online store's sentinel records view {name!r} up to {at}, the registry up to {want} "
                "(a materialize died part way, or the store was restored from an older state)"
            )
    return ""
