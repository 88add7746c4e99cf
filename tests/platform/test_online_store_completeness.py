"""An empty or half-written online store is never taken for a healthy one (issue 14, finding 12).

Before: after Redis restarted without its data, ``feast.materialize`` was an idempotent hit (exit 0) and
every online read returned ``None`` without an error; a materialize that died part way left a partial
store that nothing marked incomplete. Now materialize writes a sentinel last and rewrites a store
without it (the task's hit re-checks it too), and readers raise ``StoreNotReadyError``.

Each test runs its own redis-server on a free port (``--save ''``: a restart comes back empty); the
shared Redis is never touched.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from aitasks.platform import feature_store as fst
from tests.conftest import CapturedRuntime, skip_or_fail
from tests.data_processing.conftest import SNAPSHOTS, free_port

pytestmark = pytest.mark.integration

USERS = ["u0", "u1", "u2"]
TRACKS = ["t0", "t1", "t2", "t3"]


class ThrowawayRedis:
    """A redis-server without persistence on a free port, restartable in place (it comes back empty)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            skip_or_fail("redis-server binary not found on PATH")
        self.binary = str(binary)
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--daemonize", "no", "--dir", str(self.workdir)]
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(argv, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while True:
                if self.proc.poll() is not None:
                    skip_or_fail(f"redis-server exited with {self.proc.returncode}")
                with contextlib.suppress(redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    skip_or_fail(f"redis-server on port {self.port} did not answer PING within 10 s")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def restart_empty(self) -> None:
        """What a Redis without persistence does after a crash or a pod reschedule: back, with nothing."""
        self.stop()
        self.start()

    def dbsize(self) -> int:
        client = redis.Redis.from_url(self.url)
        try:
            return int(client.dbsize())  # type: ignore[arg-type]
        finally:
            client.close()


@pytest.fixture
def throwaway_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis(tmp_path_factory.mktemp("redis-restart"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _cfg(tmp_path: Path, offline: Path, url: str) -> fst.FeastConfig:
    return fst.FeastConfig(
        repo_dir=tmp_path / "repo", offline_dir=offline, online_store=fst.RedisOnline(connection_string=url)
    )


def _read(cfg: fst.FeastConfig) -> dict[str, list[Any]]:
    return fst.online_features(cfg, user_ids=["u1"], track_ids=["t0"], ready_cache_s=0)


def test_redis_restarted_empty_is_not_ready_and_the_next_materialize_rewrites_it(
    tmp_path: Path, feature_files: Path, throwaway_redis: ThrowawayRedis
) -> None:
    cfg = _cfg(tmp_path, feature_files, throwaway_redis.url)
    fst.apply_repo(cfg)
    first = fst.materialize(cfg, SNAPSHOTS[-1])
    assert not first.rewritten and first.entities_written == 3 + 4
    assert first.sentinel["views"]["user_features"]["entities_written"] == 3
    healthy = _read(cfg)
    assert healthy["user_plays_7d"][0] is not None

    throwaway_redis.restart_empty()
    assert throwaway_redis.dbsize() == 0
    # Before: every read returned None values and no error. Now: "not ready", never "no features".
    with pytest.raises(fst.StoreNotReadyError, match="no complete materialization"):
        _read(cfg)

    # The registry still says "materialized up to the end": before, this was a skip that wrote nothing.
    again = fst.materialize(cfg, SNAPSHOTS[-1])
    assert again.rewritten and "no completeness sentinel" in again.rewrite_reason
    assert again.entities_written == 3 + 4 and not any(v.skipped for v in again.views)
    assert _read(cfg) == healthy
    assert throwaway_redis.dbsize() == 3 + 4 + 1  # every entity, and the sentinel
    # Complete again: the next call is a plain incremental skip.
    third = fst.materialize(cfg, SNAPSHOTS[-1])
    assert not third.rewritten and third.entities_written == 0 and all(v.skipped for v in third.views)


def test_a_materialize_that_died_part_way_is_not_ready_and_is_rewritten(
    tmp_path: Path, feature_files: Path, throwaway_redis: ThrowawayRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feast import FeatureStore

    cfg = _cfg(tmp_path, feature_files, throwaway_redis.url)
    fst.apply_repo(cfg)
    real = FeatureStore.materialize
    calls: list[list[str]] = []

    def dies_after_the_first_view(self: FeatureStore, *args: Any, **kwargs: Any) -> Any:
        calls.append(list(kwargs.get("feature_views") or []))
        if len(calls) == 2:
            raise RuntimeError("killed part way")  # stands in for a SIGKILL between the two views
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "materialize", dies_after_the_first_view)
    with pytest.raises(RuntimeError, match="killed part way"):
        fst.materialize(cfg, SNAPSHOTS[-1])
    monkeypatch.setattr(FeatureStore, "materialize", real)
    assert throwaway_redis.dbsize() == 3  # the users were written, the tracks were not: a partial store
    with pytest.raises(fst.StoreNotReadyError):
        _read(cfg)

    redone = fst.materialize(cfg, SNAPSHOTS[-1])
    assert redone.rewritten and redone.entities_written == 3 + 4
    assert _read(cfg)["track_plays_28d"][0] is not None

    # An incremental run that dies after its first view leaves the older sentinel, which then no longer
    # matches the registry: the next run rewrites instead of trusting the registry's ends.
    real_incremental = FeatureStore.materialize_incremental
    incremental: list[int] = []

    def incremental_dies(self: FeatureStore, *args: Any, **kwargs: Any) -> Any:
        incremental.append(1)
        if len(incremental) == 2:
            raise RuntimeError("killed part way")
        return real_incremental(self, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "materialize_incremental", incremental_dies)
    later = SNAPSHOTS[-1] + timedelta(days=1)
    with pytest.raises(RuntimeError, match="killed part way"):
        fst.materialize(cfg, later)
    monkeypatch.setattr(FeatureStore, "materialize_incremental", real_incremental)
    sentinel = fst.read_sentinel(cfg)
    assert sentinel is not None and sentinel["end_epoch"] == SNAPSHOTS[-1].timestamp()  # the older record
    assert _read(cfg)["user_plays_7d"][0] is not None  # complete up to the older end: still readable
    after = fst.materialize(cfg, later)
    assert after.rewritten and "registry" in after.rewrite_reason


def test_the_task_hit_rechecks_the_store_and_rewrites_a_lost_one(
    tmp_path: Path, feature_files: Path, throwaway_redis: ThrowawayRedis
) -> None:
    from aitasks.data_processing.tasks import materialize_features_task
    from aitasks.runtime.settings import Settings
    from aitasks.runtime.task import RunContext, Runtime
    from aitasks.runtime.telemetry import Telemetry

    c = CapturedRuntime(tmp_path)
    settings = Settings(
        storage_root=str(tmp_path / "store"),
        actor="pytest",
        redis_url=throwaway_redis.url,
        input_roots=(str(tmp_path),),
    )
    rt = Runtime.create(settings, run=RunContext(run_id="run-f12"), telemetry=Telemetry(span_exporter=c.spans))
    params = {
        "user_features_uri": str(feature_files / "user_features.parquet"),
        "track_features_uri": str(feature_files / "track_features.parquet"),
        "end": SNAPSHOTS[-1].isoformat(),
        "project": "completeness",
        "online_store": "redis",
    }
    first = materialize_features_task(params, runtime=rt)
    assert first.entities_written == 3 + 4 and not first.online_rewritten
    assert materialize_features_task(params, runtime=rt) == first  # intact: a hit
    cfg = fst.serving_config(settings, project="completeness", online_store="redis")

    throwaway_redis.restart_empty()
    # Before: an idempotent hit (exit 0) over an empty store. Now the hit re-checks the sentinel and runs.
    again = materialize_features_task(params, runtime=rt)
    assert again.online_rewritten and again.entities_written == 3 + 4
    records = [r for r in rt.audit.records() if r["task"] == "feast.materialize" and r["status"] != "started"]
    assert [r["status"] for r in records] == ["succeeded", "idempotent_hit", "succeeded"]
    assert "no completeness sentinel" in records[-1]["rerun_reason"]
    assert fst.online_features(cfg, user_ids=["u1"], ready_cache_s=0)["user_plays_7d"][0] is not None
    assert materialize_features_task(params, runtime=rt) == again  # complete again: a hit
