"""Feast online reads: one entity per ``get_online_features`` call, against a direct lookup of the same row.

For each online store (sqlite always, Redis when a URL is given or a ``redis-server`` can be
started here), the same run measures:

* ``feast``: ``FeatureStore.get_online_features(user features, one user).to_dict()`` on a store
  opened once (registry cached), as a serving process would call it;
* ``baseline``: the same row fetched directly: sqlite ``SELECT feature_name, value FROM
  <project>_user_features WHERE entity_key = ?`` (fetchall, blobs not decoded), Redis ``HGETALL``
  of Feast's key for that user; the entity key serialization is inside the timed call for both.

``ratio = feast / baseline``: what Feast's typing, proto decoding and response building cost on top
of the storage lookup itself. Run ``python -m bench.feast_online [--redis-url URL | --no-redis]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import percentiles_ms, record

SNAPSHOT_DAYS = 2
END = datetime(2025, 6, 1, tzinfo=UTC)


def _write_synthetic_features(offline: Path, n_users: int, n_tracks: int, seed: int = 7) -> None:
    """Feature files with the exact contract columns, ``SNAPSHOT_DAYS`` daily snapshots, seeded."""
    from aitasks.data_processing.features import TRACK_FEATURES_SCHEMA, USER_FEATURES_SCHEMA

    rng = np.random.default_rng(seed)
    offline.mkdir(parents=True, exist_ok=True)
    for schema, key, prefix, n in (
        (USER_FEATURES_SCHEMA, "user_id", "u", n_users),
        (TRACK_FEATURES_SCHEMA, "track_id", "t", n_tracks),
    ):
        rows = n * SNAPSHOT_DAYS
        times = [END - timedelta(days=SNAPSHOT_DAYS - 1 - d) for d in range(SNAPSHOT_DAYS) for _ in range(n)]
        arrays: list[pa.Array] = []
        for field in schema:
            if field.name == key:
                arrays.append(pa.array([f"{prefix}{i:07d}" for _ in range(SNAPSHOT_DAYS) for i in range(n)]))
            elif field.name in ("event_timestamp", "created_timestamp"):
                arrays.append(pa.array(times, type=field.type))
            elif field.name.startswith("audio_"):
                arrays.append(pa.nulls(rows, type=field.type))
            elif pa.types.is_integer(field.type):
                arrays.append(pa.array(rng.integers(0, 500, rows), type=field.type))
            else:
                arrays.append(pa.array(rng.random(rows, dtype=np.float32), type=field.type))
        pq.write_table(pa.Table.from_arrays(arrays, schema=schema), offline / f"{key.split('_')[0]}_features.parquet")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[str | None]:
    """A throwaway ``redis-server`` on a free localhost port (``None`` when the binary is missing)."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    import redis

    port = _free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*argv, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    try:
        for _ in range(200):
            with contextlib.suppress(redis.exceptions.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


def _measure_store(
    cfg: Any, n_users: int, n_reads: int, extra: dict[str, Any]
) -> tuple[dict[str, float], dict[str, float], float]:
    """(feast p50/p99, baseline p50/p99, materialize seconds) for one configured online store.

    Redis also fills ``extra["redis_bytes_per_user"]``: the mean ``MEMORY USAGE`` of 200 user keys.
    """
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from aitasks.platform import feature_store as fst

    fst.apply_repo(cfg)
    started = time.perf_counter()
    fst.materialize(cfg, END)
    materialize_s = time.perf_counter() - started
    store = fst.open_store(cfg)
    refs = [f"user_features:{name}" for name in fst.SERVING_USER_FEATURES]

    def user(i: int) -> str:
        return f"u{(i * 7919) % n_users:07d}"

    def feast_read(i: int) -> None:
        out = store.get_online_features(features=refs, entity_rows=[{"user_id": user(i)}]).to_dict()
        assert out["user_plays_7d"][0] is not None

    def entity_key(i: int) -> EntityKey:
        return EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=user(i))])

    close: Any
    if isinstance(cfg.online_store, fst.SqliteOnline):
        conn = sqlite3.connect(str(cfg.online_store.path))
        sql = f'SELECT feature_name, value FROM "{cfg.project}_user_features" WHERE entity_key = ?'

        def baseline(i: int) -> None:
            rows = conn.execute(sql, (serialize_entity_key(entity_key(i), 3),)).fetchall()
            assert len(rows) == len(refs)

        close = conn.close
    else:
        import redis

        client = redis.Redis.from_url(str(_url_of(cfg.online_store)))

        def baseline(i: int) -> None:
            assert client.hgetall(_redis_key(cfg.project, entity_key(i), 3))  # type: ignore[arg-type]

        # What one user costs Redis (key + hash, allocator overhead included): the capacity model's unit.
        sample = [client.memory_usage(_redis_key(cfg.project, entity_key(i), 3)) for i in range(200)]  # type: ignore[arg-type]
        extra["redis_bytes_per_user"] = round(statistics.mean(int(b or 0) for b in sample), 1)
        close = client.close

    feast_p50, feast_p99 = percentiles_ms(feast_read, n_reads)
    base_p50, base_p99 = percentiles_ms(baseline, n_reads)
    close()
    with contextlib.suppress(Exception):  # leave a shared Redis as we found it
        if not isinstance(cfg.online_store, fst.SqliteOnline):
            store.teardown()
    return {"p50": feast_p50, "p99": feast_p99}, {"p50": base_p50, "p99": base_p99}, materialize_s


