"""Online store completeness: one sentinel per materialization, written last, checked by readers and hits.

An online store that lost its data (Redis restarted without persistence, a new empty instance) or was
left half-written (a materialize killed part way) answers every read with ``None`` values, exactly as
for entities that have no features. Feast's registry still says the views were materialized, so an
incremental materialize skips them. The sentinel tells the two apart:

* :func:`~aitasks.platform.feature_store.materialize` writes it **last**, after every view, into the
  online store itself (Redis: the key ``aitasks:feast:<project>:materialized``; sqlite: the table
  ``aitasks_materialization`` of the online database), recording what it wrote: per view the window end
  the registry now holds, the entities and rows written, and whether it rewrote the store;
* a store that loses its data loses the sentinel with it (same server, same persistence; a Redis
  snapshot is point-in-time, so an older snapshot holds an older sentinel); a materialize that dies
  part way has not written it yet;
* materialize rewrites every view (window ``[end - ttl, end]``) when the sentinel is missing or records
  other view ends than the registry, and the ``feast.materialize`` task re-checks it on an idempotent
  hit (``verify``), so a lost or partial store is rewritten instead of reported as done;
* readers (:func:`~aitasks.platform.feature_store.online_features`) raise :class:`StoreNotReadyError`
  when it is missing: "store not ready" is an error, "no features for this id" stays ``None``.

Limits: keys evicted one by one (a ``maxmemory`` policy other than ``noeviction``) or deleted by hand
leave the sentinel in place; run the online Redis with ``noeviction``. Other writers of the same store
(``audio.feast_write``'s ``track_audio`` view) do not write a sentinel of their own.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from aitasks.platform.feature_store.config import FeastConfig, RedisOnline
from aitasks.platform.feature_store.store import redis_client, service_errors
from aitasks.runtime.errors import RetryableError

__all__ = [
    "SENTINEL_TABLE",
    "StoreNotReadyError",
    "clear_sentinel",
    "read_sentinel",
    "require_ready",
    "sentinel_key",
    "write_sentinel",
]

#: Table of the sqlite online store's sentinels (one row per project).
SENTINEL_TABLE: Final = "aitasks_materialization"
# Constant statements (the table name is a constant; values are bound parameters).
_CREATE: Final = "CREATE TABLE IF NOT EXISTS aitasks_materialization (project TEXT PRIMARY KEY, body TEXT NOT NULL)"
_SELECT: Final = "SELECT body FROM aitasks_materialization WHERE project = ?"
_DELETE: Final = "DELETE FROM aitasks_materialization WHERE project = ?"
_UPSERT: Final = (
    "INSERT INTO aitasks_materialization (project, body) VALUES (?, ?) "
    "ON CONFLICT(project) DO UPDATE SET body = excluded.body"
)
#: A reader trusts a positive readiness check for this long (one Redis ``GET`` saved per read).
READY_CACHE_S: Final = 2.0

_ready_lock = threading.Lock()
_ready_at: dict[tuple[str, str, str], float] = {}


class StoreNotReadyError(RetryableError):
    """The online store holds no complete materialization: lost, never materialized, or being rewritten.

    Retryable: a running or scheduled ``feast.materialize`` makes it ready again.
    """

    kind = "store_not_ready"


def sentinel_key(project: str) -> str:
    """The Redis key of ``project``'s sentinel (Feast's own keys are binary entity keys: no clash)."""
    return f"aitasks:feast:{project}:materialized"


def _where(cfg: FeastConfig) -> tuple[str, str, str]:
    store = cfg.online_store
    if isinstance(store, RedisOnline):
        return ("redis", store.connection_string, cfg.project)
    return ("sqlite", str(store.path.expanduser().absolute()), cfg.project)


def read_sentinel(cfg: FeastConfig) -> dict[str, Any] | None:
    """The last complete materialization's record in the online store, or ``None`` when there is none.

    Raises:
        ServiceUnavailableError: Redis is unreachable.
    """
    store = cfg.online_store
    if isinstance(store, RedisOnline):
        client = redis_client(store)
        try:
            with service_errors(cfg):
                raw: Any = client.get(sentinel_key(cfg.project))
        finally:
            client.close()
        return None if raw is None else _parse(raw)
    path = store.path.expanduser().absolute()
    if not path.is_file():
        return None
    with _sqlite(path) as conn:
        try:
            row = conn.execute(_SELECT, (cfg.project,)).fetchone()
        except sqlite3.OperationalError:  # no such table: never completed here
            return None
    return None if row is None else _parse(row[0])


@contextlib.contextmanager
def _sqlite(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to the sqlite online store, committed and closed on exit."""
    conn = sqlite3.connect(path, timeout=10)
    try:
        with conn:  # commits, or rolls back on error
            yield conn
    finally:
        conn.close()


def _parse(raw: bytes | str) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None  # unreadable: as good as missing
    return body if isinstance(body, dict) else None


def write_sentinel(cfg: FeastConfig, body: dict[str, Any]) -> None:
    """Record a complete materialization (call it after every view was written)."""
    data = json.dumps(body, sort_keys=True)
    store = cfg.online_store
    if isinstance(store, RedisOnline):
        client = redis_client(store)
        try:
            with service_errors(cfg):
                client.set(sentinel_key(cfg.project), data)
        finally:
            client.close()
    else:
        path = store.path.expanduser().absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        with _sqlite(path) as conn:
            conn.execute(_CREATE)
            conn.execute(_UPSERT, (cfg.project, data))
    _forget(cfg)


def clear_sentinel(cfg: FeastConfig) -> None:
    """Mark the store not ready (before a rewrite): readers then fail instead of reading a partial store."""
    store = cfg.online_store
    if isinstance(store, RedisOnline):
        client = redis_client(store)
        try:
            with service_errors(cfg):
                client.delete(sentinel_key(cfg.project))
        finally:
            client.close()
    else:
        path = store.path.expanduser().absolute()
        if path.is_file():
            with _sqlite(path) as conn, contextlib.suppress(sqlite3.OperationalError):  # no table: nothing to clear
                conn.execute(_DELETE, (cfg.project,))
    _forget(cfg)


def _forget(cfg: FeastConfig) -> None:
    with _ready_lock:
        _ready_at.pop(_where(cfg), None)


def require_ready(cfg: FeastConfig, *, cache_s: float = READY_CACHE_S) -> None:
    """Raise :class:`StoreNotReadyError` unless the online store holds a complete materialization.

    A positive answer is trusted for ``cache_s`` seconds in this process (0: check every time).

    Raises:
        StoreNotReadyError: No sentinel: the store lost its data, was never materialized, or a
            materialize is rewriting it.
        ServiceUnavailableError: Redis is unreachable.
    """
    where = _where(cfg)
    now = time.monotonic()
    with _ready_lock:
        if cache_s > 0 and now - _ready_at.get(where, -1e18) < cache_s:
            return
    if read_sentinel(cfg) is None:
        raise StoreNotReadyError(
            f"online store of project {cfg.project!r} ({where[0]}) holds no complete materialization "
            "(lost, never materialized, or being rewritten): run feast.materialize"
        )
    with _ready_lock:
        _ready_at[where] = now
