"""The Feast-free codec against Feast itself, on a real redis-server: what Feast writes we read, what we
write Feast's ``get_online_features`` reads, value for value."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from aitasks.platform import feature_store as fst
from aitasks.serving.online import Keys, OnlineReader
from aitasks.serving.updater import Updater, UpdaterConfig, index_catalog, index_model_loader
from tests.data_processing.conftest import SNAPSHOTS, feature_files  # noqa: F401 - fixture
from tests.serving.conftest import World
from tests.serving.test_updater import event

pytestmark = pytest.mark.integration


def test_reads_and_writes_match_feast(tmp_path: Path, feature_files: Path, redis_server: str, world: World) -> None:  # noqa: F811
    cfg = fst.FeastConfig(
        repo_dir=tmp_path / "repo",
        offline_dir=feature_files,
        online_store=fst.RedisOnline(connection_string=redis_server),
    )
    fst.apply_repo(cfg)
    fst.materialize(cfg, SNAPSHOTS[-1])
    client = redis.Redis.from_url(redis_server)
    reader = OnlineReader(client, Keys(cfg.project))
    assert reader.ready()
    users = ["u0", "u1", "u2", "nobody"]

    def feast_rows(ids: list[str]) -> list[dict | None]:
        got = fst.online_features(cfg, user_ids=ids, ready_cache_s=0)
        names = [n for n, _ in fst.USER_FEATURES]
        rows: list[dict | None] = []
        for i in range(len(ids)):
            row = {n: got[n][i] for n in names}
            rows.append(None if all(v is None for v in row.values()) else row)
        return rows

    # Feast wrote (materialize): the reader sees the same values.
    assert reader.users(users) == feast_rows(users)

    # The updater wrote: Feast's own read path sees exactly the updater's values.
    settings = world.settings(redis_server)
    up = Updater(
        client,
        UpdaterConfig(project=cfg.project, consumer="c1", block_ms=20),
        model_loader=index_model_loader(settings, world.source(), "reco-tracks"),
        known_tracks=index_catalog(settings, "reco-tracks"),
    )
    up.setup()
    for i, (user, track) in enumerate([("u0", "t0001"), ("live-user", "t0002"), ("live-user", "t0003")]):
        client.xadd(
            "aitasks:events", event(i, user, world.track_ids[int(track[1:])], minutes_ago=3 + i, skipped=i == 2)
        )
    for _ in range(3):
        up.step()
    ours = reader.users(["u0", "live-user"])
    assert ours[1] is not None and ours[1]["user_plays_28d"] == 2 and ours[1]["user_skip_rate_28d"] == 0.5
    assert ours == feast_rows(["u0", "live-user"])


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_read_user_row_matches_feast_on_both_online_stores(
    tmp_path: Path,
    feature_files: Path,  # noqa: F811
    redis_server: str,
    kind: str,
) -> None:
    from aitasks.serving.online import read_user_row

    store: fst.RedisOnline | fst.SqliteOnline = (
        fst.RedisOnline(connection_string=redis_server) if kind == "redis" else fst.SqliteOnline(path=tmp_path / "o.db")
    )
    cfg = fst.FeastConfig(repo_dir=tmp_path / "repo", offline_dir=feature_files, online_store=store)
    with pytest.raises(fst.StoreNotReadyError):
        read_user_row(cfg, "u0")
    fst.apply_repo(cfg)
    fst.materialize(cfg, SNAPSHOTS[-1])
    users = ["u0", "u1", "u2", "nobody"]
    got = fst.online_features(cfg, user_ids=users, ready_cache_s=0)
    for i, user in enumerate(users):
        want = {n: got[n][i] for n, _ in fst.USER_FEATURES}
        row = read_user_row(cfg, user)
        assert row == (None if all(v is None for v in want.values()) else want), user
