"""Point-in-time feature snapshots: hand-computed values, no leakage from the future, determinism."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from aitasks.data_processing.contract import GENRE_AFFINITY_COLUMNS, genre_affinity_column
from aitasks.data_processing.features import (
    TRACK_FEATURES_SCHEMA,
    USER_FEATURES_SCHEMA,
    compute_track_features,
    compute_user_features,
    daily_snapshots,
    track_features_frame,
    user_features_frame,
    vocabularies_frame,
)
from aitasks.data_processing.generator import GENRES
from aitasks.data_processing.vocabulary import fold
from aitasks.runtime.errors import DataFormatError, InvalidInputError

T = datetime(2026, 10, 11, tzinfo=UTC)
DAY = timedelta(days=1)

#: The column contract shared with the Feast repository, spelled out on purpose.
USER_COLUMNS = [
    "user_id",
    "event_timestamp",
    "created_timestamp",
    "user_plays_7d",
    "user_plays_28d",
    "user_skip_rate_28d",
    "user_active_days_28d",
    "user_days_since_last_play",
    "user_avg_ms_played_28d",
    *(f"user_genre_affinity_{i:02d}" for i in range(16)),
    "user_genre_affinity_other",
]
TRACK_COLUMNS = [
    "track_id",
    "event_timestamp",
    "created_timestamp",
    "track_plays_28d",
    "track_listeners_28d",
    "track_skip_rate_28d",
    "track_popularity",
    "track_genre_id",
    "track_duration_ms",
    "track_release_year",
    "track_explicit",
    "audio_tempo_bpm",
    "audio_loudness_db",
    "audio_spectral_centroid_hz",
]

Event = tuple[str, str, datetime, int, bool]  # user, track, ts, ms_played, skipped


def events_frame(rows: list[Event]) -> pl.DataFrame:
    """Events in the contract schema (event_id and context filled in)."""
    return pl.DataFrame(
        {
            "event_id": pl.Series([f"e{i}" for i in range(len(rows))], dtype=pl.String),
            "user_id": pl.Series([r[0] for r in rows], dtype=pl.String),
            "track_id": pl.Series([r[1] for r in rows], dtype=pl.String),
            "ts": pl.Series([r[2] for r in rows], dtype=pl.Datetime("us", "UTC")),
            "ms_played": pl.Series([r[3] for r in rows], dtype=pl.Int64),
            "context": pl.Series(["playlist"] * len(rows), dtype=pl.String),
            "skipped": pl.Series([r[4] for r in rows], dtype=pl.Boolean),
        }
    )


def catalog() -> pl.DataFrame:
    """One track per genre: ``t_<genre>``."""
    n = len(GENRES)
    return pl.DataFrame(
        {
            "track_id": [f"t_{g}" for g in GENRES],
            "artist_id": [f"a{i}" for i in range(n)],
            "genre": list(GENRES),
            "duration_ms": pl.Series([180_000 + i for i in range(n)], dtype=pl.Int64),
            "release_year": pl.Series([2000 + i for i in range(n)], dtype=pl.Int32),
            "explicit": [i % 2 == 1 for i in range(n)],
        }
    )


def genre_id(ev: pl.DataFrame, genre: str, tracks: pl.DataFrame | None = None) -> int:
    """The id of ``genre`` in the vocabulary built from the catalog (ranked by tracks, then key)."""
    return vocabularies_frame(ev, catalog() if tracks is None else tracks).genres.keys.index(fold(genre))


def affinity(ev: pl.DataFrame, genre: str) -> str:
    """The affinity column of ``genre`` in features computed from ``ev`` and :func:`catalog`."""
    return genre_affinity_column(genre_id(ev, genre))


def tiny_events() -> list[Event]:
    return [
        # user a: the hand-computed case
        ("a", "t_pop", T - DAY, 100_000, False),  # weight 0.5 ** (1 / 14)
        ("a", "t_rock", T - 15 * DAY, 50_000, False),  # weight 0.5 ** (15 / 14)
        ("a", "t_pop", T - 1.5 * DAY, 10_000, True),  # skipped: weight 0
        ("a", "t_jazz", T - 30 * DAY, 70_000, False),  # outside the 28 d window
        ("a", "t_rock", T, 99_000, False),  # exactly at T: belongs to the next snapshot
        # user b: nothing in the window
        ("b", "t_pop", T - 40 * DAY, 1_000, False),
        # user c: only skipped plays
        ("c", "t_pop", T - 3 * DAY, 2_000, True),
        ("c", "t_rock", T - 10 * DAY, 4_000, True),
    ]


def row_of(frame: pl.DataFrame, key: str, entity: str, t: datetime = T) -> dict[str, Any]:
    rows = frame.filter((pl.col(key) == entity) & (pl.col("event_timestamp") == t)).to_dicts()
    assert len(rows) == 1, rows
    return rows[0]


def write_inputs(tmp_path: Path, events: pl.DataFrame, tracks: pl.DataFrame | None = None) -> tuple[Path, Path]:
    ev, tr = tmp_path / "events.parquet", tmp_path / "tracks.parquet"
    events.write_parquet(ev)
    (catalog() if tracks is None else tracks).write_parquet(tr)
    return ev, tr


# --------------------------------------------------------------------------------- hand-computed


def test_user_features_hand_computed() -> None:
    ev = events_frame(tiny_events())
    out = user_features_frame(ev, catalog(), snapshots=[T])
    assert out.columns == USER_COLUMNS
    assert sorted(out["user_id"].to_list()) == ["a", "c"], "b has no event in the window: no row"

    a = row_of(out, "user_id", "a")
    assert a["event_timestamp"] == T
    assert a["created_timestamp"] == T
    assert a["user_plays_7d"] == 2
    assert a["user_plays_28d"] == 3
    assert a["user_skip_rate_28d"] == pytest.approx(1 / 3, rel=1e-6)
    assert a["user_active_days_28d"] == 3  # 10-10, 10-09, 09-26
    assert a["user_days_since_last_play"] == pytest.approx(1.0)
    assert a["user_avg_ms_played_28d"] == pytest.approx(160_000 / 3, rel=1e-6)
    w_pop, w_rock = 0.5 ** (1 / 14), 0.5 ** (15 / 14)
    assert a[affinity(ev, "pop")] == pytest.approx(w_pop / (w_pop + w_rock), rel=1e-6)
    assert a[affinity(ev, "rock")] == pytest.approx(w_rock / (w_pop + w_rock), rel=1e-6)
    assert a[affinity(ev, "jazz")] == 0.0, "jazz play is outside the window"
    assert a["user_genre_affinity_other"] == 0.0, "12 genres: every one has its own slot"
    assert sum(a[c] for c in GENRE_AFFINITY_COLUMNS) == pytest.approx(1.0, rel=1e-6)

    c = row_of(out, "user_id", "c")
    assert c["user_plays_28d"] == 2
    assert c["user_skip_rate_28d"] == 1.0
    assert c["user_days_since_last_play"] == pytest.approx(3.0)
    assert all(c[col] == 0.0 for col in GENRE_AFFINITY_COLUMNS), "no unskipped plays: all affinities 0"


def test_half_life_and_lookback_parameters() -> None:
    ev = events_frame(tiny_events())
    out = user_features_frame(ev, catalog(), snapshots=[T], half_life_days=1.0, lookback_days=35)
    a = row_of(out, "user_id", "a")
    w = {"pop": 0.5**1, "rock": 0.5**15, "jazz": 0.5**30}
    total = sum(w.values())
    assert a["user_plays_28d"] == 4, "the 35-day window now holds the jazz play"
    for g, wg in w.items():
        assert a[affinity(ev, g)] == pytest.approx(wg / total, rel=1e-5)


def test_days_since_last_play_is_the_last_play_before_t() -> None:
    ev = events_frame([("a", "t_pop", T - 2.25 * DAY, 1, False), ("a", "t_pop", T - 5 * DAY, 1, False)])
    out = user_features_frame(ev, catalog(), snapshots=[T, T + DAY])
    assert row_of(out, "user_id", "a", T)["user_days_since_last_play"] == pytest.approx(2.25)
    assert row_of(out, "user_id", "a", T + DAY)["user_days_since_last_play"] == pytest.approx(3.25)


def test_track_features_hand_computed() -> None:
    rows = [*tiny_events(), ("d", "t_pop", T - 2 * DAY, 5_000, False)]
    ev = events_frame(rows)
    out = track_features_frame(ev, catalog(), snapshots=[T])
    assert out.columns == TRACK_COLUMNS
    assert out["track_id"].to_list() == ["t_pop", "t_rock"], "jazz is outside the window, sorted by id"

    pop = row_of(out, "track_id", "t_pop")
    assert pop["track_plays_28d"] == 4  # a twice, c, d
    assert pop["track_listeners_28d"] == 3
    assert pop["track_skip_rate_28d"] == pytest.approx(0.5)
    assert pop["track_popularity"] == pytest.approx(1.0)
    # One track per genre: ranked by key (ambient 0 ... pop 9, rnb 10, rock 11).
    assert pop["track_genre_id"] == genre_id(ev, "pop") == 9
    assert pop["track_duration_ms"] == 180_000
    assert pop["track_release_year"] == 2000
    assert pop["track_explicit"] == 0
    assert pop["audio_tempo_bpm"] is None

    rock = row_of(out, "track_id", "t_rock")
    assert rock["track_plays_28d"] == 2
    assert rock["track_listeners_28d"] == 2
    assert rock["track_popularity"] == pytest.approx(math.log1p(2) / math.log1p(4), rel=1e-6)
    assert rock["track_genre_id"] == genre_id(ev, "rock") == 11
    assert rock["track_explicit"] == 1
    assert out.schema["track_popularity"] == pl.Float32
    assert out.select(pl.col("track_popularity").is_between(0, 1).all()).item()


def test_track_missing_from_catalog_keeps_null_attributes() -> None:
    ev = events_frame([("a", "t_unknown", T - DAY, 1, False), ("a", "t_pop", T - DAY, 1, False)])
    tracks = track_features_frame(ev, catalog(), snapshots=[T])
    assert row_of(tracks, "track_id", "t_unknown")["track_genre_id"] is None
    users = user_features_frame(ev, catalog(), snapshots=[T])
    a = row_of(users, "user_id", "a")
    assert a["user_plays_28d"] == 2
    assert a[affinity(ev, "pop")] == pytest.approx(1.0), "a play without a genre adds no affinity"


# ------------------------------------------------------------------------------------ snapshots


def test_default_snapshots_are_daily_midnights_after_each_event_day() -> None:
    first = datetime(2026, 10, 1, 5, tzinfo=UTC)
    ev = events_frame(
        [("a", "t_pop", first, 1, False), ("a", "t_pop", first + 2 * DAY + timedelta(hours=18), 1, False)]
    )
    out = user_features_frame(ev, catalog())
    expected = [datetime(2026, 10, d, tzinfo=UTC) for d in (2, 3, 4)]
    assert out["event_timestamp"].to_list() == expected
    assert daily_snapshots(first, first + 2 * DAY) == expected
    assert out["user_plays_28d"].to_list() == [1, 1, 2]


def test_event_exactly_at_t_is_excluded() -> None:
    ev = events_frame([("d", "t_pop", T, 1, False)])
    tick = timedelta(microseconds=1)
    users = user_features_frame(ev, catalog(), snapshots=[T, T + tick])
    assert users["event_timestamp"].to_list() == [T + tick]
    tracks = track_features_frame(ev, catalog(), snapshots=[T, T + tick])
    assert tracks["event_timestamp"].to_list() == [T + tick]


def test_empty_window_and_empty_input() -> None:
    ev = events_frame([("b", "t_pop", T - 40 * DAY, 1, False)])
    out = user_features_frame(ev, catalog(), snapshots=[T])
    assert out.height == 0
    assert out.columns == USER_COLUMNS
    empty = user_features_frame(events_frame([]), catalog())
    assert empty.height == 0
    assert empty.columns == USER_COLUMNS
    assert track_features_frame(events_frame([]), catalog()).columns == TRACK_COLUMNS


# ---------------------------------------------------------------------------- point in time


def _burst(start: datetime, n: int, rng: np.random.Generator) -> list[Event]:
    """A huge burst from ``start`` on: new and old users, one genre (metal), long plays, no skips."""
    return [
        (
            f"u{rng.integers(0, 3)}" if i % 2 else f"burst{i}",
            "t_metal",
            start + timedelta(minutes=int(i)),
            500_000,
            False,
        )
        for i in range(n)
    ]


def test_burst_after_t_changes_no_earlier_row() -> None:
    rng = np.random.default_rng(7)
    start = datetime(2026, 9, 1, tzinfo=UTC)
    base = [
        (f"u{rng.integers(0, 3)}", f"t_{GENRES[rng.integers(0, 4)]}", start + timedelta(hours=int(h)), 1_000, bool(s))
        for h, s in zip(rng.integers(0, 24 * 20, 300), rng.random(300) < 0.3, strict=True)
    ]
    cut = start + 20 * DAY  # burst at and after the cut: the first row it may touch is the one after it
    full = base + _burst(cut, 2_000, rng)
    for fn in (user_features_frame, track_features_frame):
        before = fn(events_frame(base), catalog())
        after = fn(events_frame(full), catalog())
        assert before.height > 0
        assert after.filter(pl.col("event_timestamp") > cut).height > 0
        assert_frame_equal(
            before.filter(pl.col("event_timestamp") <= cut),
            after.filter(pl.col("event_timestamp") <= cut),
            check_exact=True,
        )


_start = datetime(2026, 10, 1, tzinfo=UTC)
_event = st.tuples(
    st.sampled_from(["u0", "u1", "u2"]),
    st.sampled_from([f"t_{g}" for g in GENRES[:4]]),
    st.integers(0, 10 * 24 * 60),  # minutes after _start
    st.integers(0, 300_000),
    st.booleans(),
)


def _to_events(raw: list[tuple[str, str, int, int, bool]]) -> list[Event]:
    return [(u, t, _start + timedelta(minutes=m), ms, s) for u, t, m, ms, s in raw]


@settings(max_examples=40, deadline=None)
@given(
    base=st.lists(_event, max_size=30),
    later=st.lists(_event, min_size=1, max_size=30),
    cut_minutes=st.integers(0, 10 * 24 * 60),
    snap_hours=st.lists(st.integers(0, 11 * 24), min_size=1, max_size=6),
)
def test_property_future_events_never_leak(
    base: list[tuple[str, str, int, int, bool]],
    later: list[tuple[str, str, int, int, bool]],
    cut_minutes: int,
    snap_hours: list[int],
) -> None:
    cut = _start + timedelta(minutes=cut_minutes)
    past = [e for e in _to_events(base) if e[2] < cut]
    # Events at or after the cut; one lands exactly on it when the generator shifts it there.
    future = [(u, t, max(ts, cut), ms, s) for u, t, ts, ms, s in _to_events(later)]
    snaps = [_start + timedelta(hours=h) for h in snap_hours]
    for fn in (user_features_frame, track_features_frame):
        before = fn(events_frame(past), catalog(), snapshots=snaps)
        after = fn(events_frame(past + future), catalog(), snapshots=snaps)
        assert_frame_equal(
            before.filter(pl.col("event_timestamp") <= cut),
            after.filter(pl.col("event_timestamp") <= cut),
            check_exact=True,
        )


# ------------------------------------------------------------------------------------- files


def test_files_are_deterministic_typed_and_atomic(tmp_path: Path) -> None:
    ev, tr = write_inputs(tmp_path, events_frame(tiny_events()))
    out_dir = tmp_path / "out"
    r1 = compute_user_features(ev, tr, out_dir / "u1.parquet")
    r2 = compute_user_features(ev, tr, out_dir / "u2.parquet")
    assert r1.sha256 == r2.sha256
    assert r1.sha256 == hashlib.sha256((out_dir / "u1.parquet").read_bytes()).hexdigest()
    assert r1.columns == USER_COLUMNS
    assert r1.rows == pl.read_parquet(out_dir / "u1.parquet").height
    assert r1.snapshots[0] == "2026-09-02T00:00:00+00:00"  # the day after the first event (b, T - 40 d)
    assert r1.snapshots[-1] == "2026-10-12T00:00:00+00:00"
    assert pq.read_schema(out_dir / "u1.parquet").remove_metadata().equals(USER_FEATURES_SCHEMA)

    t1 = compute_track_features(ev, tr, out_dir / "t.parquet", snapshots=[T])
    t2 = compute_track_features(ev, tr, out_dir / "t.parquet", snapshots=[T])  # replaces in place
    assert t1 == t2
    assert t1.entities == 2
    assert t1.snapshots == [T.isoformat()]
    assert pq.read_schema(out_dir / "t.parquet").remove_metadata().equals(TRACK_FEATURES_SCHEMA)
    assert sorted(p.name for p in out_dir.iterdir()) == ["t.parquet", "u1.parquet", "u2.parquet"], "no temp files"


def test_report_is_strict() -> None:
    from pydantic import ValidationError

    from aitasks.data_processing.features import FeatureReport

    r = FeatureReport(rows=1, entities=1, snapshots=[], columns=[], sha256="x", genre_vocabulary="v")
    with pytest.raises(ValidationError):
        FeatureReport(rows=1, entities=1, snapshots=[], columns=[], sha256="x", genre_vocabulary="v", extra=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        r.rows = 2  # type: ignore[misc]


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("column", "mutate"),
    [
        ("ms_played", lambda f: f.drop("ms_played")),
        ("skipped", lambda f: f.drop("skipped")),
        ("ms_played", lambda f: f.with_columns(pl.Series("ms_played", [float("nan")] + [1.0] * (f.height - 1)))),
        ("ms_played", lambda f: f.with_columns(pl.col("ms_played") - 50_000)),
        ("ms_played", lambda f: f.with_columns(pl.col("ms_played").cast(pl.Float64) + 0.5)),
        ("ts", lambda f: f.with_columns(pl.col("ts").dt.replace_time_zone(None))),
        ("ts", lambda f: f.with_columns(pl.lit(None, dtype=pl.Datetime("us", "UTC")).alias("ts"))),
        ("user_id", lambda f: f.with_columns(pl.lit(1).alias("user_id"))),
        ("skipped", lambda f: f.with_columns(pl.col("skipped").cast(pl.Int8))),
    ],
)
def test_bad_events_name_the_column(column: str, mutate: object) -> None:
    bad = mutate(events_frame(tiny_events()))  # type: ignore[operator]
    with pytest.raises(DataFormatError, match=column):
        user_features_frame(bad, catalog(), snapshots=[T])
    with pytest.raises(DataFormatError, match=column):
        track_features_frame(bad, catalog(), snapshots=[T])


@pytest.mark.parametrize(
    ("column", "mutate"),
    [
        ("genre", lambda f: f.drop("genre")),
        ("genre", lambda f: f.with_columns(pl.lit(" -- ").alias("genre"))),  # no letter or digit
        ("track_id", lambda f: pl.concat([f, f.head(1)])),
        ("duration_ms", lambda f: f.with_columns(pl.lit(None, dtype=pl.Int64).alias("duration_ms"))),
    ],
)
def test_bad_catalog_names_the_column(column: str, mutate: object) -> None:
    bad = mutate(catalog())  # type: ignore[operator]
    with pytest.raises(DataFormatError, match=column):
        user_features_frame(events_frame(tiny_events()), bad, snapshots=[T])


def test_bad_files_name_file_and_column(tmp_path: Path) -> None:
    ev, tr = write_inputs(tmp_path, events_frame(tiny_events()).drop("ms_played"))
    with pytest.raises(DataFormatError, match="ms_played") as info:
        compute_user_features(ev, tr, tmp_path / "u.parquet")
    assert info.value.uri == str(ev)
    assert not (tmp_path / "u.parquet").exists()
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataFormatError, match="Parquet"):
        compute_track_features(tmp_path / "junk.parquet", tr, tmp_path / "t.parquet")
    with pytest.raises(DataFormatError, match="does not exist"):
        compute_track_features(tmp_path / "missing.parquet", tr, tmp_path / "t.parquet")


def test_bad_parameters_are_invalid_input() -> None:
    ev = events_frame(tiny_events())
    with pytest.raises(InvalidInputError) as info:
        user_features_frame(ev, catalog(), lookback_days=0, half_life_days=-1.0)
    assert set(info.value.fields) == {"lookback_days", "half_life_days"}
    with pytest.raises(InvalidInputError, match="timezone"):
        track_features_frame(ev, catalog(), snapshots=[datetime(2026, 10, 1)])
