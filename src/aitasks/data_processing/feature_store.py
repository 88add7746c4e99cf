"""The Feast feature repository of the recommender: definitions, apply, materialize, retrieval.

Everything Feast needs is derived from one :class:`FeastConfig`:

* ``feature_store.yaml`` is rendered from it (for the ``feast`` CLI and for humans); this module
  itself builds the same configuration in memory, so a Redis password never has to be written to
  disk: the file holds ``${AITASKS_FEAST_REDIS_PASSWORD}`` instead, which Feast's loader expands
  from the environment (``os.path.expandvars``; an unset variable stays literally ``${...}``);
* the objects (entities ``user`` and ``track``, one ``FileSource`` per Parquet file written by
  :mod:`aitasks.data_processing.features`, the feature views ``user_features`` and
  ``track_features`` with an explicit typed schema, and the feature services ``reco_training`` and
  ``reco_serving``) are defined in code by :func:`build_feature_repo`, never discovered by
  scanning Python files as ``feast apply`` does.

Semantics worth knowing:

* Rows are daily snapshots computed from events strictly before ``event_timestamp``, so Feast's
  point-in-time join (the latest row with ``event_timestamp <= t`` and not older than the TTL)
  never leaks the future into a training example labelled at ``t``.
* :func:`materialize` is incremental: each view continues from the end of its previous
  materialization. A view that was never materialized starts at ``end - ttl`` (Feast's own
  ``materialize_incremental`` would start at *wall-clock now* - ttl, which makes backfills depend on
  when they run). Feast's file offline store reads the window ``[start, end]`` inclusive on both
  sides and writes the latest row per entity.
* :func:`historical_features` returns every entity row, in order, with nulls where a view has no
  valid snapshot (Feast's file offline store alone would drop such rows; see there).
* A Redis online store is checked with a short-timeout, no-retry ``PING`` before Feast touches it:
  an unreachable server is a retryable :class:`~aitasks.runtime.errors.ServiceUnavailableError`
  that names ``host:port``, never a raw redis traceback. Feast's own Redis client gets socket
  timeouts too (it keeps redis-py's default of 3 retries with backoff), so a server that dies
  mid-call fails the call in seconds instead of hanging the task.
* Feast's file registry has no locking: run apply from one step at a time (the pipeline does).

Importing this module is cheap: ``feast`` (≈ 5 s, it imports torch and dask) is imported only inside
the functions that need it. What Feast prints (materialization banners, progress bars) is captured
instead of reaching the task's output.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from aitasks.data_processing.contract import CONTRACT_VERSION, GENRES, genre_affinity_column
from aitasks.runtime.errors import (
    DataFormatError,
    FatalError,
    FieldIssue,
    InvalidInputError,
    ServiceUnavailableError,
)

if TYPE_CHECKING:
    import pandas as pd
    from feast import Entity, FeatureService, FeatureStore, FeatureView, FileSource, Project

    from aitasks.runtime.settings import Settings

__all__ = [
    "REDIS_PASSWORD_ENV",
    "SERVING_SERVICE",
    "SERVING_USER_FEATURES",
    "TRACK_FEATURES",
    "TRACK_FEATURE_VIEW",
    "TRAINING_SERVICE",
    "USER_FEATURES",
    "USER_FEATURE_VIEW",
    "ApplyReport",
    "FeastConfig",
    "FeatureRepo",
    "MaterializeReport",
    "ObjectChange",
    "RedisOnline",
    "SqliteOnline",
    "ViewMaterialization",
    "apply_repo",
    "build_feature_repo",
    "check_online_store",
    "config_for",
    "historical_features",
    "materialize",
    "online_features",
    "open_store",
]

#: Environment variable that ``feature_store.yaml`` references for the Redis password.
REDIS_PASSWORD_ENV: Final = "AITASKS_FEAST_REDIS_PASSWORD"  # noqa: S105 - a variable name, not a secret

USER_FEATURE_VIEW: Final = "user_features"
TRACK_FEATURE_VIEW: Final = "track_features"
USER_FILE: Final = "user_features.parquet"
TRACK_FILE: Final = "track_features.parquet"
TIMESTAMP_FIELD: Final = "event_timestamp"
CREATED_FIELD: Final = "created_timestamp"
TRAINING_SERVICE: Final = "reco_training"
SERVING_SERVICE: Final = "reco_serving"

#: Feature columns of ``user_features`` and their Feast dtype names (order = Parquet column order).
USER_FEATURES: Final[tuple[tuple[str, str], ...]] = (
    ("user_plays_7d", "Int64"),
    ("user_plays_28d", "Int64"),
    ("user_skip_rate_28d", "Float32"),
    ("user_active_days_28d", "Int64"),
    ("user_days_since_last_play", "Float32"),
    ("user_avg_ms_played_28d", "Float32"),
    *((genre_affinity_column(g), "Float32") for g in GENRES),
)

#: Feature columns of ``track_features`` and their Feast dtype names. The ``audio_*`` columns are
#: null placeholders until the audio family fills them.
TRACK_FEATURES: Final[tuple[tuple[str, str], ...]] = (
    ("track_plays_28d", "Int64"),
    ("track_listeners_28d", "Int64"),
    ("track_skip_rate_28d", "Float32"),
    ("track_popularity", "Float32"),
    ("track_genre_id", "Int64"),
    ("track_duration_ms", "Int64"),
    ("track_release_year", "Int64"),
    ("track_explicit", "Int64"),
    ("audio_tempo_bpm", "Float32"),
    ("audio_loudness_db", "Float32"),
    ("audio_spectral_centroid_hz", "Float32"),
)

#: User features the online model reads. Today that is every user feature: the serving service
#: must hold exactly what the model was trained on, or training and serving skew. Narrow it here
#: (and only here) when the model stops using some of them.
SERVING_USER_FEATURES: Final[tuple[str, ...]] = tuple(name for name, _ in USER_FEATURES)

_ENTITY_KEYS: Final[Mapping[str, str]] = {USER_FEATURE_VIEW: "user_id", TRACK_FEATURE_VIEW: "track_id"}
_PROJECT_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
_HOST_RE: Final = re.compile(r"^[A-Za-z0-9.-]+$")
#: Feast's Redis connection-string options this module understands (all are redis-py kwargs).
_REDIS_OPTIONS: Final = frozenset(
    {"db", "password", "username", "ssl", "socket_timeout", "socket_connect_timeout", "ssl_cert_reqs"}
)
_TASK: Final = "data.feature_store"


# ------------------------------------------------------------------------------------- config


class SqliteOnline(BaseModel):
    """The embedded online store: one sqlite file.

    Attributes:
        kind: Discriminator, always ``"sqlite"``.
        path: The sqlite database file (created by apply).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["sqlite"] = "sqlite"
    path: Path


