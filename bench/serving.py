"""Real-time serving: updater throughput and freshness, service latency, start-up. Bounded in time.

Everything runs against a throwaway ``redis-server`` on a free localhost port and the sample world of
:mod:`aitasks.serving.sample` (a seeded two-tower model and its published hnswlib index), so the figures
need no other service. Each figure has a baseline measured in the same run:

* updater events/s, batches of 500 (one pipelined read + one Lua commit per batch) vs one event per
  commit (``batch_size=1``);
* freshness p50/p99 (``XADD`` -> features committed, i.e. readable in the online store) at a steady
  producer rate, vs the bare transport (``XADD`` -> ``XREADGROUP`` delivery, no processing) at the same rate;
* service p50/p99 and requests/s of ``GET /v1/users/{id}/recommendations`` from a local load generator
  (keep-alive connections in threads, ``duration_s`` each) vs ``GET /healthz`` on the same server;
* start-up, cold processes: ``serve-api`` to its first answer, and ``import feast`` (what every online
  read paid before), vs ``python -c pass``.

Timings on a shared 2-core machine are noisy (5-10x swings while others build): read the ratios.
Run: ``python -m bench.serving`` (also part of ``python -m bench``).
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import record

ROOT = Path(__file__).resolve().parents[1]
_BENCH = "serving"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _redis() -> Iterator[str]:
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found on PATH")
    with tempfile.TemporaryDirectory(prefix="aitasks-bench-redis-") as d:
        port = _free_port()
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=port)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.exceptions.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _events(world: Any, n: int, start: int, rng: np.random.Generator, users: int) -> list[dict[str, str]]:
    now = datetime.now(UTC)
    out = []
    for i in range(start, start + n):
        ts = now - timedelta(seconds=float(rng.uniform(1, 86_400)))
        out.append(
            {
                "event_id": f"b{i:09d}",
                "user_id": f"user{int(rng.integers(users)):06d}",
                "track_id": world.track_ids[int(rng.integers(len(world.track_ids)))],
                "ts": ts.isoformat(),
                "ms_played": str(int(rng.integers(1000, 300_000))),
                "context": "home",
                "skipped": "false" if rng.random() < 0.7 else "true",
            }
        )
    return out


def _updater(world: Any, url: str, batch_size: int, group: str) -> Any:
    import redis

    from aitasks.serving.updater import Updater, UpdaterConfig, index_catalog, index_model_loader

    settings = world.settings(url)
    cfg = UpdaterConfig(consumer="bench", group=group, batch_size=batch_size, block_ms=5, claim_interval_s=3600)
    up = Updater(
        redis.Redis.from_url(url),
        cfg,
        model_loader=index_model_loader(settings, world.source(), cfg.index_name),
        known_tracks=index_catalog(settings, cfg.index_name),
    )
    up.setup()
    return up


def _fill(client: Any, events: list[dict[str, str]]) -> None:
    pipe = client.pipeline(transaction=False)
    for i, e in enumerate(events):
        pipe.xadd("aitasks:events", e)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def _drain_rate(up: Any, client: Any, n: int, budget_s: float) -> float:
    done = 0
    t0 = time.perf_counter()
    while done < n and time.perf_counter() - t0 < budget_s:
        rep = up.step()
        done += rep.applied + rep.duplicates + rep.dead
    return done / (time.perf_counter() - t0)


def _steady(client: Any, rate: float, seconds: float, make: Any) -> threading.Thread:
    """A producer thread writing ``rate`` events/s (in 10 ms ticks) for ``seconds``."""

    def run() -> None:
        t0 = time.perf_counter()
        sent = 0
        while (elapsed := time.perf_counter() - t0) < seconds:
            due = int(elapsed * rate) - sent
            if due > 0:
                pipe = client.pipeline(transaction=False)
                for e in make(due):
                    pipe.xadd("aitasks:events", e)
                pipe.execute()
                sent += due
            time.sleep(0.01)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def bench_updater(world: Any, url: str, *, events: int = 30_000, users: int = 5000, rate: float = 2000.0) -> list[dict]:
    import redis

    client = redis.Redis.from_url(url)
    rng = np.random.default_rng(0)
    client.set(f"aitasks:feast:{'aitasks'}:materialized", "{}")
    records = []

    # Throughput: a backlog drained in batches of 500, vs one event per commit on a smaller backlog.
    _fill(client, _events(world, events, 0, rng, users))
    batched = _updater(world, url, 500, "bench-batched")
    rate_batched = _drain_rate(batched, client, events, budget_s=120)
    single = _updater(world, url, 1, "bench-single")
    n_single = min(2000, events)
    rate_single = _drain_rate(single, client, n_single, budget_s=60)
    params = {"events": events, "users": users, "embedding_dim": 16, "redis": "localhost, own server"}
    records.append(
        record(
            _BENCH,
            "updater events/s (batch 500)",
            rate_batched,
            "events/s",
            "one event per commit",
            rate_single,
            params,
            higher_is_better=True,
        )
    )

    # Freshness at a steady rate, vs the bare transport at the same rate.
    client.delete("aitasks:events")
    fresh = _updater(world, url, 500, "bench-fresh")
    counter = [events * 10]

    def make(n: int) -> list[dict[str, str]]:
        out = _events(world, n, counter[0], rng, users)
        counter[0] += n
        return out

    fresh.freshness_samples.clear()
    producer = _steady(client, rate, 5.0, make)
    t_end = time.monotonic() + 5.0
    while time.monotonic() < t_end or producer.is_alive():
        fresh.step()
    for _ in range(5):
        fresh.step()
    samples = list(fresh.freshness_samples)

    client.delete("aitasks:events")
    client.xgroup_create("aitasks:events", "bench-transport", id="$", mkstream=True)
    transport: list[float] = []
    producer = _steady(client, rate, 5.0, make)
    while producer.is_alive():
        reply = client.xreadgroup("bench-transport", "t", {"aitasks:events": ">"}, count=500, block=5)
        now_ms = time.time() * 1000
        for _, msgs in reply or []:
            ids = [m[0] for m in msgs]
            transport += [(now_ms - int(i.split(b"-")[0])) / 1000 for i in ids]
            client.xack("aitasks:events", "bench-transport", *ids)
    p = {"rate_events_per_s": rate, "seconds": 5, "events": len(samples)}
    records.append(
        record(
            _BENCH,
            "freshness p50",
            _pct(samples, 0.5) * 1000,
            "ms",
            "XADD->XREADGROUP p50",
            _pct(transport, 0.5) * 1000,
            p,
        )
    )
    records.append(
        record(
            _BENCH,
            "freshness p99",
            _pct(samples, 0.99) * 1000,
            "ms",
            "XADD->XREADGROUP p99",
            _pct(transport, 0.99) * 1000,
            p,
        )
    )
    return records


def _load(port: int, path_for: Any, seconds: float, connections: int) -> tuple[list[float], int, float]:
    """Latencies (ms), errors and wall time of ``connections`` keep-alive clients for ``seconds``."""
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(ci: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine = []
        i = ci
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            conn.request("GET", path_for(i))
            resp = conn.getresponse()
            resp.read()
            mine.append((time.perf_counter() - t0) * 1000)
            if resp.status != 200:
                errors[0] += 1
            i += connections
        conn.close()
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, errors[0], time.perf_counter() - t0


def bench_service(world: Any, url: str, *, seconds: float = 5.0, connections: int = 4) -> list[dict]:
    import redis

    client = redis.Redis.from_url(url)
    client.set("aitasks:feast:aitasks:materialized", "{}")
    port = _free_port()
    env = {
        **os.environ,
        "AITASKS_REDIS_URL": url,
        "AITASKS_STORAGE_ROOT": world.storage_root,
        "AITASKS_LOG_LEVEL": "warning",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    argv = [sys.executable, "-m", "aitasks.cli", "serve-api", "--port", str(port)]
    argv += ["--model-source", "dir", "--models-dir", str(world.models_dir)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/v1/users/u001/recommendations?k=10")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.perf_counter() - t0 > 120:
                raise RuntimeError("serve-api did not answer within 120 s")
            time.sleep(0.02)
        first_answer = time.perf_counter() - t0
        bare = _cold(["-c", "pass"])
        feast = _cold(["-c", "import feast"])
        users = world.user_ids + [f"cold{i}" for i in range(10)]
        reco, err_r, wall_r = _load(
            port, lambda i: f"/v1/users/{users[i % len(users)]}/recommendations?k=10", seconds, connections
        )
        health, err_h, wall_h = _load(port, lambda i: "/healthz", seconds, connections)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    p = {
        "connections": connections,
        "seconds": seconds,
        "k": 10,
        "index_items": len(world.track_ids),
        "errors": err_r + err_h,
    }
    return [
        record(_BENCH, "api p50", statistics.median(reco), "ms", "/healthz p50", statistics.median(health), p),
        record(_BENCH, "api p99", _pct(reco, 0.99), "ms", "/healthz p99", _pct(health, 0.99), p),
        record(
            _BENCH,
            "api requests/s",
            len(reco) / wall_r,
            "req/s",
            "/healthz req/s",
            len(health) / wall_h,
            p,
            higher_is_better=True,
        ),
        record(
            _BENCH,
            "serve-api start -> first answer",
            first_answer,
            "s",
            "python -c pass",
            bare,
            {"model_source": "dir"},
        ),
        record(_BENCH, "import feast (old online read path)", feast, "s", "python -c pass", bare, {}),
    ]


def _cold(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


_ONLINE_READ = """
import sys, time
from pathlib import Path
from aitasks.platform import feature_store as fs
online = fs.SqliteOnline(path=Path(sys.argv[3]))
cfg = fs.FeastConfig(repo_dir=Path(sys.argv[1]), offline_dir=sys.argv[2], online_store=online)
if sys.argv[4] == "feast":
    row = fs.online_features(cfg, user_ids=["u0"])
