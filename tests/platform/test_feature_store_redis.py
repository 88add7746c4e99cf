"""The Feast repository against a real redis-server (started on a free localhost port per test)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from aitasks.platform import feature_store as fst
from aitasks.runtime.errors import FatalError, ServiceUnavailableError
from tests.data_processing.conftest import SNAPSHOTS, free_port

pytestmark = pytest.mark.integration

USERS_READ = ["u0", "u1", "u2", "nobody"]
TRACKS_READ = ["t0", "t3", "t404", "t2"]


def redis_cfg(tmp_path: Path, offline: Path, url: str, name: str = "redis") -> fst.FeastConfig:
    return fst.FeastConfig(
        repo_dir=tmp_path / name, offline_dir=offline, online_store=fst.RedisOnline(connection_string=url)
    )


def sqlite_cfg(tmp_path: Path, offline: Path) -> fst.FeastConfig:
    return fst.FeastConfig(
        repo_dir=tmp_path / "sqlite", offline_dir=offline, online_store=fst.SqliteOnline(path=tmp_path / "online.db")
    )


def test_redis_online_values_equal_sqlite(tmp_path: Path, feature_files: Path, redis_server: str) -> None:
    on_redis, on_sqlite = redis_cfg(tmp_path, feature_files, redis_server), sqlite_cfg(tmp_path, feature_files)
    for cfg in (on_redis, on_sqlite):
        assert fst.apply_repo(cfg).changed
        assert not fst.apply_repo(cfg).changed
        report = fst.materialize(cfg, SNAPSHOTS[-1])
        assert report.entities_written == 3 + 4
    got_redis = fst.online_features(on_redis, user_ids=USERS_READ, track_ids=TRACKS_READ)
    got_sqlite = fst.online_features(on_sqlite, user_ids=USERS_READ, track_ids=TRACKS_READ)
    assert got_redis == got_sqlite
    assert got_redis["user_plays_7d"][3] is None  # unknown user: nulls, no error
    assert got_redis["track_plays_28d"][0] is not None
    # Feast really wrote to this server: one hash per entity, plus the completeness sentinel.
    client = redis.Redis.from_url(redis_server)
    assert client.dbsize() == 3 + 4 + 1
    assert client.exists(fst.sentinel_key(on_redis.project))
    client.close()


def test_redis_incremental_materialization(tmp_path: Path, feature_files: Path, redis_server: str) -> None:
    cfg = redis_cfg(tmp_path, feature_files, redis_server)
    fst.apply_repo(cfg)
    first = fst.materialize(cfg, SNAPSHOTS[0])
    assert first.entities_written == 3 + 3  # t3 has no snapshot yet
    before = fst.online_features(cfg, user_ids=["u1"], track_ids=["t3"])
    assert before["track_plays_28d"] == [None]

    second = fst.materialize(cfg, SNAPSHOTS[2])
    assert [v.start for v in second.views] == [SNAPSHOTS[0]] * 2
    after = fst.online_features(cfg, user_ids=["u1"], track_ids=["t3"])
    assert after["user_plays_7d"][0] is not None
    assert after["user_plays_7d"][0] > before["user_plays_7d"][0]  # values grow with the snapshot index
    assert after["track_plays_28d"][0] is not None

    assert fst.materialize(cfg, SNAPSHOTS[2]).entities_written == 0  # nothing new: nothing written

    sqlite = sqlite_cfg(tmp_path, feature_files)
    fst.apply_repo(sqlite)
    fst.materialize(sqlite, SNAPSHOTS[2])
    assert after == fst.online_features(sqlite, user_ids=["u1"], track_ids=["t3"])


def test_unreachable_redis_is_a_retryable_service_error(tmp_path: Path, feature_files: Path) -> None:
    port = free_port()  # nothing listens there
    cfg = redis_cfg(tmp_path, feature_files, f"redis://127.0.0.1:{port}/0")
    for call in (
        lambda: fst.apply_repo(cfg),
        lambda: fst.materialize(cfg, SNAPSHOTS[-1]),
        lambda: fst.online_features(cfg, user_ids=["u0"]),
        lambda: fst.check_online_store(cfg),
    ):
        with pytest.raises(ServiceUnavailableError, match=f"127.0.0.1:{port}") as info:
            call()
        assert info.value.retryable
        assert info.value.__cause__ is None  # no raw redis traceback chained in


def test_redis_with_password(
    tmp_path: Path, feature_files: Path, redis_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "p@ss:w0rd/true"
    admin = redis.Redis.from_url(redis_server)
    admin.config_set("requirepass", secret)
    admin.close()
    host_port = redis_server.removeprefix("redis://").removesuffix("/0")
    url = f"redis://:{secret.replace('@', '%40').replace(':', '%3A').replace('/', '%2F')}@{host_port}/0"
    cfg = redis_cfg(tmp_path, feature_files, url)
    assert cfg.online_store.password is not None  # type: ignore[union-attr]
    fst.apply_repo(cfg)
    fst.materialize(cfg, SNAPSHOTS[-1])
    assert fst.online_features(cfg, user_ids=["u0"])["user_plays_7d"][0] is not None
    assert secret not in (cfg.repo_dir / "feature_store.yaml").read_text()
    assert secret not in repr(cfg)

    wrong = redis_cfg(tmp_path, feature_files, f"redis://:nope@{host_port}/0", name="wrong")
    with pytest.raises(FatalError, match="credentials") as info:
        fst.check_online_store(wrong)
    assert not info.value.retryable
    assert "nope" not in str(info.value)
    missing = redis_cfg(tmp_path, feature_files, f"redis://{host_port}/0", name="missing")
    with pytest.raises(FatalError, match="credentials"):
        fst.check_online_store(missing)
