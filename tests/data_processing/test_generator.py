"""The synthetic data generator: determinism, contract conformity, and structure a model can learn."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from aitasks.data_processing.contract import (
    EVENT_COLUMNS,
    EVENTS_SCHEMA,
    ID_PATTERN,
    MAX_DURATION_MS,
    MIN_RELEASE_YEAR,
    TRACK_COLUMNS,
    TRACKS_SCHEMA,
)
from aitasks.data_processing.generator import CONTEXTS, GENRES, GeneratedDataset, generate_dataset
from aitasks.runtime.errors import InvalidInputError
from aitasks.runtime.hashing import sha256_file

START = datetime(2026, 10, 1, tzinfo=UTC)
DAYS = 21


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> GeneratedDataset:
    out = tmp_path_factory.mktemp("gen")
    return generate_dataset(out, seed=11, users=1_500, tracks=3_000, events=120_000, start=START, days=DAYS)


@pytest.fixture(scope="module")
def frames(dataset: GeneratedDataset) -> tuple[pl.DataFrame, pl.DataFrame]:
    tracks = pl.read_parquet(dataset.tracks_path)
    events = pl.read_parquet(dataset.events_path).join(tracks.select("track_id", "genre"), on="track_id")
    return events, tracks


def _small(out: Path, seed: int, fmt: str = "parquet") -> GeneratedDataset:
    return generate_dataset(out, seed=seed, users=200, tracks=300, events=5_000, start=START, days=7, fmt=fmt)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path: Path, fmt: str) -> None:
    a = _small(tmp_path / "a", 5, fmt)
    b = _small(tmp_path / "b", 5, fmt)
    c = _small(tmp_path / "c", 6, fmt)
    assert (a.events_sha256, a.tracks_sha256) == (b.events_sha256, b.tracks_sha256)
    assert a.events_path.read_bytes() == b.events_path.read_bytes()
    assert a.events_sha256 == sha256_file(a.events_path)
    assert a.tracks_sha256 == sha256_file(a.tracks_path)
    assert c.events_sha256 != a.events_sha256
    assert c.tracks_sha256 != a.tracks_sha256


def test_the_three_formats_hold_the_same_data(tmp_path: Path) -> None:
    parquet = pl.read_parquet(_small(tmp_path / "p", 3).events_path)
    csv = pl.read_csv(_small(tmp_path / "c", 3, "csv").events_path, infer_schema=False)
    jsonl = pl.read_ndjson(_small(tmp_path / "j", 3, "jsonl").events_path)
    assert csv.columns == list(EVENT_COLUMNS) == jsonl.columns
    iso = parquet["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
    assert csv["ts"].to_list() == iso.to_list() == jsonl["ts"].to_list()
    assert csv["event_id"].to_list() == parquet["event_id"].to_list()
    assert jsonl["ms_played"].to_list() == parquet["ms_played"].to_list()
    assert jsonl["skipped"].to_list() == parquet["skipped"].to_list()


def test_bad_arguments_fail_fast_and_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError) as err:
        generate_dataset(tmp_path, seed=1, users=0, tracks=10, events=10, start=START.replace(tzinfo=None), days=1)
    assert set(err.value.fields) == {"users", "start"}


# --------------------------------------------------------------------------------------- contract


def test_files_follow_the_contract_schemas(dataset: GeneratedDataset, tmp_path: Path) -> None:
    assert pq.read_schema(dataset.events_path).equals(EVENTS_SCHEMA)
    assert pq.read_schema(dataset.tracks_path).equals(TRACKS_SCHEMA)
    assert (dataset.events, dataset.tracks) == (120_000, 3_000)
    csv = _small(tmp_path / "c", 1, "csv")
    header, first = csv.events_path.read_text().splitlines()[:2]
    assert header == ",".join(EVENT_COLUMNS)
    assert csv.tracks_path.read_text().splitlines()[0] == ",".join(TRACK_COLUMNS)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", first.split(",")[3])
    jsonl = _small(tmp_path / "j", 1, "jsonl")
    row = json.loads(jsonl.events_path.read_text().splitlines()[0])
    assert list(row) == list(EVENT_COLUMNS)
    assert isinstance(row["ms_played"], int) and isinstance(row["skipped"], bool)


def test_ids_are_valid_unique_and_every_track_exists(frames: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    events, tracks = frames
    assert events.height == 120_000  # the inner join with the catalog lost nothing
    assert events["event_id"].n_unique() == events.height
    assert tracks["track_id"].n_unique() == tracks.height
    for frame, cols in ((events, ("event_id", "user_id", "track_id")), (tracks, ("track_id", "artist_id"))):
        for col in cols:
            assert frame[col].str.contains(ID_PATTERN).all(), col


def test_values_stay_in_their_ranges(frames: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    events, tracks = frames
    ts = events["ts"]
    assert ts.min() >= START  # type: ignore[operator]
    assert ts.max() < START + timedelta(days=DAYS)  # type: ignore[operator]
    assert ts.is_sorted()
    assert set(events["context"].unique()) <= set(CONTEXTS)
    assert set(tracks["genre"].unique()) <= set(GENRES)
    assert tracks["duration_ms"].min() > 0  # type: ignore[operator]
    assert tracks["duration_ms"].max() <= MAX_DURATION_MS  # type: ignore[operator]
    assert MIN_RELEASE_YEAR <= tracks["release_year"].min() <= tracks["release_year"].max() <= START.year  # type: ignore[operator]
    joined = events.join(tracks.select("track_id", "duration_ms"), on="track_id")
    assert (joined["ms_played"] >= 0).all()
    assert (joined["ms_played"] <= joined["duration_ms"]).all()
    # A skip is a short play, a full play is long: the two never overlap.
    assert (joined.filter("skipped")["ms_played"] < 30_000).all()
    assert (joined.filter(~pl.col("skipped"))["ms_played"] >= 30_000).all()


# -------------------------------------------------------------------------------------- structure


def test_popularity_is_heavy_tailed(frames: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    events, tracks = frames
    counts = events.group_by("track_id").len().sort("len", descending=True)["len"]
    top_share = counts.head(tracks.height // 100).sum() / events.height
    assert top_share > 0.12  # uniform plays would give 1 %


def test_users_concentrate_on_few_genres(frames: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    events, tracks = frames
    per_user = (
        events.group_by("user_id", "genre")
        .len()
        .group_by("user_id")
        .agg((pl.col("len").max() / pl.col("len").sum()).alias("top_share"), pl.col("len").sum().alias("plays"))
    )
    user_top = per_user.filter(pl.col("plays") >= 20)["top_share"].mean()
    catalog_top = tracks["genre"].value_counts()["count"].max() / tracks.height  # type: ignore[operator]
    assert user_top > 0.5
    assert user_top > 2 * catalog_top  # a user's mix is far narrower than the catalog's


def test_off_taste_plays_are_skipped_more(frames: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    events, _ = frames
    rank = (
        events.group_by("user_id", "genre")
        .len()
        .with_columns(pl.col("len").rank("ordinal", descending=True).over("user_id").alias("rank"))
    )
    rated = events.join(rank.select("user_id", "genre", "rank"), on=["user_id", "genre"])
    on_taste = rated.filter(pl.col("rank") <= 2)["skipped"].mean()
    off_taste = rated.filter(pl.col("rank") > 2)["skipped"].mean()
    assert off_taste > 2 * on_taste  # type: ignore[operator]
    assert 0.05 < events["skipped"].mean() < 0.5  # type: ignore[operator]


def test_users_come_back_to_tracks(frames: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    events, _ = frames
    distinct_pairs = events.select("user_id", "track_id").n_unique()
    assert 1 - distinct_pairs / events.height > 0.25  # share of plays that are re-listens


def test_the_last_day_is_predictable_from_history(frames: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    """Hit-rate@10 per last-day play: "popular in the user's top genre" beats global popularity by 1.5x."""
    events, _ = frames
    last_day = START + timedelta(days=DAYS - 1)
    train, test = events.filter(pl.col("ts") < last_day), events.filter(pl.col("ts") >= last_day)
    ranked = train.group_by("track_id", "genre").len().sort(["len", "track_id"], descending=[True, False])
    global_top = set(ranked["track_id"].head(10))
    genre_top = {g: set(ranked.filter(pl.col("genre") == g)["track_id"].head(10)) for g in GENRES}
    user_genre = (
        train.group_by("user_id", "genre")
        .len()
        .sort(["len", "genre"], descending=[True, False])
        .group_by("user_id", maintain_order=True)
        .first()
    )
    top_genre = dict(zip(user_genre["user_id"], user_genre["genre"], strict=True))
    plays = [(u, t) for u, t in zip(test["user_id"], test["track_id"], strict=True) if u in top_genre]
    assert len(plays) > 1_000
    pop_hits = np.mean([t in global_top for _, t in plays])
    taste_hits = np.mean([t in genre_top[top_genre[u]] for u, t in plays])
    assert taste_hits >= 1.5 * pop_hits, (taste_hits, pop_hits)