def _url_of(online: Any) -> str:
    opts = online.options()
    password = online.password.get_secret_value() if online.password else ""
    auth = f":{password}@" if password else ""
    return f"redis://{auth}{online.address}/{opts.get('db', '0')}"


def bench_online_reads(
    tmpdir: Path, n_users: int = 2000, n_reads: int = 2000, redis_url: str | None = None
) -> list[dict[str, Any]]:
    """Single-entity online read latency, Feast vs a direct lookup, on sqlite and (if given) Redis.

    Args:
        tmpdir: Scratch directory (feature files, repositories, sqlite store).
        n_users: Users in the synthetic feature files (tracks: half as many).
        n_reads: Timed reads per measurement (after 20 warm-up reads).
        redis_url: A Redis to measure against (a private project name is used and torn down after);
            ``None`` or unreachable: sqlite only.

    Returns:
        Records ``{benchmark, metric, value, unit, baseline, baseline_value, ratio, params}``.
    """
    from aitasks.platform import feature_store as fst
    from aitasks.runtime.errors import ServiceUnavailableError

    offline = tmpdir / "offline"
    _write_synthetic_features(offline, n_users, max(1, n_users // 2))
    project = f"bench_{os.getpid()}_{int(time.time())}"
    stores: list[tuple[str, Any]] = [("sqlite", fst.SqliteOnline(path=tmpdir / "sqlite" / "online.db"))]
    if redis_url:
        stores.append(("redis", fst.RedisOnline(connection_string=redis_url)))
    records: list[dict[str, Any]] = []
    for label, online in stores:
        cfg = fst.FeastConfig(
            project=project, repo_dir=tmpdir / label, offline_dir=offline, online_store=online, ttl_days=30
        )
        try:
            extra: dict[str, Any] = {}
            feast, base, materialize_s = _measure_store(cfg, n_users, n_reads, extra)
        except ServiceUnavailableError as exc:
            print(f"skipping {label}: {exc}", file=sys.stderr)
            continue
        baseline_name = "sqlite3_select" if label == "sqlite" else "redis_hgetall"
        params = {
            "n_users": n_users,
            "n_reads": n_reads,
            "entities_per_call": 1,
            "features": len(fst.SERVING_USER_FEATURES),
            "online_store": label,
            "materialize_s": round(materialize_s, 3),
            "materialize_entities_per_s": round((n_users + max(1, n_users // 2)) / materialize_s),
            "baseline": f"{baseline_name}: entity key serialization + lookup of the same row, no decoding",
            **extra,
        }
        for q in ("p50", "p99"):
            records.append(
                record(
                    "feast_online",
                    f"get_online_features_{q}[{label}]",
                    feast[q],
                    "ms",
                    f"{baseline_name}_{q}",
                    base[q],
                    params,
                )
            )
    return records


def bench_feast() -> list[dict[str, Any]]:
    """`python -m bench` entry: sqlite, and the Redis of ``AITASKS_BENCH_REDIS_URL`` (default: local db 15)."""
    redis_url = os.environ.get("AITASKS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
    with tempfile.TemporaryDirectory(prefix="aitasks-bench-feast-") as tmp:
        return bench_online_reads(Path(tmp), redis_url=redis_url)


def main(argv: list[str] | None = None) -> None:
    """Print the figures as a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--redis-url", help="measure this Redis (default: a private redis-server if installed)")
    parser.add_argument("--no-redis", action="store_true", help="sqlite only")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--reads", type=int, default=2000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aitasks-bench-feast-") as tmp, contextlib.ExitStack() as stack:
        url: str | None = None
        if not args.no_redis:
            url = args.redis_url or stack.enter_context(private_redis(Path(tmp)))
        records = bench_online_reads(Path(tmp), n_users=args.users, n_reads=args.reads, redis_url=url)
    header = f"{'metric':<36} {'value':>9} {'baseline':<22} {'base':>9} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for r in records:
        value, base = f"{r['value']:.3f}ms", f"{r['baseline_value']:.3f}ms"
        print(f"{r['metric']:<36} {value:>9} {r['baseline']:<22} {base:>9} {r['ratio']:>7.2f}")
    for r in records[::2]:
        p = r["params"]
        print(f"materialize[{p['online_store']}]: {p['materialize_s']} s, {p['materialize_entities_per_s']} entities/s")


if __name__ == "__main__":
    main()
