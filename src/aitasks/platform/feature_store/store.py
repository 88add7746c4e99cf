"""Opening the store: service reachability, service errors as typed errors, local offline files, quiet output.

A Redis online store is checked with a short-timeout, no-retry ``PING`` before Feast touches it, and a
SQL registry with one short connection: an unreachable server is a retryable
:class:`~aitasks.runtime.errors.ServiceUnavailableError` that names ``host:port``, never a raw
traceback; refused credentials are a :class:`~aitasks.runtime.errors.FatalError`. Feast's own Redis
client is replaced by one with explicit socket timeouts and redis-py's retries turned off
(:func:`redis_client`): redis-py 7 retries 3 times with up to 10 s of backoff by default, which made a
long-lived reader take 6 s (server down) to 26 s (server silent) to fail, under the task's own retries.
Now a down server fails a call at once and a silent one after ``socket_timeout_s``; the task runtime
is the one retry layer.

Offline reads go through :func:`local_offline`: a temp directory whose ``offline/`` holds a link to
each local file and a download of each ``gs://`` object, which :func:`open_store` makes the store's
``repo_path`` (the sources record ``offline/<file name>``).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aitasks.platform.feature_store.config import OFFLINE_DIR, FeastConfig, RedisOnline, feast_value, render
from aitasks.platform.feature_store.schema import (
    CREATED_FIELD,
    ENTITY_KEYS,
    TIMESTAMP_FIELD,
    TRACK_FEATURE_VIEW,
    TRACK_FEATURES,
    TRACK_FILE,
    USER_FEATURE_VIEW,
    USER_FEATURES,
    USER_FILE,
)
from aitasks.runtime.errors import DataFormatError, FatalError, ServiceUnavailableError

if TYPE_CHECKING:
    from feast import FeatureStore
    from redis import Redis

__all__ = [
    "check_online_store",
    "check_registry",
    "local_offline",
    "open_store",
    "quiet",
    "redis_client",
    "require_offline_files",
    "service_errors",
]

#: PostgreSQL error codes that a retry cannot fix: bad password, no such role, no such database.
_PG_FATAL_STATES = frozenset({"28P01", "28000", "3D000"})


def registry_address(cfg: FeastConfig) -> str:
    """``host:port/db`` of a SQL registry, for messages (no user, no password)."""
    parts = urlsplit(cfg.resolved_registry_path())
    return f"{parts.hostname}:{parts.port or 5432}{parts.path}"


def check_registry(cfg: FeastConfig) -> None:
    """Fail fast, with a clear typed error, when the SQL registry cannot be reached (file registry: no-op).

    Raises:
        ServiceUnavailableError: PostgreSQL does not accept a connection within the timeout (retryable).
        FatalError: PostgreSQL refuses the credentials or does not know the database.
    """
    if cfg.registry_kind != "sql":
        return
    import psycopg

    url = cfg.resolved_registry_path().replace("postgresql+psycopg://", "postgresql://", 1)
    password = cfg.registry_password.get_secret_value() if cfg.registry_password else None
    try:
        # password=None leaves libpq's own sources (PGPASSWORD, .pgpass) in charge.
        conn = psycopg.connect(url, connect_timeout=cfg.registry_connect_timeout_s, password=password)
        conn.close()
    except psycopg.Error as exc:
        raise _registry_error(cfg, exc) from None


def _registry_error(cfg: FeastConfig, exc: BaseException) -> Exception:
    """A PostgreSQL / SQLAlchemy error of the registry as a typed error naming ``host:port/db`` only."""
    cause = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    state = getattr(cause, "sqlstate", None)
    text = str(cause).lower()
    where = registry_address(cfg)
    if state in _PG_FATAL_STATES or "authentication failed" in text or "does not exist" in text:
        return FatalError(f"Feast SQL registry at {where} refused the connection (credentials or database)")
    return ServiceUnavailableError(f"Feast SQL registry unreachable at {where} ({type(cause).__name__})")


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

    store = cfg.online_store
    client = redis_client(store, socket_timeout_s=store.connect_timeout_s)
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


def redis_client(store: RedisOnline, *, socket_timeout_s: float | None = None) -> Redis:
    """A redis-py client of ``store`` with explicit timeouts and no retries of its own.

    The connection string's own ``socket_timeout`` / ``socket_connect_timeout`` options win over
    ``store``'s fields, as in Feast's client. redis-py 7 retries 3 times with up to 10 s of backoff by
    default: off here, the task runtime owns retries.

    Args:
        store: The Redis online store.
        socket_timeout_s: Read/write timeout; default ``store.socket_timeout_s``.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    opts = {k: feast_value(v) for k, v in store.options().items()}
    return redis.Redis(
        host=store.host,
        port=store.port,
        db=int(opts.get("db", 0)),
        username=opts.get("username"),
        password=store.password.get_secret_value() if store.password else None,
        ssl=opts.get("ssl") is True or str(opts.get("ssl", "")).lower() == "true",
        socket_connect_timeout=float(opts.get("socket_connect_timeout", store.connect_timeout_s)),
        socket_timeout=float(
            opts.get("socket_timeout", store.socket_timeout_s if socket_timeout_s is None else socket_timeout_s)
        ),
        retry=Retry(NoBackoff(), retries=0),
    )