class RedisOnline(BaseModel):
    """A Redis online store (production).

    ``connection_string`` takes Feast's format (``host:port,db=0,ssl=true,password=...``) or a URL
    (``redis://[user[:password]@]host:port/db``, ``rediss://`` for TLS); both are normalised to
    Feast's format **without** the password, which moves to :attr:`password`.

    Attributes:
        kind: Discriminator, always ``"redis"``.
        connection_string: Normalised Feast connection string, password excluded.
        password: The password, if any. Never rendered into files or reprs.
        connect_timeout_s: Socket connect timeout of the reachability check and of Feast's client.
        socket_timeout_s: Socket read/write timeout of Feast's client.
    """

    # hide_input_in_errors: a validation error must not echo a URL that carries a password.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    kind: Literal["redis"] = "redis"
    connection_string: str
    password: SecretStr | None = None
    connect_timeout_s: float = Field(default=1.0, gt=0, le=60)
    socket_timeout_s: float = Field(default=5.0, gt=0, le=600)

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or not isinstance(data.get("connection_string"), str):
            return data
        out = dict(data)
        conn, password = _parse_redis_target(out["connection_string"])
        out["connection_string"] = conn
        if password is not None:
            given = out.get("password")
            given_text = given.get_secret_value() if isinstance(given, SecretStr) else given
            if given_text not in (None, password):
                raise ValueError("two different passwords: in the connection string and in 'password'")
            out["password"] = password
        return out

    @field_validator("password")
    @classmethod
    def _password_fits_feast(cls, value: SecretStr | None) -> SecretStr | None:
        # Feast splits its connection string on ',' and JSON-decodes each value.
        if value is not None and ("," in value.get_secret_value() or not value.get_secret_value()):
            raise ValueError("must be non-empty and must not contain ',' (Feast's connection string format)")
        return value

    @property
    def host(self) -> str:
        """Host of the server."""
        return self.connection_string.split(",", 1)[0].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        """TCP port of the server."""
        return int(self.connection_string.split(",", 1)[0].rsplit(":", 1)[1])

    @property
    def address(self) -> str:
        """``host:port``, for messages."""
        return self.connection_string.split(",", 1)[0]

    def options(self) -> dict[str, str]:
        """The ``key=value`` options of the connection string (password excluded)."""
        parts = self.connection_string.split(",")[1:]
        return dict(p.split("=", 1) for p in parts)

    def feast_connection_string(self, *, password: str | None) -> str:
        """Feast's connection string with timeouts and the given password text (or none).

        Args:
            password: What to put after ``password=``: the secret itself (in memory only) or a
                ``${VAR}`` reference (in files). ``None`` leaves the option out.

        Returns:
            The connection string to hand to Feast.
        """
        parts = [self.connection_string]
        opts = self.options()
        if "socket_connect_timeout" not in opts:
            parts.append(f"socket_connect_timeout={self.connect_timeout_s:g}")
        if "socket_timeout" not in opts:
            parts.append(f"socket_timeout={self.socket_timeout_s:g}")
        if password is not None:
            parts.append(f"password={password}")
        return ",".join(parts)


