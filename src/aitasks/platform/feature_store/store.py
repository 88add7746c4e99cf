"""Opening the store: online-store reachability, Redis errors as typed errors, quiet Feast output.

A Redis online store is checked with a short-timeout, no-retry ``PING`` before Feast touches it: an
unreachable server is a retryable :class:`~aitasks.runtime.errors.ServiceUnavailableError` that
names ``host:port``, never a raw redis traceback. Feast's own Redis client gets socket timeouts too
(it keeps redis-py's default of 3 retries with backoff), so a server that dies mid-call fails the
call in seconds instead of hanging the task.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import TYPE_CHECKING

from aitasks.platform.feature_store.config import FeastConfig, RedisOnline, feast_value, render
from aitasks.platform.feature_store.schema import (
    CREATED_FIELD,
    ENTITY_KEYS,
    TIMESTAMP_FIELD,
    TRACK_FEATURE_VIEW,
    TRACK_FEATURES,
    USER_FEATURE_VIEW,
    USER_FEATURES,
)
from aitasks.runtime.errors import DataFormatError, FatalError, ServiceUnavailableError

if TYPE_CHECKING:
    from feast import FeatureStore

__all__ = ["check_online_store", "open_store", "quiet", "require_offline_files", "service_errors"]


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
    opts = {k: feast_value(v) for k, v in store.options().items()}
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
def service_errors(cfg: FeastConfig) -> Iterator[None]:
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
def quiet() -> Iterator[io.StringIO]:
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
    config = RepoConfig(**render(cfg, with_secrets=True))
    config.repo_path = repo_dir
    return FeatureStore(repo_path=str(repo_dir), config=config)


def require_offline_files(cfg: FeastConfig) -> None:
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
        needed = [ENTITY_KEYS[view], TIMESTAMP_FIELD, CREATED_FIELD, *(n for n, _ in features)]
        missing = [c for c in needed if c not in names]
        if missing:
            raise DataFormatError(str(path), "missing column(s): " + ", ".join(missing))
