"""Reads: point-in-time correct training features (offline) and the latest features (online).

Rows are daily snapshots computed from events strictly before ``event_timestamp``, so Feast's
point-in-time join (the latest row with ``event_timestamp <= t`` and not older than the TTL) never
leaks the future into a training example labelled at ``t``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aitasks.platform.feature_store.completeness import READY_CACHE_S, require_ready
from aitasks.platform.feature_store.config import FeastConfig
from aitasks.platform.feature_store.schema import SERVING_SERVICE, TASK, TIMESTAMP_FIELD, TRAINING_SERVICE
from aitasks.platform.feature_store.store import local_offline, open_store, quiet, service_errors
from aitasks.runtime.errors import FieldIssue, InvalidInputError

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore

__all__ = ["historical_features", "online_features"]


def historical_features(
    cfg: FeastConfig,
    entity_df: pd.DataFrame,
    feature_service: str = TRAINING_SERVICE,
    *,
    store: FeatureStore | None = None,
    partial: bool = False,
) -> pd.DataFrame:
    """Point-in-time correct features for each entity row (Feast ``get_historical_features``).

    Each row gets, per view, the snapshot with the largest ``event_timestamp <= row time`` that is
    not older than the TTL; nothing later, ever. Every input row comes back, in the order of
    ``entity_df``, with nulls where a view has no valid snapshot (integer features are then floats).

    Feast 0.67's file (dask) offline store drops an entity row outright when the entity has
    snapshots but none in ``[t - ttl, t]`` (a user whose first snapshot is later than the label
    time, for instance), and it does so across views: a missing track snapshot would also erase
    the user's features. So each view is joined on its own and the results are attached by row.

    Args:
        cfg: The configuration.
        entity_df: ``event_timestamp`` (timezone-aware) plus the join keys the service needs
            (``user_id``, ``track_id``); other columns (labels) pass through.
        feature_service: Feature service name.
        store: An open store to reuse, opened with ``offline=`` local copies of the files
            (:func:`open_store`, :func:`local_offline`); without one, the files are put in a temp
            directory for this call.
        partial: Only the service's views whose join keys ``entity_df`` has (users alone, tracks
            alone); otherwise a missing join key is an error.

    Returns:
        ``entity_df``'s columns (index reset) plus one column per feature of the service.

    Raises:
        InvalidInputError: ``entity_df`` lacks ``event_timestamp`` or a join key, has naive times,
            or has a column named like a feature.
    """
    import pandas as pd

    if store is None:
        with local_offline(cfg) as local:
            opened = open_store(cfg, check=False, offline=local)
            return historical_features(cfg, entity_df, feature_service, store=opened, partial=partial)
    issues: list[FieldIssue] = []
    if TIMESTAMP_FIELD not in entity_df.columns:
        issues.append(FieldIssue(f"entity_df.{TIMESTAMP_FIELD}", "missing column"))
    elif not isinstance(entity_df[TIMESTAMP_FIELD].dtype, pd.DatetimeTZDtype):
        issues.append(FieldIssue(f"entity_df.{TIMESTAMP_FIELD}", "must be a timezone-aware datetime column"))
    with service_errors(cfg):
        service = store.get_feature_service(feature_service)
        parts = _service_parts(store, service)
    if partial:
        parts = [p for p in parts if set(p[0]) <= set(entity_df.columns)] or parts
    needed = {k for keys, _, _ in parts for k in keys}
    issues += [FieldIssue(f"entity_df.{k}", "missing join key column") for k in sorted(needed - set(entity_df.columns))]
    clashes = sorted({f for _, _, names in parts for f in names} & set(entity_df.columns))
    issues += [FieldIssue(f"entity_df.{c}", "has the name of a feature") for c in clashes]
    if issues:
        raise InvalidInputError(TASK, issues)

    order = "__aitasks_row__"
    out = entity_df.reset_index(drop=True)
    for keys, view, names in parts:
        part = out[[*keys, TIMESTAMP_FIELD]].assign(**{order: range(len(out))})
        with quiet(), service_errors(cfg):
            got = store.get_historical_features(entity_df=part, features=[f"{view}:{n}" for n in names]).to_df()
        if not got[order].is_unique:
            raise RuntimeError(f"Feast returned several rows for one entity row of view {view!r}")
        out = out.join(got.set_index(order)[names])
    return out


def _service_parts(store: FeatureStore, service: Any) -> list[tuple[list[str], str, list[str]]]:
    """``(join keys, view name to use, feature names)`` for each projection of ``service``."""
    parts = []
    for proj in service.feature_view_projections:
        view = store.get_feature_view(proj.name)
        keys = [proj.join_key_map.get(c.name, c.name) for c in view.entity_columns]
        parts.append((keys, proj.name_to_use(), [f.name for f in proj.features]))
    return parts


def online_features(
    cfg: FeastConfig,
    *,
    user_ids: Sequence[str] = (),
    track_ids: Sequence[str] = (),
    feature_service: str = SERVING_SERVICE,
    store: FeatureStore | None = None,
    ready_cache_s: float = READY_CACHE_S,
) -> dict[str, list[Any]]:
    """Latest materialized features for users and/or tracks (Feast ``get_online_features``).

    Rows pair ``user_ids`` and ``track_ids`` position by position; a single user is broadcast over
    every track (one user, many candidates). When only one kind of id is given, only the service's
    features of that entity are read. Unknown ids get ``None`` values, but only from a store that holds
    a complete materialization (its sentinel, :mod:`.completeness`): an empty or half-written store
    raises :class:`~aitasks.platform.feature_store.completeness.StoreNotReadyError` instead.

    Args:
        cfg: The configuration.
        user_ids: User ids.
        track_ids: Track ids.
        feature_service: Feature service name.
        store: An open store to reuse (:func:`open_store`); opened (and checked) per call otherwise.
        ready_cache_s: How long a positive readiness check is trusted in this process (0: every call).

    Returns:
        Column name -> list of values, the join keys first.

    Raises:
        InvalidInputError: No ids, or lists of lengths that cannot be paired.
        StoreNotReadyError: The online store holds no complete materialization (retryable).
        ServiceUnavailableError: The Redis online store is unreachable.
    """
    users, tracks = list(user_ids), list(track_ids)
    if not users and not tracks:
        raise InvalidInputError(TASK, [FieldIssue("user_ids", "give user_ids and/or track_ids")])
    if users and tracks and len(users) != len(tracks):
        if len(users) != 1:
            raise InvalidInputError(TASK, [FieldIssue("user_ids", "must have one id or as many ids as track_ids")])
        users = users * len(tracks)
    rows: list[dict[str, Any]] = []
    for i in range(max(len(users), len(tracks))):
        row: dict[str, Any] = {}
        if users:
            row["user_id"] = users[i]
        if tracks:
            row["track_id"] = tracks[i]
        rows.append(row)
    store = store or open_store(cfg)
    require_ready(cfg, cache_s=ready_cache_s)
    service = store.get_feature_service(feature_service)
    keys = set(rows[0])
    parts = _service_parts(store, service)
    wanted = [(view, name) for view_keys, view, names in parts if set(view_keys) <= keys for name in names]
    if not wanted:
        raise InvalidInputError(
            TASK, [FieldIssue("feature_service", f"{feature_service!r} has no feature for the given ids")]
        )
    # The whole service when every join key is there, else only the features of the given entities.
    whole = all(set(view_keys) <= keys for view_keys, _, _ in parts)
    features: Any = service if whole else [f"{v}:{f}" for v, f in wanted]
    with service_errors(cfg):
        raw: dict[str, list[Any]] = store.get_online_features(features=features, entity_rows=rows).to_dict()
    # Feast returns the columns in no particular order: join keys first, then the service's order.
    order = [*rows[0], *(f for _, f in wanted)]
    return {**{k: raw[k] for k in order if k in raw}, **raw}
