"""Redis layout of real-time serving, and the online feature reader that needs no Feast SDK.

Feast's own keys (``user_features`` / ``track_features`` rows, :mod:`.feast_codec`) are shared with
``feast.materialize`` and Feast readers. The updater's own keys live under one prefix (default
``aitasks:rt:<project>:``):

==============================  ============================================================
``state:<user>``                hash ``v`` (version, bumped per commit), ``s`` (daily buckets JSON)
``hist:<user>``                 sorted set: recently played track -> latest play (epoch s), bounded
``emb:<model>:v<N>:<user>``     ``<q ts_us`` + float32 vector of the user tower at that feature row
``seen:<event id>``             dedupe marker, with a TTL (``dedupe_ttl_s``)
``dlq-seen:<stream id>``        dead-letter marker of a stream entry, with the same TTL
``items:<model>:v<N>``          hash track id -> float32 vector of a live-added track
``items-seq:<model>:v<N>``      counter bumped on every live-added track (the service polls it)
``tracks``                      set of live-added track ids (known to the contract check)
==============================  ============================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from aitasks.platform.feature_store.completeness import sentinel_key
from aitasks.platform.feature_store.schema import (
    TRACK_FEATURE_VIEW,
    TRACK_FEATURES,
    USER_FEATURE_VIEW,
    USER_FEATURES,
)
from aitasks.serving import feast_codec as fc

USER_DTYPES: Final[tuple[tuple[str, fc.Dtype], ...]] = tuple((n, t) for n, t in USER_FEATURES)  # type: ignore[misc]
TRACK_DTYPES: Final[tuple[tuple[str, fc.Dtype], ...]] = tuple((n, t) for n, t in TRACK_FEATURES)  # type: ignore[misc]


@dataclass(frozen=True)
class Keys:
    """Key names of one Feast project's real-time state (see the module docstring)."""

    project: str
    prefix: str = ""

    @property
    def base(self) -> str:
        return self.prefix or f"aitasks:rt:{self.project}:"

    def state(self, user: str) -> str:
        return f"{self.base}state:{user}"

    def hist(self, user: str) -> str:
        return f"{self.base}hist:{user}"

    def emb(self, model_key: str, user: str) -> str:
        return f"{self.base}emb:{model_key}:{user}"

    def seen(self, event_id: str) -> str:
        return f"{self.base}seen:{event_id}"

    def dlq_seen(self, stream_id: str) -> str:
        return f"{self.base}dlq-seen:{stream_id}"

    def items(self, model_key: str) -> str:
        return f"{self.base}items:{model_key}"

    def items_seq(self, model_key: str) -> str:
        return f"{self.base}items-seq:{model_key}"

    @property
    def tracks(self) -> str:
        return f"{self.base}tracks"

    def user_row(self, user: str) -> bytes:
        return fc.entity_key(self.project, "user_id", user)

    def track_row(self, track: str) -> bytes:
        return fc.entity_key(self.project, "track_id", track)

    @property
    def sentinel(self) -> str:
        return sentinel_key(self.project)


USER_FIELDS: Final = fc.read_fields(USER_FEATURE_VIEW, USER_DTYPES)
TRACK_GENRE_FIELD: Final = fc.field_key(TRACK_FEATURE_VIEW, "track_genre_id")


def decode_user_row(raw: Sequence[bytes | None]) -> tuple[int | None, dict[str, Any]] | None:
    """A user row from the reply to ``HMGET <user key> *USER_FIELDS`` (None: the user has no row)."""
    return fc.decode_row(USER_FEATURE_VIEW, USER_DTYPES, raw)


class OnlineReader:
    """Reads ``user_features`` rows from the Feast Redis online store, as Feast would, without Feast.

    Args:
        client: A redis-py client of the online store.
        keys: The project's key names.
    """

    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def ready(self) -> bool:
        """Whether the store holds a complete materialization (Feast's sentinel, see ``completeness``)."""
        return bool(self.client.exists(self.keys.sentinel))

    def users(self, user_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """The latest row of each user (None when absent), one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for u in user_ids:
            pipe.hmget(self.keys.user_row(u), USER_FIELDS)
        out: list[dict[str, Any] | None] = []
        for raw in pipe.execute():
            row = decode_user_row(raw)
            out.append(None if row is None else row[1])
        return out


def read_user_row(cfg: Any, user_id: str) -> dict[str, Any] | None:
    """The user's ``user_features`` row from the Feast online store of ``cfg`` (Redis or sqlite), no Feast SDK.

    Checks the store's completeness sentinel first, as Feast reads through
    :func:`~aitasks.platform.feature_store.online_features` do.

    Raises:
        StoreNotReadyError: The store holds no complete materialization.
        ServiceUnavailableError: Redis is unreachable.
    """
    import sqlite3

    from aitasks.platform.feature_store.completeness import require_ready
    from aitasks.platform.feature_store.config import RedisOnline
    from aitasks.platform.feature_store.store import redis_client, service_errors

    require_ready(cfg)
    store = cfg.online_store
    if isinstance(store, RedisOnline):
        client = redis_client(store)
        try:
            with service_errors(cfg):
                return OnlineReader(client, Keys(cfg.project)).users([user_id])[0]
        finally:
            client.close()
    path = store.path.expanduser().absolute()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        table = f"{cfg.project}_{USER_FEATURE_VIEW}".replace('"', '""')
        rows = conn.execute(
            f'SELECT feature_name, value FROM "{table}" WHERE entity_key = ?',  # noqa: S608 - quoted identifier
            (fc.serialized_entity_key("user_id", user_id),),
        ).fetchall()
    except sqlite3.OperationalError:  # no table: nothing materialized for this view
        return None
    finally:
        conn.close()
    if not rows:
        return None
    values = {name: fc.decode_value(raw) for name, raw in rows}
    return {name: values.get(name) for name, _ in USER_DTYPES}