@contextlib.contextmanager
def service_errors(cfg: FeastConfig) -> Iterator[None]:
    """Turn Redis and SQL-registry connection failures inside Feast into typed errors."""
    with _registry_errors(cfg):
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
def _registry_errors(cfg: FeastConfig) -> Iterator[None]:
    if cfg.registry_kind != "sql":
        yield
        return
    import sqlalchemy.exc

    try:
        yield
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        raise _registry_error(cfg, exc) from None


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Capture what Feast prints (materialization banners, tqdm bars) instead of spamming task logs."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        yield buffer


def open_store(cfg: FeastConfig, *, check: bool = True, offline: Path | None = None) -> FeatureStore:
    """A Feast ``FeatureStore`` configured in memory from ``cfg`` (secrets never touch disk).

    Reuse the returned store for many reads: opening one loads the registry.

    Args:
        cfg: The configuration.
        check: Check the registry and the online store first (:func:`check_registry`,
            :func:`check_online_store`).
        offline: A directory from :func:`local_offline`: the store reads offline files there. ``None``:
            ``repo_dir`` (enough for registry and online reads).

    Returns:
        The store.

    Raises:
        ServiceUnavailableError: The SQL registry or the Redis online store is unreachable.
        FatalError: One of them refuses the credentials.
    """
    if check:
        check_registry(cfg)
        check_online_store(cfg)
    from feast import FeatureStore, RepoConfig

    repo_dir = cfg.repo_dir.expanduser().absolute()
    config = RepoConfig(**render(cfg, with_secrets=True))
    # Feast resolves a source's relative path against repo_path: the local copies of this call.
    config.repo_path = offline or repo_dir
    with _registry_errors(cfg):  # a SQL registry connects (and creates its tables) here
        store = FeatureStore(repo_path=str(repo_dir), config=config)
    if isinstance(cfg.online_store, RedisOnline):
        # Feast builds redis-py's default client (3 retries, backoff up to 10 s) from the connection
        # string, which cannot express a Retry object: hand it ours instead (same server, no retries).
        online = getattr(store._get_provider(), "online_store", None)  # no public hook for the client
        if online is not None and hasattr(online, "_client"):
            online._client = redis_client(cfg.online_store)
    return store


@contextlib.contextmanager
def local_offline(cfg: FeastConfig, files: Mapping[str, str] | None = None) -> Iterator[Path]:
    """A temp directory whose ``offline/<name>`` holds each offline file, for Feast's file offline store.

    A local file is linked (nothing copied), a ``gs://`` object downloaded; the directory is removed
    on exit. Pass it to :func:`open_store` (``offline=``).

    Args:
        cfg: The configuration.
        files: ``{file name: URI}``; default :meth:`FeastConfig.offline_sources` (the recommender's views).

    Raises:
        DataFormatError: A file is missing.
    """
    from aitasks.runtime.storage import is_gcs, storage_for

    wanted = dict(cfg.offline_sources() if files is None else files)
    with tempfile.TemporaryDirectory(prefix="aitasks-feast-offline-") as tmp:
        root = Path(tmp)
        (root / OFFLINE_DIR).mkdir()
        for name, uri in wanted.items():
            dest = root / OFFLINE_DIR / name
            if is_gcs(uri):
                try:
                    storage_for(uri).get_file(uri, dest)
                except FileNotFoundError:
                    raise DataFormatError(uri, "missing: write the feature snapshots first") from None
                continue
            source = Path(uri.removeprefix("file://")).expanduser().absolute()
            if not source.is_file():
                raise DataFormatError(str(source), "missing: write the feature snapshots first")
            dest.symlink_to(source)
        yield root


def require_offline_files(cfg: FeastConfig, offline: Path | None = None) -> None:
    """The Parquet files exist and hold every column the views declare.

    Args:
        cfg: The configuration.
        offline: Local copies from :func:`local_offline` (made here when ``None``).
    """
    import pyarrow.parquet as pq

    if offline is None:
        with local_offline(cfg) as local:
            require_offline_files(cfg, local)
        return
    for view, features, name in (
        (USER_FEATURE_VIEW, USER_FEATURES, USER_FILE),
        (TRACK_FEATURE_VIEW, TRACK_FEATURES, TRACK_FILE),
    ):
        uri = cfg.offline_uri(view)
        try:
            names = set(pq.read_schema(offline / OFFLINE_DIR / name).names)
        except FileNotFoundError:
            raise DataFormatError(uri, "missing: write the feature snapshots first") from None
        except Exception as exc:  # pyarrow raises several types for a non-Parquet file
            raise DataFormatError(uri, f"not a readable Parquet file ({type(exc).__name__})") from None
        needed = [ENTITY_KEYS[view], TIMESTAMP_FIELD, CREATED_FIELD, *(n for n, _ in features)]
        missing = [c for c in needed if c not in names]
        if missing:
            raise DataFormatError(uri, "missing column(s): " + ", ".join(missing))