else:
    from aitasks.serving.online import read_user_row
    row = read_user_row(cfg, "u0")
assert row
"""

# What the first request of an MLflow client to a tracking server (production) imports: the request-header
# plugin registry, where Feast's plugin imports all of Feast. (A sqlite registry never loads it.)
_REGISTRY_CALL = """
import sys
if sys.argv[1] == "guarded":
    from aitasks.serving.model import mlflow_without_feast_plugin
    mlflow_without_feast_plugin()
from mlflow.tracking.request_header.registry import resolve_request_headers
resolve_request_headers()
assert ("feast" in sys.modules) == (sys.argv[1] == "default")
"""


def bench_cold_paths(tmp: Path) -> list[dict]:
    """What ``aitasks recommend`` pays per call, before and after, each as a cold process.

    The online read of one user from a materialized sqlite store through the Feast SDK (before) vs
    :func:`aitasks.serving.online.read_user_row` (after); the first request of an MLflow client to a
    tracking server (it loads MLflow's request-header plugins) with the default plugins (Feast's
    included: before) vs without Feast's plugin (after). A sqlite registry never loads them.
    """
    from datetime import UTC, datetime, timedelta

    import pyarrow as pa
    import pyarrow.parquet as pq

    from aitasks.data_processing.features import TRACK_FEATURES_SCHEMA, USER_FEATURES_SCHEMA
    from aitasks.platform import feature_store as fs

    offline = tmp / "offline"
    offline.mkdir()
    t = datetime(2026, 12, 1, tzinfo=UTC)
    for schema, key, ids, name in (
        (USER_FEATURES_SCHEMA, "user_id", ["u0", "u1"], "user_features.parquet"),
        (TRACK_FEATURES_SCHEMA, "track_id", ["t0", "t1"], "track_features.parquet"),
    ):
        cols: dict[str, list[Any]] = {f.name: [] for f in schema}
        for i, entity in enumerate(ids):
            for f in schema:
                value: Any = entity if f.name == key else t if "timestamp" in f.name else None
                if value is None and not f.name.startswith("audio_"):
                    value = i + 1 if pa.types.is_integer(f.type) else float(i) / 4
                cols[f.name].append(value)
        pq.write_table(pa.table(cols, schema=schema), offline / name)
    cfg = fs.FeastConfig(
        repo_dir=tmp / "repo", offline_dir=str(offline), online_store=fs.SqliteOnline(path=tmp / "o.db")
    )
    fs.apply_repo(cfg)
    fs.materialize(cfg, t + timedelta(days=1))
    args = [str(tmp / "repo"), str(offline), str(tmp / "o.db")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}

    def cold(code: str, *argv: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, *argv], check=True, env=env, capture_output=True)
        return time.perf_counter() - t0

    before_read, after_read = cold(_ONLINE_READ, *args, "feast"), cold(_ONLINE_READ, *args, "serving")
    before_reg, after_reg = cold(_REGISTRY_CALL, "default"), cold(_REGISTRY_CALL, "guarded")
    bare = _cold(["-c", "pass"])
    return [
        record(
            _BENCH,
            "cold online read (aitasks.serving, no Feast SDK)",
            after_read,
            "s",
            "cold online read through the Feast SDK",
            before_read,
            {"store": "sqlite", "bare_python_s": bare},
        ),
        record(
            _BENCH,
            "cold MLflow request headers (without Feast's plugin)",
            after_reg,
            "s",
            "cold MLflow request headers (default plugins)",
            before_reg,
            {"bare_python_s": bare},
        ),
    ]


def bench_serving() -> list[dict]:
    from aitasks.serving.sample import sample_world

    with tempfile.TemporaryDirectory(prefix="aitasks-bench-serving-") as d, _redis() as url:
        world = sample_world(Path(d), users=200, tracks=2000)
        records = bench_updater(world, url) + bench_service(world, url)
        cold = Path(d) / "cold"
        cold.mkdir()
        return records + bench_cold_paths(cold)


if __name__ == "__main__":
    import json

    for r in bench_serving():
        print(json.dumps(r))
