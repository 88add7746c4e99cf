"""Materialization: the latest feature row per entity into the online store, incrementally.

Each view continues from the end of its previous materialization. A view that was never
materialized starts at ``end - ttl`` (Feast's own ``materialize_incremental`` would start at
*wall-clock now* - ttl, which makes backfills depend on when they run). Feast's file offline store
reads the window ``[start, end]`` inclusive on both sides and writes the latest row per entity.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

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
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    online_store: str
    end: datetime
    views: list[ViewMaterialization]
    entities_written: int


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
    views: list[ViewMaterialization] = []
    for name in (USER_FEATURE_VIEW, TRACK_FEATURE_VIEW):
        try:
            with service_errors(cfg):
                fv = store.get_feature_view(name)
        except (FeatureViewNotFoundException, FileNotFoundError):  # no view, or no registry at all
            raise FatalError(
                f"feature view {name!r} is not registered in {cfg.project!r}: apply the repo first"
            ) from None
        previous = make_tzaware(fv.most_recent_end_time) if fv.most_recent_end_time else None
        window_start = start if start is not None else (previous or end - (fv.ttl or cfg.ttl))
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
        rows, entities = _window_counts(local, ENTITY_KEYS[name], window_start, end)
        with quiet(), service_errors(cfg):
            if start is None and previous is not None:
                store.materialize_incremental(end, feature_views=[name])
            else:
                store.materialize(window_start, end, feature_views=[name])
        views.append(
            ViewMaterialization(
                feature_view=name,
                start=window_start,
                end=end,
                rows_in_window=rows,
                entities_written=entities,
                skipped=False,
            )
        )
    return MaterializeReport(
        online_store=cfg.online_store.kind,
        end=end,
        views=views,
        entities_written=sum(v.entities_written for v in views),
    )
