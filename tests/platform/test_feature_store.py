"""The Feast repository on embedded stores: sqlite online store and Parquet offline store in tmp dirs."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
import yaml
from pydantic import ValidationError

from aitasks.data_processing.contract import CONTRACT_VERSION, GENRE_AFFINITY_COLUMNS
from aitasks.data_processing.features import TRACK_FEATURES_SCHEMA, USER_FEATURES_SCHEMA
from aitasks.platform import feature_store as fst
from aitasks.runtime.errors import DataFormatError, InvalidInputError
from tests.data_processing.conftest import ABSENT, SNAPSHOTS, TRACKS, USERS, feature_value

USER_FEATURE_NAMES = [f.name for f in USER_FEATURES_SCHEMA][3:]
TRACK_FEATURE_NAMES = [f.name for f in TRACK_FEATURES_SCHEMA][3:]


def expected(kind: str, entity_id: str, snapshot: int) -> dict[str, object]:
    """What the feature files hold for ``entity_id`` at snapshot index ``snapshot``."""
    schema, ids = (USER_FEATURES_SCHEMA, USERS) if kind == "user" else (TRACK_FEATURES_SCHEMA, TRACKS)
    assert entity_id not in ABSENT.get(snapshot, set())
    e = ids.index(entity_id)
    return {
        f.name: None if f.name.startswith("audio_") else feature_value(f.type, snapshot, e, c)
        for c, f in enumerate(schema)
        if c >= 3
    }


def make_config(tmp_path: Path, offline: Path, **kw: Any) -> fst.FeastConfig:
    return fst.FeastConfig(
        repo_dir=tmp_path / "repo",
        offline_dir=offline,
        online_store=fst.SqliteOnline(path=tmp_path / "repo" / "data" / "online.db"),
        **kw,
    )


@pytest.fixture
def cfg(tmp_path: Path, feature_files: Path) -> fst.FeastConfig:
    return make_config(tmp_path, feature_files)


@pytest.fixture
def applied(cfg: fst.FeastConfig) -> fst.FeastConfig:
    fst.apply_repo(cfg)
    return cfg


def row(result: dict[str, list[object]], i: int, names: list[str]) -> dict[str, object]:
    return {n: result[n][i] for n in names}


# ---------------------------------------------------------------------------------------- config


def test_module_import_does_not_import_feast() -> None:
    code = "import sys, aitasks.platform.feature_store; assert 'feast' not in sys.modules, 'feast imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("name", ["", "1abc", "_x", "a-b", "a b", "x" * 64])
def test_project_must_be_an_identifier(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValidationError, match="project"):
        make_config(tmp_path, tmp_path, project=name)


@pytest.mark.parametrize(
    ("given", "conn", "password"),
    [
        ("redis://127.0.0.1:6379/0", "127.0.0.1:6379,db=0", None),
        ("redis://localhost", "localhost:6379,db=0", None),
        ("redis://:s3cr%2Ft@redis.svc:6380/2", "redis.svc:6380,db=2", "s3cr/t"),
        ("rediss://app:pw@redis.svc:6380/1", 'redis.svc:6380,db=1,username="app",ssl=true', "pw"),
        ("127.0.0.1:6379,db=0", "127.0.0.1:6379,db=0", None),
        ("redis.svc:6379,db=3,password=hunter2,ssl=true", "redis.svc:6379,db=3,ssl=true", "hunter2"),
    ],
)
def test_redis_target_is_normalised(given: str, conn: str, password: str | None) -> None:
    online = fst.RedisOnline(connection_string=given)
    assert online.connection_string == conn
    assert (online.password.get_secret_value() if online.password else None) == password
    if password:
        assert password not in repr(online)
        assert password not in str(online.model_dump())


@pytest.mark.parametrize(
    "bad",
    [
        "http://x:1/0",
        "redis://h:1/x",
        "redis://[::1]:6379/0",
        "a:1,b:2",
        "host",
        "h:port",
        "h:1,color=red",
        "redis://:a,b@h:1/0",
    ],
)
def test_bad_redis_targets_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        fst.RedisOnline(connection_string=bad)


def test_validation_errors_do_not_echo_a_password() -> None:
    with pytest.raises(ValidationError) as info:
        fst.RedisOnline(connection_string="redis://:hunter2@h:1/notadb")
    assert "hunter2" not in str(info.value)


def test_online_store_is_a_discriminated_union(tmp_path: Path) -> None:
    cfg = fst.FeastConfig.model_validate(
        {
            "repo_dir": tmp_path,
            "offline_dir": tmp_path,
            "online_store": {"kind": "redis", "connection_string": "redis://h:1/0"},
        }
    )
    assert isinstance(cfg.online_store, fst.RedisOnline)
    with pytest.raises(ValidationError):
        fst.FeastConfig.model_validate(
            {"repo_dir": tmp_path, "offline_dir": tmp_path, "online_store": {"kind": "memcached"}}
        )
    with pytest.raises(ValidationError):  # extra="forbid"
        make_config(tmp_path, tmp_path, colour="red")


def test_config_for_derives_one_repository_per_project(tmp_path: Path) -> None:
    from aitasks.runtime.settings import Settings

    files: dict[str, Any] = {
        "user_features": tmp_path / "a" / "u.parquet",
        "track_features": tmp_path / "b" / "t.parquet",
    }
    local = fst.config_for(settings=Settings(storage_root=str(tmp_path)), project="reco", **files)
    assert local.repo_dir == tmp_path / "feast" / "reco"
    assert isinstance(local.online_store, fst.SqliteOnline)
    assert local.online_store.path == tmp_path / "feast" / "reco" / "data" / "online.db"
    assert local.offline_file("user_features") == files["user_features"]
    assert local.offline_file("track_features") == files["track_features"]
    assert local == fst.config_for(settings=Settings(storage_root=str(tmp_path)), project="reco", **files)

    on_redis = fst.config_for(
        settings=Settings(storage_root="gs://bucket/root", redis_url="redis://:pw@10.1.2.3:6390/4"),
        project="reco",
        online_store="redis",
        **files,
    )
    assert isinstance(on_redis.online_store, fst.RedisOnline)
    assert on_redis.online_store.address == "10.1.2.3:6390"
    assert on_redis.resolved_registry_path() == "gs://bucket/root/feast/reco/registry.db"
    with pytest.raises(InvalidInputError, match="online_store"):
        fst.config_for(
            settings=Settings(storage_root="gs://bucket/root"), project="reco", online_store="sqlite", **files
        )
    with pytest.raises(ValidationError, match="offline_dir"):
        fst.FeastConfig(repo_dir=tmp_path, online_store=fst.SqliteOnline(path=tmp_path / "x.db"))


def test_yaml_never_holds_the_redis_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from feast.infra.online_stores.redis import RedisOnlineStore
    from feast.repo_config import load_repo_config

    secret = "Tr0ub4dor&3:xyz"
    cfg = fst.FeastConfig(
        repo_dir=tmp_path / "repo",
        offline_dir=tmp_path,
        online_store=fst.RedisOnline(connection_string="redis://10.0.0.9:6379/1", password=secret),
    )
    repo = fst.build_feature_repo(cfg)
    text = repo.yaml_path.read_text()
    assert secret not in text
    assert "${" + fst.REDIS_PASSWORD_ENV + "}" in text
    # Feast's own loader expands the reference from the environment, and parses it back exactly.
    monkeypatch.setenv(fst.REDIS_PASSWORD_ENV, secret)
    loaded = load_repo_config(repo.yaml_path.parent, repo.yaml_path)
    nodes, params = RedisOnlineStore._parse_connection_string(loaded.online_store.connection_string)
    assert nodes == [{"host": "10.0.0.9", "port": "6379"}]
    assert params["password"] == secret
    assert params["db"] == 1
    assert params["socket_connect_timeout"] == 1


def test_yaml_is_rendered_from_config(cfg: fst.FeastConfig) -> None:
    repo = fst.build_feature_repo(cfg)
    doc = yaml.safe_load(repo.yaml_path.read_text())
    assert doc["project"] == cfg.project
    assert doc["online_store"] == {"type": "sqlite", "path": str(cfg.online_store.path)}  # type: ignore[union-attr]
    assert doc["registry"]["path"] == cfg.resolved_registry_path()
    assert doc["offline_store"] == {"type": "file"}
    mtime = repo.yaml_path.stat().st_mtime_ns
    fst.build_feature_repo(cfg)
    assert repo.yaml_path.stat().st_mtime_ns == mtime  # unchanged content: not rewritten


# ------------------------------------------------------------------------------------- definitions


def test_feature_views_have_explicit_typed_schema(cfg: fst.FeastConfig) -> None:
    from feast import types as ft

    repo = fst.build_feature_repo(cfg)
    to_feast = {pa.int64(): ft.Int64, pa.float32(): ft.Float32}
    for view, schema, key in (
        (repo.user_features, USER_FEATURES_SCHEMA, "user_id"),
        (repo.track_features, TRACK_FEATURES_SCHEMA, "track_id"),
    ):
        declared = {f.name: f.dtype for f in view.features}
        assert declared == {f.name: to_feast[f.type] for f in schema if f.name not in (key, *_TIMES)}
        assert view.entity_columns[0].name == key
        assert view.ttl == timedelta(days=cfg.ttl_days)
        assert view.online is True
        assert view.tags["owner"] == cfg.owner
        assert view.tags["contract_version"] == CONTRACT_VERSION
        assert view.batch_source is not None
        assert view.batch_source.timestamp_field == "event_timestamp"
        assert view.batch_source.created_timestamp_column == "created_timestamp"
    assert list(GENRE_AFFINITY_COLUMNS) == [n for n in USER_FEATURE_NAMES if "affinity" in n]


_TIMES = ("event_timestamp", "created_timestamp")


def test_feature_services_hold_exactly_the_expected_features(applied: fst.FeastConfig) -> None:
    store = fst.open_store(applied)

    def content(name: str) -> dict[str, list[str]]:
        service = store.get_feature_service(name)
        return {p.name: [f.name for f in p.features] for p in service.feature_view_projections}

    assert content("reco_training") == {"user_features": USER_FEATURE_NAMES, "track_features": TRACK_FEATURE_NAMES}
    assert content("reco_serving") == {
        "user_features": list(fst.SERVING_USER_FEATURES),
        "track_features": TRACK_FEATURE_NAMES,
    }
    assert set(fst.SERVING_USER_FEATURES) <= set(USER_FEATURE_NAMES)


# ------------------------------------------------------------------------------------------- apply


def test_apply_is_idempotent(cfg: fst.FeastConfig) -> None:
    first = fst.apply_repo(cfg)
    assert first.changed
    assert first.feature_views == ["user_features", "track_features"]
    assert first.feature_services == ["reco_training", "reco_serving"]
    assert {(c.kind, c.name) for c in first.changes} >= {
        ("entity", "user"),
        ("entity", "track"),
        ("feature view", "user_features"),
        ("feature view", "track_features"),
        ("feature service", "reco_training"),
        ("feature service", "reco_serving"),
    }
    assert all(c.transition == "CREATE" for c in first.changes)
    registry = Path(cfg.resolved_registry_path())
    before = registry.read_bytes()

    again = fst.apply_repo(cfg)  # objects built anew, as a fresh process would
    assert not again.changed
    assert again.changes == []
    assert again.infra_changes == []
    assert registry.read_bytes() == before

    fst.materialize(cfg, SNAPSHOTS[-1])
    assert not fst.apply_repo(cfg).changed  # materialization bookkeeping is not a definition change


def test_apply_reports_a_real_change(cfg: fst.FeastConfig) -> None:
    fst.apply_repo(cfg)
    changed = fst.apply_repo(cfg.model_copy(update={"ttl_days": 7}))
    assert changed.changed
    assert {(c.name, c.transition) for c in changed.changes} == {
        ("user_features", "UPDATE"),
        ("track_features", "UPDATE"),
    }
    assert all("ttl" in c.properties for c in changed.changes)


def test_apply_refuses_missing_or_broken_offline_files(cfg: fst.FeastConfig) -> None:
    cfg.offline_file("track_features").unlink()
    with pytest.raises(DataFormatError, match=r"track_features\.parquet"):
        fst.apply_repo(cfg)
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"track_id": ["t0"]}), cfg.offline_file("track_features"))
    with pytest.raises(DataFormatError, match="missing column"):
        fst.apply_repo(cfg)


# ------------------------------------------------------------------------------------- materialize


def test_materialize_then_online_read_returns_the_latest_snapshot(applied: fst.FeastConfig) -> None:
    report = fst.materialize(applied, SNAPSHOTS[-1])
    by_view = {v.feature_view: v for v in report.views}
    assert by_view["user_features"].entities_written == len(USERS)
    assert by_view["user_features"].rows_in_window == 3 * len(USERS) - 1  # u2 missing from snapshot 1
    assert by_view["track_features"].rows_in_window == 3 * len(TRACKS) - 2  # t3 only in snapshot 2
    assert by_view["track_features"].entities_written == len(TRACKS)

    got = fst.online_features(applied, user_ids=["u1", "u2"])
    assert list(got)[: 1 + len(USER_FEATURE_NAMES)] == ["user_id", *USER_FEATURE_NAMES]
    assert row(got, 0, USER_FEATURE_NAMES) == expected("user", "u1", 2)
    assert row(got, 1, USER_FEATURE_NAMES) == expected("user", "u2", 2)

    # Same end again: incremental, so nothing is re-read or re-written.
    again = fst.materialize(applied, SNAPSHOTS[-1])
    assert all(v.skipped for v in again.views)
    assert again.entities_written == 0


def test_materialize_incrementally_moves_online_values_forward(applied: fst.FeastConfig) -> None:
    fst.materialize(applied, SNAPSHOTS[1])
    got = fst.online_features(applied, user_ids=["u0", "u2"], track_ids=["t1", "t3"])
    assert row(got, 0, USER_FEATURE_NAMES) == expected("user", "u0", 1)
    assert row(got, 1, USER_FEATURE_NAMES) == expected("user", "u2", 0)  # absent at snapshot 1
    assert row(got, 0, TRACK_FEATURE_NAMES) == expected("track", "t1", 1)
    assert all(v is None for v in row(got, 1, TRACK_FEATURE_NAMES).values())  # t3: not released yet

    second = fst.materialize(applied, SNAPSHOTS[2])
    assert [v.start for v in second.views] == [SNAPSHOTS[1]] * 2  # continues where it stopped
    got = fst.online_features(applied, user_ids=["u0", "u2"], track_ids=["t1", "t3"])
    assert row(got, 0, USER_FEATURE_NAMES) == expected("user", "u0", 2)
    assert row(got, 1, USER_FEATURE_NAMES) == expected("user", "u2", 2)
    assert row(got, 1, TRACK_FEATURE_NAMES) == expected("track", "t3", 2)


def test_materialize_rejects_naive_or_reversed_windows(applied: fst.FeastConfig) -> None:
    with pytest.raises(InvalidInputError, match="end"):
        fst.materialize(applied, datetime(2025, 3, 3))  # naive: the point of the test
    with pytest.raises(InvalidInputError, match="start"):
        fst.materialize(applied, SNAPSHOTS[0], start=SNAPSHOTS[1])


def test_materialize_before_apply_is_a_clear_error(cfg: fst.FeastConfig) -> None:
    from aitasks.runtime.errors import FatalError

    with pytest.raises(FatalError, match="apply"):
        fst.materialize(cfg, SNAPSHOTS[-1])


def test_explicit_window_rewrites(applied: fst.FeastConfig) -> None:
    fst.materialize(applied, SNAPSHOTS[0], start=SNAPSHOTS[0])
    assert row(fst.online_features(applied, user_ids=["u1"]), 0, USER_FEATURE_NAMES) == expected("user", "u1", 0)


# ---------------------------------------------------------------------------------- online reads


def test_unknown_entities_online_are_nulls_not_errors(applied: fst.FeastConfig) -> None:
    fst.materialize(applied, SNAPSHOTS[-1])
    got = fst.online_features(applied, user_ids=["u0", "nobody"], track_ids=["t404", "t0"])
    assert got["user_id"] == ["u0", "nobody"]
    assert row(got, 0, USER_FEATURE_NAMES) == expected("user", "u0", 2)
    assert all(v is None for v in row(got, 1, USER_FEATURE_NAMES).values())
    assert all(v is None for v in row(got, 0, TRACK_FEATURE_NAMES).values())
    assert row(got, 1, TRACK_FEATURE_NAMES) == expected("track", "t0", 2)


def test_online_read_before_materialize_is_not_ready(applied: fst.FeastConfig) -> None:
    # An empty store is "not ready", never "no features" (issue 14, finding 12).
    with pytest.raises(fst.StoreNotReadyError, match="no complete materialization") as info:
        fst.online_features(applied, track_ids=["t0"])
    assert info.value.retryable
    fst.materialize(applied, SNAPSHOTS[0])
    got = fst.online_features(applied, track_ids=["t404"])
    assert got["track_id"] == ["t404"]
    assert all(got[n] == [None] for n in TRACK_FEATURE_NAMES)  # an unknown id: no features, no error
    assert not any(n in got for n in USER_FEATURE_NAMES)  # only the track part of the service was read


def test_one_user_is_broadcast_over_candidate_tracks(applied: fst.FeastConfig) -> None:
    fst.materialize(applied, SNAPSHOTS[-1])
    store = fst.open_store(applied)
    got = fst.online_features(applied, user_ids=["u1"], track_ids=["t0", "t1", "t2"], store=store)
    assert got["user_id"] == ["u1"] * 3
    assert got["track_plays_28d"] == [expected("track", t, 2)["track_plays_28d"] for t in ("t0", "t1", "t2")]


def test_online_read_input_errors(applied: fst.FeastConfig) -> None:
    with pytest.raises(InvalidInputError, match="user_ids"):
        fst.online_features(applied)
    with pytest.raises(InvalidInputError, match="user_ids"):
        fst.online_features(applied, user_ids=["u0", "u1"], track_ids=["t0", "t1", "t2"])


# ----------------------------------------------------------------------------- historical (PIT)


def test_historical_retrieval_is_point_in_time_correct(applied: fst.FeastConfig) -> None:
    s0, s1, s2 = SNAPSHOTS
    us = timedelta(microseconds=1)
    cases = [
        # (user, track, time, user snapshot expected, track snapshot expected); None = no row
        ("u0", "t0", s0 - us, None, None),  # before the first snapshot: nothing, not the first one
        ("u0", "t0", s0, 0, 0),  # exactly at a snapshot: that snapshot (event_timestamp <= t)
        ("u1", "t1", s1 - us, 0, 0),  # just before snapshot 1: never the later one
        ("u1", "t2", s1, 1, 1),
        ("u2", "t0", s1 + timedelta(hours=12), 0, 1),  # u2 absent at snapshot 1: its latest older row
        # t3 only has a later snapshot: no track features, and the user's must survive (Feast's
        # dask store would drop the whole row here).
        ("u1", "t3", s1 + timedelta(hours=12), 1, None),
        ("u2", "t3", s2 + timedelta(hours=23), 2, 2),
        ("u0", "t1", s2 + timedelta(days=applied.ttl_days + 1), None, None),  # older than the TTL
    ]
    entity_df = pd.DataFrame(
        {
            "user_id": [c[0] for c in cases],
            "track_id": [c[1] for c in cases],
            "event_timestamp": pd.to_datetime([c[2] for c in cases], utc=True),
            "label": list(range(len(cases))),
        }
    )
    out = fst.historical_features(applied, entity_df)
    assert list(out["label"]) == list(range(len(cases)))  # every row, in entity_df order
    assert list(out.columns) == [
        "user_id",
        "track_id",
        "event_timestamp",
        "label",
        *USER_FEATURE_NAMES,
        *TRACK_FEATURE_NAMES,
    ]
    for i, (user, track, _, user_snap, track_snap) in enumerate(cases):
        got_user = out.loc[i, USER_FEATURE_NAMES].to_dict()
        got_track = out.loc[i, [n for n in TRACK_FEATURE_NAMES if not n.startswith("audio_")]].to_dict()
        if user_snap is None:
            assert all(pd.isna(v) for v in got_user.values()), (i, got_user)
        else:
            assert got_user == expected("user", user, user_snap), i
        if track_snap is None:
            assert all(pd.isna(v) for v in got_track.values()), (i, got_track)
        else:
            want = {k: v for k, v in expected("track", track, track_snap).items() if not k.startswith("audio_")}
            assert got_track == want, i
        assert all(pd.isna(out.loc[i, n]) for n in TRACK_FEATURE_NAMES if n.startswith("audio_"))


def test_historical_retrieval_validates_the_entity_frame(applied: fst.FeastConfig) -> None:
    with pytest.raises(InvalidInputError, match="event_timestamp"):
        fst.historical_features(applied, pd.DataFrame({"user_id": ["u0"], "track_id": ["t0"]}))
    naive = pd.DataFrame({"user_id": ["u0"], "track_id": ["t0"], "event_timestamp": [pd.Timestamp("2025-03-02")]})
    with pytest.raises(InvalidInputError, match="timezone"):
        fst.historical_features(applied, naive)
    no_track = pd.DataFrame({"user_id": ["u0"], "event_timestamp": pd.to_datetime(["2025-03-02"], utc=True)})
    with pytest.raises(InvalidInputError, match="track_id"):
        fst.historical_features(applied, no_track)
