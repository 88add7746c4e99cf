"""Feast in production: the SQL registry on PostgreSQL and offline files on ``gs://`` (integration).

Each test gets a fresh database on the machine's PostgreSQL (dropped afterwards); the ``gs://`` test
uses a local GCS emulator and a throwaway redis-server, as the pipelines do on a cluster.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
import yaml

from aitasks.platform import feature_store as fst
from aitasks.runtime.errors import DataFormatError, FatalError, InvalidInputError, ServiceUnavailableError
from aitasks.runtime.settings import Settings
from tests.data_processing.conftest import SNAPSHOTS, USERS, free_port
from tests.fixtures.services import fresh_database, gcs_emulator
from tests.platform.test_feature_store import USER_FEATURE_NAMES, expected

pytestmark = pytest.mark.integration

BUCKET = "feast-test"


@pytest.fixture
def registry_url() -> Iterator[str]:
    with fresh_database("aitasks_feast") as url:
        yield url


def sql_cfg(tmp_path: Path, offline: Path | str, registry: str, name: str = "repo") -> fst.FeastConfig:
    return fst.FeastConfig(
        repo_dir=tmp_path / name,
        offline_dir=offline,
        online_store=fst.SqliteOnline(path=tmp_path / "online.db"),
        registry_path=registry,
    )


def registry_rows(url: str, table: str, project: str) -> list[str]:
    column = {"entities": "entity_name", "feature_views": "feature_view_name"}[table]
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT {column} FROM {table} WHERE project_id = %s", (project,)).fetchall()
    return sorted(r[0] for r in rows)


# ------------------------------------------------------------------------------------ config only


def test_sql_registry_url_is_normalised_and_its_password_kept_out_of_files(tmp_path: Path) -> None:
    secret = "s3cr@t/pw"
    cfg = sql_cfg(tmp_path, tmp_path, "postgresql://feast:s3cr%40t%2Fpw@db.svc:5433/feast")
    assert cfg.registry_kind == "sql"
    assert cfg.resolved_registry_path() == "postgresql+psycopg://feast@db.svc:5433/feast"
    assert cfg.registry_password is not None and cfg.registry_password.get_secret_value() == secret
    assert secret not in repr(cfg) and "s3cr" not in repr(cfg)

    doc = yaml.safe_load(fst.build_feature_repo(cfg).yaml_path.read_text())
    assert doc["registry"]["registry_type"] == "sql"
    assert doc["registry"]["path"] == "postgresql+psycopg://feast@db.svc:5433/feast"  # libpq: PGPASSWORD
    assert "s3cr" not in fst.build_feature_repo(cfg).yaml_path.read_text()

    from feast import RepoConfig

    from aitasks.platform.feature_store.config import render

    in_memory = RepoConfig(**render(cfg, with_secrets=True))
    from sqlalchemy.engine import make_url

    assert make_url(in_memory.registry.path).password == secret  # quoted in the URL, exact once parsed
    assert in_memory.registry.registry_type == "sql"


@pytest.mark.parametrize("bad", ["postgresql://host-only", "postgresql://u@h:notaport/db"])
def test_bad_registry_urls_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="registry URL"):
        sql_cfg(tmp_path, tmp_path, bad)


def test_config_for_takes_the_registry_from_settings(tmp_path: Path) -> None:
    files: dict[str, Any] = {"user_features": "gs://b/f/u.parquet", "track_features": "gs://b/f/t.parquet"}
    settings = Settings(
        storage_root="gs://b/root",
        feast_online_store="redis",
        feast_registry="postgresql://feast:pw@pg.aitasks:5432/feast",
    )
    cfg = fst.config_for(settings=settings, project="reco", **files)
    assert cfg.registry_kind == "sql"
    assert cfg.resolved_registry_path() == "postgresql+psycopg://feast@pg.aitasks:5432/feast"
    assert cfg.offline_uri("user_features") == "gs://b/f/u.parquet"
    assert cfg.data_uri("offline", "x.parquet") == "gs://b/root/feast/reco/offline/x.parquet"
    with pytest.raises(ValueError, match="not a local file"):
        cfg.offline_file("user_features")
    # Without the setting: the file registry under the storage root, as before.
    plain_settings = Settings(storage_root="gs://b/root", feast_online_store="redis")
    plain = fst.config_for(settings=plain_settings, project="reco", **files)
    assert plain.resolved_registry_path() == "gs://b/root/feast/reco/registry.db"
    with pytest.raises(InvalidInputError, match="AITASKS_FEAST_REGISTRY"):
        fst.config_for(settings=Settings(feast_registry="mysql://u@h/db"), project="reco", **files)


def test_sources_record_paths_relative_to_the_store(tmp_path: Path, feature_files: Path) -> None:
    repo = fst.build_feature_repo(sql_cfg(tmp_path, feature_files, "postgresql://u@h:5432/db"))
    assert repo.user_source.path == "offline/user_features.parquet"
    assert repo.track_source.path == "offline/track_features.parquet"


# ------------------------------------------------------------------------------------ PostgreSQL


def test_sql_registry_apply_materialize_and_read(tmp_path: Path, feature_files: Path, registry_url: str) -> None:
    cfg = sql_cfg(tmp_path, feature_files, registry_url)
    first = fst.apply_repo(cfg)
    assert first.changed and first.registry_path.startswith("postgresql+psycopg://")
    assert not fst.apply_repo(cfg).changed, "a second apply from a fresh object set changes nothing"
    assert registry_rows(registry_url, "feature_views", cfg.project) == ["track_features", "user_features"]
    assert registry_rows(registry_url, "entities", cfg.project) == ["__dummy", "track", "user"]

    report = fst.materialize(cfg, SNAPSHOTS[-1])
    assert report.entities_written == 3 + 4
    got = fst.online_features(cfg, user_ids=list(USERS))
    assert {n: got[n][1] for n in USER_FEATURE_NAMES} == expected("user", "u1", 2)
    assert all(v.skipped for v in fst.materialize(cfg, SNAPSHOTS[-1]).views), "the interval is in the registry"

    # Another process's view of the same registry, with the files somewhere else: the registry does not
    # name a local path, so a reader anywhere sees the same sources.
    elsewhere = sql_cfg(tmp_path, feature_files, registry_url, name="elsewhere")
    assert not fst.apply_repo(elsewhere).changed
    import pandas as pd

    entity = pd.DataFrame(
        {"user_id": ["u0"], "track_id": ["t0"], "event_timestamp": pd.to_datetime([SNAPSHOTS[1]], utc=True)}
    )
    out = fst.historical_features(elsewhere, entity)
    assert {n: out.loc[0, n] for n in USER_FEATURE_NAMES} == expected("user", "u0", 1)


def _apply_in_process(args: tuple[str, str, str, str]) -> tuple[bool, str]:
    """One writer: wait for the start signal, then apply (a fresh process with its own repo dir, as a pod)."""
    repo_dir, offline, registry, go = args
    from aitasks.platform import feature_store as fs

    cfg = fs.FeastConfig(
        repo_dir=Path(repo_dir),
        offline_dir=offline,
        # One online store for all, as pods share Redis (the registry records its tables).
        online_store=fs.SqliteOnline(path=Path(go).parent / "online.db"),
        registry_path=registry,
    )
    repo = fs.build_feature_repo(cfg)
    deadline = time.monotonic() + 300
    while not Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        return fs.apply_repo(cfg, repo).changed, ""
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"


def test_concurrent_first_applies_all_succeed(tmp_path: Path, feature_files: Path, registry_url: str) -> None:
    writers = 3
    go = tmp_path / "go"
    args = [(str(tmp_path / f"w{i}"), str(feature_files), registry_url, str(go)) for i in range(writers)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(writers) as pool:
        pending = pool.map_async(_apply_in_process, args)
        time.sleep(2.0)  # let the writers import Feast and build their objects; they start together
        go.touch()
        results = pending.get(timeout=600)
    assert [err for _, err in results] == [""] * writers, results
    assert any(changed for changed, _ in results)
    cfg = sql_cfg(tmp_path, feature_files, registry_url, name="after")
    assert not fst.apply_repo(cfg).changed
    assert registry_rows(registry_url, "feature_views", cfg.project) == ["track_features", "user_features"]


def test_unreachable_or_refused_registry_is_a_typed_error(
    tmp_path: Path, feature_files: Path, registry_url: str
) -> None:
    port = free_port()  # nothing listens there
    down = sql_cfg(tmp_path, feature_files, f"postgresql://postgres@127.0.0.1:{port}/feast")
    for call in (lambda: fst.apply_repo(down), lambda: fst.open_store(down), lambda: fst.check_registry(down)):
        with pytest.raises(ServiceUnavailableError, match=f"127.0.0.1:{port}/feast") as info:
            call()
        assert info.value.retryable
        assert info.value.__cause__ is None
    missing = sql_cfg(tmp_path, feature_files, registry_url.rsplit("/", 1)[0] + "/no_such_database_here")
    with pytest.raises(FatalError, match="no_such_database_here") as fatal:
        fst.check_registry(missing)
    assert not fatal.value.retryable


# ------------------------------------------------------------------------------------ gs:// offline


@pytest.fixture
def gcs(tmp_path: Path) -> Iterator[str]:
    with gcs_emulator(tmp_path / "gcs", BUCKET) as url:
        yield url


def test_offline_files_on_gcs_are_read_through_local_copies(
    tmp_path: Path, feature_files: Path, registry_url: str, redis_server: str, gcs: str
) -> None:
    from aitasks.runtime.storage import storage_for

    st = storage_for(f"gs://{BUCKET}/x")
    for name in ("user_features.parquet", "track_features.parquet"):
        st.put_file(feature_files / name, f"gs://{BUCKET}/features/{name}")
    settings = Settings(
        storage_root=f"gs://{BUCKET}/root",
        feast_online_store="redis",
        redis_url=redis_server,
        feast_registry=registry_url,
    )
    cfg = fst.config_for(
        settings=settings,
        project="gcs_test",
        user_features=f"gs://{BUCKET}/features/user_features.parquet",
        track_features=f"gs://{BUCKET}/features/track_features.parquet",
    )
    assert fst.apply_repo(cfg).changed
    assert fst.materialize(cfg, SNAPSHOTS[-1]).entities_written == 3 + 4
    got = fst.online_features(fst.serving_config(settings, project="gcs_test"), user_ids=["u2"])
    assert {n: got[n][0] for n in USER_FEATURE_NAMES} == expected("user", "u2", 2)

    st.delete(f"gs://{BUCKET}/features/track_features.parquet")
    with pytest.raises(DataFormatError, match=r"track_features\.parquet") as info:
        fst.materialize(cfg, SNAPSHOTS[-1], start=SNAPSHOTS[0])
    assert "gs://" in str(info.value), "the error names the object, not a temp copy"


def test_track_audio_rows_live_under_the_storage_root(
    tmp_path: Path, registry_url: str, redis_server: str, gcs: str
) -> None:
    from datetime import UTC, datetime

    import pyarrow.parquet as pq

    from aitasks.audio_analysis.feature_store import (
        AUDIO_FEATURES,
        offline_uri,
        read_track_audio,
        track_audio_config,
        write_track_audio,
    )
    from aitasks.runtime.storage import storage_for

    settings = Settings(
        storage_root=f"gs://{BUCKET}/root",
        feast_online_store="redis",
        redis_url=redis_server,
        feast_registry=registry_url,
    )
    cfg = track_audio_config(settings, project="audio_test")
    uri = offline_uri(cfg)
    assert uri == f"gs://{BUCKET}/root/feast/audio_test/offline/track_audio.parquet"
    when = datetime(2026, 11, 25, tzinfo=UTC)
    write = {
        "track_ids": ["t1", "t2"],
        "features": {n: [1.0, 2.0] for n in AUDIO_FEATURES},
        "classes": {"t1": ("drums", 0.9)},
        "flag_counts": {"t2": 1},
    }
    first = write_track_audio(cfg, event_time=when, **write)  # type: ignore[arg-type]
    again = write_track_audio(cfg, event_time=when, **write)  # type: ignore[arg-type]
    later = write_track_audio(cfg, event_time=when.replace(day=26), **write)  # type: ignore[arg-type]
    assert (first.rows_total, again.rows_total, later.rows_total) == (2, 2, 4)
    table = pq.read_table(pa.BufferReader(storage_for(uri).read_bytes(uri)))
    assert table.num_rows == 4
    assert read_track_audio(cfg, ["t1"], ["audio_class"])["audio_class"] == ["drums"]


def test_a_concurrent_first_table_creation_is_a_lost_race_and_other_sql_errors_are_not() -> None:
    """CI saw a first apply lose ``CREATE TABLE projects`` to another writer (DuplicateTable): retried."""
    import psycopg.errors
    import sqlalchemy.exc

    from aitasks.platform.feature_store.apply import _lost_a_race

    def wrapped(orig: Exception) -> sqlalchemy.exc.ProgrammingError:
        return sqlalchemy.exc.ProgrammingError("CREATE TABLE projects (...)", {}, orig)

    assert _lost_a_race(wrapped(psycopg.errors.DuplicateTable('relation "projects" already exists')))
    assert _lost_a_race(wrapped(psycopg.errors.DuplicateObject("type already exists")))
    assert _lost_a_race(sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not _lost_a_race(wrapped(psycopg.errors.UndefinedColumn("no such column")))
    assert not _lost_a_race(ValueError("not a database error"))