def _feast_value(text: str) -> Any:
    """A connection-string value as Feast reads it: JSON when it parses, else the raw text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_redis_target(text: str) -> tuple[str, str | None]:
    """Normalise a Redis URL or Feast connection string to ``(feast string without password, password)``."""
    text = text.strip()
    if "://" in text:
        url = urlsplit(text)
        if url.scheme not in {"redis", "rediss"}:
            raise ValueError(f"unsupported Redis URL scheme {url.scheme!r} (use redis:// or rediss://)")
        if not url.hostname:
            raise ValueError("the Redis URL has no host")
        if not _HOST_RE.match(url.hostname):
            # Feast splits "host:port" on ':' (so no IPv6 literal) and the string on ','.
            raise ValueError("the Redis host must be a DNS name or an IPv4 address")
        host = url.hostname
        try:
            port = url.port or 6379
        except ValueError as exc:
            raise ValueError("the Redis URL has an invalid port") from exc
        db_text = url.path.strip("/") or "0"
        if not db_text.isdigit():
            raise ValueError(f"the Redis URL path must be a database number, got {url.path!r}")
        parts = [f"{host}:{port}", f"db={int(db_text)}"]
        if url.username:
            # JSON-quoted: Feast JSON-decodes option values, so a bare "123" would become an int.
            parts.append(f"username={json.dumps(unquote(url.username))}")
        if url.scheme == "rediss":
            parts.append("ssl=true")
        password = unquote(url.password) if url.password else None
        return ",".join(parts), password

    items = [p.strip() for p in text.split(",") if p.strip()]
    nodes = [p for p in items if "=" not in p]
    if len(nodes) != 1:
        raise ValueError(f"expected exactly one host:port, got {len(nodes)} (clusters are not supported here)")
    host, sep, port_text = nodes[0].rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("expected host:port with a numeric port")
    if not _HOST_RE.match(host):
        raise ValueError("invalid host")
    password = None
    options: list[str] = []
    for item in items:
        if "=" not in item:
            continue
        key, value = item.split("=", 1)
        if key not in _REDIS_OPTIONS:
            raise ValueError(f"unknown Redis option {key!r}; known: {', '.join(sorted(_REDIS_OPTIONS))}")
        if key == "password":
            decoded = _feast_value(value) if value.startswith('"') else value
            password = decoded if isinstance(decoded, str) else value
        else:
            options.append(f"{key}={value}")
    return ",".join([f"{host}:{int(port_text)}", *options]), password


OnlineStore = Annotated[SqliteOnline | RedisOnline, Field(discriminator="kind")]


class FeastConfig(BaseModel):
    """Where the feature repository, its registry, its data and its online store live.

    Attributes:
        project: Feast project name (letters, digits, ``_``; starts with a letter).
        repo_dir: Local directory of ``feature_store.yaml``.
        offline_dir: Directory holding ``user_features.parquet`` and ``track_features.parquet``.
        user_features_path: The user feature file, when not ``<offline_dir>/user_features.parquet``.
        track_features_path: The track feature file, when not ``<offline_dir>/track_features.parquet``.
        online_store: :class:`SqliteOnline` or :class:`RedisOnline`.
        registry_path: The file registry: a local path or a ``gs://`` URI (shared by pods).
            Default: ``<repo_dir>/data/registry.db``.
        ttl_days: How far back a feature row stays valid (point-in-time joins, first materialization).
        owner: ``owner`` tag of every object.
        registry_cache_ttl_s: How long a store caches the registry (Feast's ``cache_ttl_seconds``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    project: str = "aitasks_reco"
    repo_dir: Path
    offline_dir: Path | None = None
    user_features_path: Path | None = None
    track_features_path: Path | None = None
    online_store: OnlineStore
    registry_path: str | None = None
    ttl_days: int = Field(default=30, gt=0, le=3650)
    owner: str = Field(default="data-processing", min_length=1, max_length=128)
    registry_cache_ttl_s: int = Field(default=60, ge=0, le=86_400)

    @field_validator("project")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _PROJECT_RE.match(value):
            raise ValueError("must start with a letter and hold only letters, digits and '_' (at most 63)")
        return value

    @field_validator("registry_path", mode="before")
    @classmethod
    def _path_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @model_validator(mode="after")
    def _files_known(self) -> FeastConfig:
        if self.offline_dir is None and (self.user_features_path is None or self.track_features_path is None):
            raise ValueError("give offline_dir, or both user_features_path and track_features_path")
        return self

    @property
    def ttl(self) -> timedelta:
        """The feature views' TTL."""
        return timedelta(days=self.ttl_days)

    def resolved_registry_path(self) -> str:
        """The registry: a ``gs://`` URI as given, else an absolute local path."""
        if self.registry_path and self.registry_path.startswith("gs://"):
            return self.registry_path
        path = Path(self.registry_path) if self.registry_path else self.repo_dir / "data" / "registry.db"
        return str(path.expanduser().absolute())

    def offline_file(self, view: str) -> Path:
        """Absolute path of the Parquet file behind ``view``."""
        explicit = {USER_FEATURE_VIEW: self.user_features_path, TRACK_FEATURE_VIEW: self.track_features_path}[view]
        if explicit is None:
            assert self.offline_dir is not None  # guaranteed by the validator
            explicit = self.offline_dir / {USER_FEATURE_VIEW: USER_FILE, TRACK_FEATURE_VIEW: TRACK_FILE}[view]
        return explicit.expanduser().absolute()


def config_for(
    *,
    settings: Settings,
    project: str,
    user_features: Path,
    track_features: Path,
    online_store: Literal["sqlite", "redis"] | None = None,
    ttl_days: int = 30,
) -> FeastConfig:
    """The repository of ``project`` under the platform's storage root, as tasks and the demo use it.

    Every caller with the same settings and project gets the same repository, registry and online
    store: the materialize step writes what a later reader reads. Locally everything lives under
    ``<storage_root>/feast/<project>/`` (sqlite online store at ``data/online.db``). With a
    ``gs://`` storage root the registry is ``<storage_root>/feast/<project>/registry.db`` (shared by
    every pod) and the online store must be Redis.

    Args:
        settings: Platform settings (``storage_root``, ``feast_online_store``, ``redis_url``).
        project: Feast project name.
        user_features: The user feature snapshots (Parquet).
        track_features: The track feature snapshots (Parquet).
        online_store: ``sqlite`` or ``redis``; ``None``: ``settings.feast_online_store``.
        ttl_days: Feature TTL.

    Returns:
        The configuration.

    Raises:
        InvalidInputError: A sqlite online store with a ``gs://`` storage root (pods share nothing local).
    """
    from aitasks.runtime.storage import is_gcs, join_uri

    kind = online_store or settings.feast_online_store
    root = settings.storage_root
    registry: str | None = None
    if is_gcs(root):
        if kind == "sqlite":
            raise InvalidInputError(
                _TASK, [FieldIssue("online_store", "sqlite needs a local storage root; use redis with gs://")]
            )
        repo_dir = Path(tempfile.gettempdir()) / "aitasks-feast" / project
        registry = join_uri(root, "feast", project, "registry.db")
    else:
        repo_dir = Path(root) / "feast" / project
    online: SqliteOnline | RedisOnline
    if kind == "redis":
        online = RedisOnline(connection_string=settings.redis_url)
    else:
        online = SqliteOnline(path=repo_dir / "data" / "online.db")
    return FeastConfig(
        project=project,
        repo_dir=repo_dir,
        user_features_path=user_features,
        track_features_path=track_features,
        online_store=online,
        registry_path=registry,
        ttl_days=ttl_days,
    )


def serving_config(
    settings: Settings, *, project: str, online_store: Literal["sqlite", "redis"] | None = None
) -> FeastConfig:
    """The configuration a reader of the online store needs (the repository applied by the pipeline).

    Online reads go through the registry and the online store only; the offline files named here are
    never opened.
    """
    base = config_for(
        settings=settings,
        project=project,
        user_features=Path("unused-offline-user.parquet"),
        track_features=Path("unused-offline-track.parquet"),
        online_store=online_store,
    )
    return base.model_copy(
        update={"user_features_path": None, "track_features_path": None, "offline_dir": base.repo_dir / "offline"}
    )


def _render(cfg: FeastConfig, *, with_secrets: bool) -> dict[str, Any]:
    """The ``feature_store.yaml`` content as a dict; the password in memory only when ``with_secrets``."""
    online: dict[str, Any]
    if isinstance(cfg.online_store, SqliteOnline):
        online = {"type": "sqlite", "path": str(cfg.online_store.path.expanduser().absolute())}
    else:
        store = cfg.online_store
        password: str | None = None
        if store.password is not None:
            # JSON-quoted because Feast JSON-decodes option values ("true" would become a bool).
            secret = store.password.get_secret_value() if with_secrets else "${" + REDIS_PASSWORD_ENV + "}"
            password = json.dumps(secret)
        online = {"type": "redis", "connection_string": store.feast_connection_string(password=password)}
    return {
        "project": cfg.project,
        "provider": "local",
        "registry": {
            "registry_type": "file",
            "path": cfg.resolved_registry_path(),
            "cache_ttl_seconds": cfg.registry_cache_ttl_s,
        },
        "online_store": online,
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,
    }


# --------------------------------------------------------------------------------- repository


@dataclass(frozen=True)
class FeatureRepo:
    """The Feast objects of the repository, built in code.

    Attributes:
        config: The configuration they were built from.
        yaml_path: The rendered ``feature_store.yaml``.
        project: The Feast project object.
        user: Entity ``user`` (join key ``user_id``).
        track: Entity ``track`` (join key ``track_id``).
        user_source: FileSource over ``user_features.parquet``.
        track_source: FileSource over ``track_features.parquet``.
        user_features: Feature view ``user_features``.
        track_features: Feature view ``track_features``.
        training: Feature service ``reco_training``.
        serving: Feature service ``reco_serving``.
    """

    config: FeastConfig
    yaml_path: Path
    project: Project
    user: Entity
    track: Entity
    user_source: FileSource
    track_source: FileSource
    user_features: FeatureView
    track_features: FeatureView
    training: FeatureService
    serving: FeatureService

    @property
    def objects(self) -> list[Any]:
        """Every object to apply, in a stable order."""
        return [
            self.project,
            self.user,
            self.track,
            self.user_source,
            self.track_source,
            self.user_features,
            self.track_features,
            self.training,
            self.serving,
        ]

    @property
    def feature_views(self) -> tuple[FeatureView, FeatureView]:
        """The two feature views."""
        return (self.user_features, self.track_features)


def build_feature_repo(cfg: FeastConfig) -> FeatureRepo:
    """Write ``feature_store.yaml`` and define the repository's objects.

    The YAML is rewritten only when its content changes (atomic replace). It never holds a
    password: a Redis password appears as ``${AITASKS_FEAST_REDIS_PASSWORD}``.

    Args:
        cfg: The configuration.

    Returns:
        The objects, ready for :func:`apply_repo`.
    """
    import yaml
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, Project, ValueType
    from feast import types as ftypes

    from aitasks.runtime.storage import LocalStorage

    repo_dir = cfg.repo_dir.expanduser().absolute()
    repo_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.resolved_registry_path().startswith("gs://"):
        Path(cfg.resolved_registry_path()).parent.mkdir(parents=True, exist_ok=True)
    if isinstance(cfg.online_store, SqliteOnline):
        cfg.online_store.path.expanduser().absolute().parent.mkdir(parents=True, exist_ok=True)
    text = "# Rendered by aitasks.data_processing.feature_store from FeastConfig; do not edit.\n"
    text += yaml.safe_dump(_render(cfg, with_secrets=False), sort_keys=False)
    yaml_path = repo_dir / "feature_store.yaml"
    if not yaml_path.exists() or yaml_path.read_text() != text:
        LocalStorage().write_bytes(str(yaml_path), text.encode())

    tags = {"owner": cfg.owner, "contract_version": CONTRACT_VERSION, "family": "data_processing"}
    dtypes = {"Int64": ftypes.Int64, "Float32": ftypes.Float32}
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A listener.", tags=tags)
    track = Entity(
        name="track", join_keys=["track_id"], value_type=ValueType.STRING, description="A catalog track.", tags=tags
    )
    user_source = FileSource(
        name="user_features_source",
        path=str(cfg.offline_file(USER_FEATURE_VIEW)),
        timestamp_field=TIMESTAMP_FIELD,
        created_timestamp_column=CREATED_FIELD,
        description="Daily user feature snapshots (aitasks.data_processing.features).",
        tags=tags,
    )
    track_source = FileSource(
        name="track_features_source",
        path=str(cfg.offline_file(TRACK_FEATURE_VIEW)),
        timestamp_field=TIMESTAMP_FIELD,
        created_timestamp_column=CREATED_FIELD,
        description="Daily track feature snapshots (aitasks.data_processing.features).",
        tags=tags,
    )
    user_view = FeatureView(
        name=USER_FEATURE_VIEW,
        entities=[user],
        ttl=cfg.ttl,
        schema=[
            Field(name="user_id", dtype=ftypes.String),
            *(Field(name=n, dtype=dtypes[t]) for n, t in USER_FEATURES),
        ],
        source=user_source,
        online=True,
        description="Listening behaviour of a user over the last 7/28 days, daily snapshots.",
        tags=tags,
        owner=cfg.owner,
    )
    track_view = FeatureView(
        name=TRACK_FEATURE_VIEW,
        entities=[track],
        ttl=cfg.ttl,
        schema=[
            Field(name="track_id", dtype=ftypes.String),
            *(Field(name=n, dtype=dtypes[t]) for n, t in TRACK_FEATURES),
        ],
        source=track_source,
        online=True,
        description="Popularity and catalog attributes of a track, daily snapshots.",
        tags=tags,
        owner=cfg.owner,
    )
    training = FeatureService(
        name=TRAINING_SERVICE,
        features=[user_view, track_view],
        description="Every user and track feature, for point-in-time training sets.",
        tags={**tags, "purpose": "training"},
        owner=cfg.owner,
    )
    serving = FeatureService(
        name=SERVING_SERVICE,
        features=[user_view[list(SERVING_USER_FEATURES)], track_view],
        description="The features the online recommender reads per (user, candidate track).",
        tags={**tags, "purpose": "serving"},
        owner=cfg.owner,
    )
    return FeatureRepo(
        config=cfg,
        yaml_path=yaml_path,
        project=Project(name=cfg.project, description="Music recommendation features.", tags=tags),
        user=user,
        track=track,
        user_source=user_source,
        track_source=track_source,
        user_features=user_view,
        track_features=track_view,
        training=training,
        serving=serving,
    )


# ----------------------------------------------------------------------------- online checks


def check_online_store(cfg: FeastConfig) -> None:
    """Fail fast, with a clear typed error, when the online store cannot be used.

    Args:
        cfg: The configuration.

    Raises:
        ServiceUnavailableError: Redis does not answer ``PING`` within the connect timeout
            (retryable; the message names ``host:port``).
        FatalError: Redis answers but refuses the credentials (a retry cannot fix that).
    """
    if not isinstance(cfg.online_store, RedisOnline):
        return
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    store = cfg.online_store
    opts = {k: _feast_value(v) for k, v in store.options().items()}
    client = redis.Redis(
        host=store.host,
        port=store.port,
        db=int(opts.get("db", 0)),
        username=opts.get("username"),
        password=store.password.get_secret_value() if store.password else None,
        ssl=opts.get("ssl") is True or str(opts.get("ssl", "")).lower() == "true",
        socket_connect_timeout=store.connect_timeout_s,
        socket_timeout=store.connect_timeout_s,
        # redis-py 7 retries 3 times with up to 10 s of backoff by default; the task runtime owns
        # retries, so one short attempt here.
        retry=Retry(NoBackoff(), retries=0),
    )
    try:
        client.ping()
    except redis.exceptions.AuthenticationError:
        # ``from None``: redis' own message may quote connection details.
        raise FatalError(f"Redis online store at {store.address} refused the credentials") from None
    except redis.exceptions.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise FatalError(f"Redis online store at {store.address} requires other credentials") from None
        raise ServiceUnavailableError(f"Redis online store at {store.address} answered an error to PING") from None
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise ServiceUnavailableError(
            f"Redis online store unreachable at {store.address} ({type(exc).__name__}, "
            f"timeout {store.connect_timeout_s:g} s)"
        ) from None
    finally:
        client.close()


@contextlib.contextmanager
def _service_errors(cfg: FeastConfig) -> Iterator[None]:
    """Turn redis connection failures inside Feast into :class:`ServiceUnavailableError`."""
    if not isinstance(cfg.online_store, RedisOnline):
        yield
        return
    import redis

    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        if isinstance(exc, redis.exceptions.AuthenticationError):
            raise FatalError(f"Redis online store at {cfg.online_store.address} refused the credentials") from None
        raise ServiceUnavailableError(
            f"Redis online store at {cfg.online_store.address} failed during the call ({type(exc).__name__})"
        ) from None


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Capture what Feast prints (materialization banners, tqdm bars) instead of spamming task logs."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        yield buffer


def open_store(cfg: FeastConfig, *, check: bool = True) -> FeatureStore:
    """A Feast ``FeatureStore`` configured in memory from ``cfg`` (secrets never touch disk).

    Reuse the returned store for many reads: opening one loads the registry.

    Args:
        cfg: The configuration.
        check: Check the online store first (:func:`check_online_store`).

    Returns:
        The store.

    Raises:
        ServiceUnavailableError: The Redis online store is unreachable.
    """
    if check:
        check_online_store(cfg)
    from feast import FeatureStore, RepoConfig

    repo_dir = cfg.repo_dir.expanduser().absolute()
    config = RepoConfig(**_render(cfg, with_secrets=True))
    config.repo_path = repo_dir
    return FeatureStore(repo_path=str(repo_dir), config=config)


def _require_offline_files(cfg: FeastConfig) -> None:
    """The Parquet files exist and hold every column the views declare."""
    import pyarrow.parquet as pq

    for view, features in ((USER_FEATURE_VIEW, USER_FEATURES), (TRACK_FEATURE_VIEW, TRACK_FEATURES)):
        path = cfg.offline_file(view)
        if not path.is_file():
            raise DataFormatError(str(path), "missing: write the feature snapshots first")
        try:
            names = set(pq.read_schema(path).names)
        except Exception as exc:  # pyarrow raises several types for a non-Parquet file
            raise DataFormatError(str(path), f"not a readable Parquet file ({type(exc).__name__})") from None
        needed = [_ENTITY_KEYS[view], TIMESTAMP_FIELD, CREATED_FIELD, *(n for n, _ in features)]
        missing = [c for c in needed if c not in names]
        if missing:
            raise DataFormatError(str(path), "missing column(s): " + ", ".join(missing))


# --------------------------------------------------------------------------------------- apply


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


def apply_repo(cfg: FeastConfig, repo: FeatureRepo | None = None) -> ApplyReport:
    """Register the repository's objects and create their online tables; idempotent.

    A dry run (``FeatureStore.plan``) computes what would change; when nothing would, the registry
    is not written at all.

    Args:
        cfg: The configuration.
        repo: Objects from :func:`build_feature_repo` (built here when ``None``).

    Returns:
        The report.

    Raises:
        ServiceUnavailableError: The Redis online store is unreachable.
        DataFormatError: A feature Parquet file is missing or lacks a declared column.
    """
    from feast.diff.property_diff import TransitionType
    from feast.repo_contents import RepoContents

    repo = repo or build_feature_repo(cfg)
    _require_offline_files(cfg)
    store = open_store(cfg)
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
    with _quiet(), _service_errors(cfg):
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
        with _quiet(), _service_errors(cfg):
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


# --------------------------------------------------------------------------------- materialize


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
        raise InvalidInputError(_TASK, [FieldIssue(name, "must be timezone-aware (UTC)")])
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


def materialize(cfg: FeastConfig, end: datetime, *, start: datetime | None = None) -> MaterializeReport:
    """Copy the latest feature row per entity into the online store, incrementally.

    Without ``start``, each view continues from the end of its previous materialization
    (``materialize_incremental``), or from ``end - ttl`` the first time. A view already
    materialized up to ``end`` is skipped, so a repeated call writes nothing. With ``start``, the
    window ``[start, end]`` is (re)written whatever was done before.

    Args:
        cfg: The configuration (the repository must have been applied).
        end: Window end, timezone-aware.
        start: Window start, timezone-aware; ``None`` for incremental.

    Returns:
        The report.

    Raises:
        InvalidInputError: A naive datetime, or ``start`` after ``end``.
        ServiceUnavailableError: The Redis online store is unreachable.
        DataFormatError: A feature Parquet file is missing or lacks a declared column.
        FatalError: The repository was never applied.
    """
    _aware("end", end)
    if start is not None and _aware("start", start) > end:
        raise InvalidInputError(_TASK, [FieldIssue("start", "must not be after 'end'")])
    from feast.errors import FeatureViewNotFoundException
    from feast.utils import make_tzaware

    _require_offline_files(cfg)
    store = open_store(cfg)
    views: list[ViewMaterialization] = []
    for name in (USER_FEATURE_VIEW, TRACK_FEATURE_VIEW):
        try:
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
        rows, entities = _window_counts(cfg.offline_file(name), _ENTITY_KEYS[name], window_start, end)
        with _quiet(), _service_errors(cfg):
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


# ----------------------------------------------------------------------------------- retrieval


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
        store: An open store to reuse (:func:`open_store`).
        partial: Only the service's views whose join keys ``entity_df`` has (users alone, tracks
            alone); otherwise a missing join key is an error.

    Returns:
        ``entity_df``'s columns (index reset) plus one column per feature of the service.

    Raises:
        InvalidInputError: ``entity_df`` lacks ``event_timestamp`` or a join key, has naive times,
            or has a column named like a feature.
    """
    import pandas as pd

    issues: list[FieldIssue] = []
    if TIMESTAMP_FIELD not in entity_df.columns:
        issues.append(FieldIssue(f"entity_df.{TIMESTAMP_FIELD}", "missing column"))
    elif not isinstance(entity_df[TIMESTAMP_FIELD].dtype, pd.DatetimeTZDtype):
        issues.append(FieldIssue(f"entity_df.{TIMESTAMP_FIELD}", "must be a timezone-aware datetime column"))
    store = store or open_store(cfg, check=False)
    service = store.get_feature_service(feature_service)
    parts = _service_parts(store, service)
    if partial:
        parts = [p for p in parts if set(p[0]) <= set(entity_df.columns)] or parts
    needed = {k for keys, _, _ in parts for k in keys}
    issues += [FieldIssue(f"entity_df.{k}", "missing join key column") for k in sorted(needed - set(entity_df.columns))]
    clashes = sorted({f for _, _, names in parts for f in names} & set(entity_df.columns))
    issues += [FieldIssue(f"entity_df.{c}", "has the name of a feature") for c in clashes]
    if issues:
        raise InvalidInputError(_TASK, issues)

    order = "__aitasks_row__"
    out = entity_df.reset_index(drop=True)
    for keys, view, names in parts:
        part = out[[*keys, TIMESTAMP_FIELD]].assign(**{order: range(len(out))})
        with _quiet():
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
) -> dict[str, list[Any]]:
    """Latest materialized features for users and/or tracks (Feast ``get_online_features``).

    Rows pair ``user_ids`` and ``track_ids`` position by position; a single user is broadcast over
    every track (one user, many candidates). When only one kind of id is given, only the service's
    features of that entity are read. Unknown ids get ``None`` values.

    Args:
        cfg: The configuration.
        user_ids: User ids.
        track_ids: Track ids.
        feature_service: Feature service name.
        store: An open store to reuse (:func:`open_store`); opened (and checked) per call otherwise.

    Returns:
        Column name -> list of values, the join keys first.

    Raises:
        InvalidInputError: No ids, or lists of lengths that cannot be paired.
        ServiceUnavailableError: The Redis online store is unreachable.
    """
    users, tracks = list(user_ids), list(track_ids)
    if not users and not tracks:
        raise InvalidInputError(_TASK, [FieldIssue("user_ids", "give user_ids and/or track_ids")])
    if users and tracks and len(users) != len(tracks):
        if len(users) != 1:
            raise InvalidInputError(_TASK, [FieldIssue("user_ids", "must have one id or as many ids as track_ids")])
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
    service = store.get_feature_service(feature_service)
    keys = set(rows[0])
    parts = _service_parts(store, service)
    wanted = [(view, name) for view_keys, view, names in parts if set(view_keys) <= keys for name in names]
    if not wanted:
        raise InvalidInputError(
            _TASK, [FieldIssue("feature_service", f"{feature_service!r} has no feature for the given ids")]
        )
    # The whole service when every join key is there, else only the features of the given entities.
    whole = all(set(view_keys) <= keys for view_keys, _, _ in parts)
    features: Any = service if whole else [f"{v}:{f}" for v, f in wanted]
    with _service_errors(cfg):
        raw: dict[str, list[Any]] = store.get_online_features(features=features, entity_rows=rows).to_dict()
    # Feast returns the columns in no particular order: join keys first, then the service's order.
    order = [*rows[0], *(f for _, f in wanted)]
    return {**{k: raw[k] for k in order if k in raw}, **raw}
