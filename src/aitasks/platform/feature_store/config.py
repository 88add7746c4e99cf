"""Where the feature repository lives: :class:`FeastConfig`, its online stores, ``feature_store.yaml``.

``feature_store.yaml`` is rendered from the config (for the ``feast`` CLI and for humans); this
package itself builds the same configuration in memory (:func:`render`), so a password never has to
be written to disk: the file holds ``${AITASKS_FEAST_REDIS_PASSWORD}`` instead of the Redis password,
which Feast's loader expands from the environment (``os.path.expandvars``; an unset variable stays
literally ``${...}``), and a SQL registry URL without its password (libpq then reads ``PGPASSWORD``).

The registry is a file (local or ``gs://``; no locking, one writer at a time) or, in production, a
SQL registry on PostgreSQL (``postgresql://...``; every object is written in its own transaction, so
concurrent applies from several pods are safe). Offline files are storage URIs (local or ``gs://``):
sources record ``offline/<file name>`` relative to the store's ``repo_path`` (:func:`offline_source_path`).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from aitasks.platform.feature_store.schema import (
    TASK,
    TRACK_FEATURE_VIEW,
    TRACK_FILE,
    USER_FEATURE_VIEW,
    USER_FILE,
)
from aitasks.runtime.errors import FieldIssue, InvalidInputError

if TYPE_CHECKING:
    from aitasks.runtime.settings import Settings

__all__ = [
    "OFFLINE_DIR",
    "REDIS_PASSWORD_ENV",
    "FeastConfig",
    "OnlineStore",
    "RedisOnline",
    "SqliteOnline",
    "config_for",
    "feast_value",
    "is_sql_registry",
    "offline_source_path",
    "render",
    "serving_config",
]

#: Environment variable that ``feature_store.yaml`` references for the Redis password.
REDIS_PASSWORD_ENV: Final = "AITASKS_FEAST_REDIS_PASSWORD"  # noqa: S105 - a variable name, not a secret

_PROJECT_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
_HOST_RE: Final = re.compile(r"^[A-Za-z0-9.-]+$")
#: Feast's Redis connection-string options this package understands (all are redis-py kwargs).
_REDIS_OPTIONS: Final = frozenset(
    {"db", "password", "username", "ssl", "socket_timeout", "socket_connect_timeout", "ssl_cert_reqs"}
)


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


def feast_value(text: str) -> Any:
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
            decoded = feast_value(value) if value.startswith('"') else value
            password = decoded if isinstance(decoded, str) else value
        else:
            options.append(f"{key}={value}")
    return ",".join([f"{host}:{int(port_text)}", *options]), password


OnlineStore = Annotated[SqliteOnline | RedisOnline, Field(discriminator="kind")]

#: URL schemes of a SQL registry on PostgreSQL (``postgresql://`` is rewritten to the psycopg 3 driver).
_SQL_SCHEMES: Final = ("postgresql://", "postgresql+psycopg://")


def is_sql_registry(path: str | None) -> bool:
    """Whether a registry path names a SQL registry (a PostgreSQL URL)."""
    return bool(path) and str(path).startswith(_SQL_SCHEMES)


def _split_sql_url(url: str) -> tuple[str, str | None]:
    """``(postgresql+psycopg URL without password, password or None)``."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError("the registry URL has no host (postgresql://user@host:5432/db)")
    if not parts.path.strip("/"):
        raise ValueError("the registry URL names no database (postgresql://user@host:5432/db)")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ValueError("the registry URL has an invalid port") from exc
    if parts.password is None:
        return url, None
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{user}@{host}").geturl(), unquote(parts.password)


def _with_password(url: str, password: str) -> str:
    """``url`` (no password in it) with ``password``, URL-quoted, in its user info."""
    from urllib.parse import quote

    parts = urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}").geturl()


def _uri_text(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _is_remote(uri: str) -> bool:
    return uri.startswith("gs://")


def _absolute(uri: str) -> str:
    """A local path made absolute; a ``gs://`` URI as given."""
    if _is_remote(uri):
        return uri
    return str(Path(uri.removeprefix("file://")).expanduser().absolute())


def _join(root: str, *keys: str) -> str:
    return "/".join([root.rstrip("/"), *keys]) if _is_remote(root) else str(Path(root).joinpath(*keys))


#: Where Feast finds an offline file: relative to the store's ``repo_path``, which points at a local
#: directory that holds (links to or downloads of) the files of this call. The registry thus says what a
#: source is, never where one process happened to see it: every pod reads the same, unchanged registry.
OFFLINE_DIR: Final = "offline"


def offline_source_path(file_name: str) -> str:
    """The path a ``FileSource`` of the repository records for ``file_name`` (``offline/<file_name>``)."""
    if "/" in file_name or file_name in ("", ".", ".."):
        raise ValueError(f"not a plain file name: {file_name!r}")
    return f"{OFFLINE_DIR}/{file_name}"


class FeastConfig(BaseModel):
    """Where the feature repository, its registry, its data and its online store live.

    Offline files are storage URIs: local paths or ``gs://`` objects. The feature views' sources record
    only ``offline/<file name>`` (:func:`offline_source_path`); reads (apply's checks, materialize,
    historical retrieval) put local copies of this config's files in a temp directory and point Feast
    there (:func:`~aitasks.platform.feature_store.store.local_offline`): Feast's file offline store reads
    local files only (``gs://`` would need gcsfs), and the registry stays the same whichever files a call
    reads.

    Attributes:
        project: Feast project name (letters, digits, ``_``; starts with a letter).
        repo_dir: Local directory of ``feature_store.yaml``.
        data_root: Where the repository's own files live (offline files that views append to, a file
            registry): a local directory or a ``gs://`` prefix. Default: ``repo_dir``.
        offline_dir: Directory (or ``gs://`` prefix) holding ``user_features.parquet`` and
            ``track_features.parquet``.
        user_features_path: The user feature file, when not ``<offline_dir>/user_features.parquet``.
        track_features_path: The track feature file, when not ``<offline_dir>/track_features.parquet``.
        online_store: :class:`SqliteOnline` or :class:`RedisOnline`.
        registry_path: The registry. A file registry: a local path or a ``gs://`` URI (no locking: one
            writer at a time); default ``<repo_dir>/data/registry.db``. A SQL registry:
            ``postgresql://user[:password]@host:port/db`` (safe under concurrent applies), normalised to
            Feast's ``postgresql+psycopg://`` without the password, which moves to :attr:`registry_password`.
        registry_password: Password of the SQL registry (never rendered into files or reprs). Without
            one, libpq's ``PGPASSWORD`` / ``.pgpass`` apply.
        ttl_days: How far back a feature row stays valid (point-in-time joins, first materialization).
        owner: ``owner`` tag of every object.
        registry_cache_ttl_s: How long a store caches the registry (Feast's ``cache_ttl_seconds``).
        registry_connect_timeout_s: Connect timeout of the SQL registry (check and Feast's engine).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    project: str = "aitasks_reco"
    repo_dir: Path
    data_root: str | None = None
    offline_dir: str | None = None
    user_features_path: str | None = None
    track_features_path: str | None = None
    online_store: OnlineStore
    registry_path: str | None = None
    registry_password: SecretStr | None = None
    ttl_days: int = Field(default=30, gt=0, le=3650)
    owner: str = Field(default="data-processing", min_length=1, max_length=128)
    registry_cache_ttl_s: int = Field(default=60, ge=0, le=86_400)
    registry_connect_timeout_s: int = Field(default=5, ge=1, le=300)

    @field_validator("project")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _PROJECT_RE.match(value):
            raise ValueError("must start with a letter and hold only letters, digits and '_' (at most 63)")
        return value

    @field_validator(
        "registry_path", "data_root", "offline_dir", "user_features_path", "track_features_path", mode="before"
    )
    @classmethod
    def _path_text(cls, value: Any) -> Any:
        return _uri_text(value)

    @model_validator(mode="before")
    @classmethod
    def _sql_password(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or not is_sql_registry(_uri_text(data.get("registry_path"))):
            return data
        out = dict(data)
        url, password = _split_sql_url(str(out["registry_path"]))
        out["registry_path"] = url
        if password is not None:
            given = out.get("registry_password")
            given_text = given.get_secret_value() if isinstance(given, SecretStr) else given
            if given_text not in (None, password):
                raise ValueError("two different passwords: in the registry URL and in 'registry_password'")
            out["registry_password"] = password
        return out

    @model_validator(mode="after")
    def _files_known(self) -> FeastConfig:
        if self.offline_dir is None and (self.user_features_path is None or self.track_features_path is None):
            raise ValueError("give offline_dir, or both user_features_path and track_features_path")
        return self

    @property
    def ttl(self) -> timedelta:
        """The feature views' TTL."""
        return timedelta(days=self.ttl_days)

    @property
    def registry_kind(self) -> Literal["file", "sql"]:
        """``sql`` for a PostgreSQL registry, else ``file``."""
        return "sql" if is_sql_registry(self.registry_path) else "file"

    def resolved_registry_path(self) -> str:
        """The registry: a SQL URL (no password) or ``gs://`` URI as given, else an absolute local path."""
        if self.registry_path and (self.registry_kind == "sql" or _is_remote(self.registry_path)):
            return self.registry_path
        path = Path(self.registry_path) if self.registry_path else self.repo_dir / "data" / "registry.db"
        return str(path.expanduser().absolute())

    def resolved_data_root(self) -> str:
        """Where the repository's own files live: :attr:`data_root`, or ``repo_dir`` (absolute)."""
        return _absolute(self.data_root) if self.data_root else str(self.repo_dir.expanduser().absolute())

    def data_uri(self, *keys: str) -> str:
        """A file of the repository under :meth:`resolved_data_root` (``data_uri("offline", "x.parquet")``)."""
        return _join(self.resolved_data_root(), *keys)

    def offline_uri(self, view: str) -> str:
        """The Parquet file behind ``view``: an absolute local path or a ``gs://`` URI."""
        explicit = {USER_FEATURE_VIEW: self.user_features_path, TRACK_FEATURE_VIEW: self.track_features_path}[view]
        if explicit is None:
            assert self.offline_dir is not None  # guaranteed by the validator
            explicit = _join(self.offline_dir, {USER_FEATURE_VIEW: USER_FILE, TRACK_FEATURE_VIEW: TRACK_FILE}[view])
        return _absolute(explicit)

    def offline_file(self, view: str) -> Path:
        """Absolute local path of the Parquet file behind ``view``.

        Raises:
            ValueError: The file is a ``gs://`` object (use :meth:`offline_uri`).
        """
        uri = self.offline_uri(view)
        if _is_remote(uri):
            raise ValueError(f"{uri} is not a local file; use offline_uri()")
        return Path(uri)

    def offline_sources(self) -> dict[str, str]:
        """``{file name in offline/: URI}`` of the recommender's two views."""
        return {USER_FILE: self.offline_uri(USER_FEATURE_VIEW), TRACK_FILE: self.offline_uri(TRACK_FEATURE_VIEW)}


def config_for(
    *,
    settings: Settings,
    project: str,
    user_features: Path | str,
    track_features: Path | str,
    online_store: Literal["sqlite", "redis"] | None = None,
    ttl_days: int = 30,
) -> FeastConfig:
    """The repository of ``project`` under the platform's storage root, as tasks and the demo use it.

    Every caller with the same settings and project gets the same repository, registry and online
    store: the materialize step writes what a later reader reads. The repository's own files (offline
    files views append to, a file registry) live under ``<storage_root>/feast/<project>/``. Locally
    ``feature_store.yaml`` and the sqlite online store (``data/online.db``) live there too. With a
    ``gs://`` storage root ``feature_store.yaml`` goes to a local temp directory, the online store must
    be Redis, and the file registry is ``<storage_root>/feast/<project>/registry.db``.
    ``settings.feast_registry`` (a ``postgresql://`` URL) replaces the file registry by a SQL registry.

    Args:
        settings: Platform settings (``storage_root``, ``feast_online_store``, ``redis_url``,
            ``feast_registry``).
        project: Feast project name.
        user_features: The user feature snapshots (Parquet): a local path or a ``gs://`` URI.
        track_features: The track feature snapshots (Parquet): a local path or a ``gs://`` URI.
        online_store: ``sqlite`` or ``redis``; ``None``: ``settings.feast_online_store``.
        ttl_days: Feature TTL.

    Returns:
        The configuration.

    Raises:
        InvalidInputError: A sqlite online store with a ``gs://`` storage root (pods share nothing
            local), or a ``feast_registry`` setting that is not a PostgreSQL URL.
    """
    from aitasks.runtime.storage import is_gcs, join_uri

    kind = online_store or settings.feast_online_store
    root = settings.storage_root
    registry: str | None = None
    if is_gcs(root):
        if kind == "sqlite":
            raise InvalidInputError(
                TASK, [FieldIssue("online_store", "sqlite needs a local storage root; use redis with gs://")]
            )
        repo_dir = Path(tempfile.gettempdir()) / "aitasks-feast" / project
        data_root = join_uri(root, "feast", project)
        registry = join_uri(data_root, "registry.db")
    else:
        repo_dir = Path(root) / "feast" / project
        data_root = str(repo_dir)
    if settings.feast_registry:
        if not is_sql_registry(settings.feast_registry):
            raise InvalidInputError(
                TASK,
                [FieldIssue("AITASKS_FEAST_REGISTRY", "must be empty or a postgresql://user@host:port/db URL")],
            )
        registry = settings.feast_registry
    online: SqliteOnline | RedisOnline
    if kind == "redis":
        online = RedisOnline(
            connection_string=settings.redis_url,
            connect_timeout_s=settings.redis_connect_timeout_s,
            socket_timeout_s=settings.redis_socket_timeout_s,
        )
    else:
        online = SqliteOnline(path=repo_dir / "data" / "online.db")
    try:
        return FeastConfig(
            project=project,
            repo_dir=repo_dir,
            data_root=data_root,
            user_features_path=_uri_text(user_features),
            track_features_path=_uri_text(track_features),
            online_store=online,
            registry_path=registry,
            ttl_days=ttl_days,
        )
    except ValueError as exc:  # pydantic's ValidationError; inputs hidden (a URL may hold a password)
        raise InvalidInputError(TASK, [FieldIssue("feast", str(exc).splitlines()[-1].strip())]) from None


def serving_config(
    settings: Settings, *, project: str, online_store: Literal["sqlite", "redis"] | None = None
) -> FeastConfig:
    """The configuration a reader of the online store needs (the repository applied by the pipeline).

    Online reads go through the registry and the online store only; the recommender's offline files
    named here (``<data root>/offline/...``) are never opened.
    """
    base = config_for(
        settings=settings,
        project=project,
        user_features="unused-offline-user.parquet",
        track_features="unused-offline-track.parquet",
        online_store=online_store,
    )
    return base.model_copy(
        update={
            "user_features_path": None,
            "track_features_path": None,
            "offline_dir": base.data_uri(OFFLINE_DIR),
        }
    )


def render(cfg: FeastConfig, *, with_secrets: bool) -> dict[str, Any]:
    """The ``feature_store.yaml`` content as a dict; passwords in memory only when ``with_secrets``.

    In the file, the Redis password reads ``${AITASKS_FEAST_REDIS_PASSWORD}`` (Feast's loader expands
    it from the environment) and the SQL registry's URL has no password (libpq reads ``PGPASSWORD``).
    """
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
    registry: dict[str, Any]
    if cfg.registry_kind == "sql":
        url = cfg.resolved_registry_path()
        if cfg.registry_password is not None and with_secrets:
            url = _with_password(url, cfg.registry_password.get_secret_value())
        registry = {
            "registry_type": "sql",
            "path": url,
            "cache_ttl_seconds": cfg.registry_cache_ttl_s,
            # pool_pre_ping: a pooled connection the server dropped is replaced, not handed to a query.
            "sqlalchemy_config_kwargs": {
                "echo": False,
                "pool_pre_ping": True,
                "connect_args": {"connect_timeout": cfg.registry_connect_timeout_s},
            },
        }
    else:
        registry = {
            "registry_type": "file",
            "path": cfg.resolved_registry_path(),
            "cache_ttl_seconds": cfg.registry_cache_ttl_s,
        }
    return {
        "project": cfg.project,
        "provider": "local",
        "registry": registry,
        "online_store": online,
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,
    }
