"""Point-in-time feature engineering: daily user and track feature snapshots.

A snapshot at time ``T`` holds one row per entity (user or track) with at least one event in the
lookback window ``[T - lookback_days, T)`` and is computed **only** from events with ``ts < T``
(strictly): an event stamped exactly ``T`` belongs to the next snapshot. This is what makes the rows
safe for point-in-time joins (Feast ``get_historical_features``): a training example labelled at
``T`` never sees its own future. ``event_timestamp`` and ``created_timestamp`` both equal ``T``, so
the output depends on the inputs only (no wall clock), and the same inputs give the same bytes.

By default the snapshots are the UTC midnights from the day after the first event up to and
including the day after the last event, so every event is seen by at least one snapshot.

Every event is one play (a skipped play is still a play; ``skipped`` only changes the skip rate and
the genre affinity). Events whose track is missing from the catalog still count as plays but have
no genre (they add nothing to the genre affinity), and their track rows carry null catalog
attributes.

Genres are an open vocabulary (:mod:`aitasks.data_processing.vocabulary`): the run's genre vocabulary
(built from the catalog unless one is given) ranks the genres by their number of tracks. A track's
``track_genre_id`` is its genre's rank (``other`` past the vocabulary's cap). The user genre affinity
has a fixed width, whatever the vocabulary: ``user_genre_affinity_00`` .. ``_15`` are the shares of the
16 largest genres, ``user_genre_affinity_other`` the share of all the others, so the Feast schema
never changes when genres come and go; which genre a slot means is in the vocabulary. Both feature
files carry the vocabulary they were computed with in their Parquet schema metadata, so a file and
the ids in it never part.

How it runs: events are sorted by time once; for each snapshot the window is a zero-copy slice found
by binary search, aggregated by a vectorized polars ``group_by``; all snapshots are aggregated in one
parallel lazy query. Work is proportional to ``events x snapshots-per-window``, never to a Python
loop over entities.

The audio columns of the track features (``audio_tempo_bpm``, ``audio_loudness_db``,
``audio_spectral_centroid_hz``) are null placeholders here: the audio-analysis family fills them
through its own Feast feature view; they exist so that the column contract with the Feast repository
is stable from day one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from aitasks.data_processing.contract import GENRE_AFFINITY_COLUMNS, GENRE_SLOTS, MAX_MS_PLAYED
from aitasks.data_processing.vocabulary import (
    Vocabularies,
    Vocabulary,
    build_context_vocabulary,
    build_genre_vocabulary,
)
from aitasks.runtime.errors import DataFormatError, FieldIssue, InvalidInputError
from aitasks.runtime.hashing import sha256_file

__all__ = [
    "AUDIO_PLACEHOLDER_COLUMNS",
    "TRACK_FEATURES_SCHEMA",
    "USER_FEATURES_SCHEMA",
    "FeatureReport",
    "build_vocabularies",
    "compute_track_features",
    "compute_user_features",
    "daily_snapshots",
    "track_features_frame",
    "user_features_frame",
    "vocabularies_frame",
]

_TASK: Final = "data.features"
_US_PER_DAY: Final = 86_400 * 1_000_000
_SHORT_WINDOW_DAYS: Final = 7
_TS: Final = pl.Datetime("us", "UTC")

#: Track feature columns filled later by the audio-analysis family (own feature view); null here.
AUDIO_PLACEHOLDER_COLUMNS: Final[tuple[str, ...]] = (
    "audio_tempo_bpm",
    "audio_loudness_db",
    "audio_spectral_centroid_hz",
)

#: Output contract of the user feature snapshots (column names are shared with the Feast repository).
USER_FEATURES_SCHEMA: Final = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("event_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("created_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("user_plays_7d", pa.int64(), nullable=False),
        pa.field("user_plays_28d", pa.int64(), nullable=False),
        pa.field("user_skip_rate_28d", pa.float32(), nullable=False),
        pa.field("user_active_days_28d", pa.int64(), nullable=False),
        pa.field("user_days_since_last_play", pa.float32(), nullable=False),
        pa.field("user_avg_ms_played_28d", pa.float32(), nullable=False),
        *(pa.field(c, pa.float32(), nullable=False) for c in GENRE_AFFINITY_COLUMNS),
    ]
)

#: Output contract of the track feature snapshots. Catalog attributes are null for tracks that are
#: missing from the catalog; the audio placeholders are always null here.
TRACK_FEATURES_SCHEMA: Final = pa.schema(
    [
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("event_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("created_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("track_plays_28d", pa.int64(), nullable=False),
        pa.field("track_listeners_28d", pa.int64(), nullable=False),
        pa.field("track_skip_rate_28d", pa.float32(), nullable=False),
        pa.field("track_popularity", pa.float32(), nullable=False),
        pa.field("track_genre_id", pa.int64()),
        pa.field("track_duration_ms", pa.int64()),
        pa.field("track_release_year", pa.int64()),
        pa.field("track_explicit", pa.int64()),
        *(pa.field(c, pa.float32()) for c in AUDIO_PLACEHOLDER_COLUMNS),
    ]
)

_USER_DTYPES: Final[dict[str, pl.DataType]] = {
    "user_id": pl.String(),
    "event_timestamp": _TS,
    "created_timestamp": _TS,
    "user_plays_7d": pl.Int64(),
    "user_plays_28d": pl.Int64(),
    "user_skip_rate_28d": pl.Float32(),
    "user_active_days_28d": pl.Int64(),
    "user_days_since_last_play": pl.Float32(),
    "user_avg_ms_played_28d": pl.Float32(),
    **dict.fromkeys(GENRE_AFFINITY_COLUMNS, pl.Float32()),
}
_TRACK_DTYPES: Final[dict[str, pl.DataType]] = {
    "track_id": pl.String(),
    "event_timestamp": _TS,
    "created_timestamp": _TS,
    "track_plays_28d": pl.Int64(),
    "track_listeners_28d": pl.Int64(),
    "track_skip_rate_28d": pl.Float32(),
    "track_popularity": pl.Float32(),
    "track_genre_id": pl.Int64(),
    "track_duration_ms": pl.Int64(),
    "track_release_year": pl.Int64(),
    "track_explicit": pl.Int64(),
    **dict.fromkeys(AUDIO_PLACEHOLDER_COLUMNS, pl.Float32()),
}
_TRACK_AGG_COLUMNS: Final = (
    "track_id",
    "event_timestamp",
    "created_timestamp",
    "track_plays_28d",
    "track_listeners_28d",
    "track_skip_rate_28d",
    "track_popularity",
)

_EVENT_COLUMNS: Final = ("user_id", "track_id", "ts", "ms_played", "skipped")
_TRACK_COLUMNS: Final = ("track_id", "genre", "duration_ms", "release_year", "explicit")


class FeatureReport(BaseModel):
    """What a feature computation wrote.

    Attributes:
        rows: Number of feature rows.
        entities: Number of distinct entities (users or tracks) over all snapshots.
        snapshots: Snapshot times ``T`` (ISO 8601, UTC), including those that produced no rows.
        columns: Output columns, in order.
        sha256: Hex sha256 of the written Parquet file.
        genre_vocabulary: Version of the genre vocabulary the ids and affinity slots follow.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rows: int
    entities: int
    snapshots: list[str]
    columns: list[str]
    sha256: str
    genre_vocabulary: str


# ------------------------------------------------------------------------------------ validation


def _bad(uri: str, column: str, problem: str) -> DataFormatError:
    return DataFormatError(uri, f"column {column!r}: {problem}")


def _require_columns(frame: pl.DataFrame, needed: Sequence[str], uri: str) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataFormatError(uri, "missing column(s): " + ", ".join(repr(c) for c in missing))


def _no_nulls(frame: pl.DataFrame, column: str, uri: str) -> None:
    nulls = frame[column].null_count()
    if nulls:
        raise _bad(uri, column, f"{nulls} null value(s)")


def _as_string(frame: pl.DataFrame, column: str, uri: str) -> pl.Series:
    s = frame[column]
    if isinstance(s.dtype, pl.Categorical | pl.Enum):
        s = s.cast(pl.String)
    if s.dtype != pl.String:
        raise _bad(uri, column, f"expected string, got {s.dtype}")
    _no_nulls(frame, column, uri)
    return s


def _as_count(frame: pl.DataFrame, column: str, uri: str, *, low: int, high: int) -> pl.Series:
    """An integer column; floats are accepted only when every value is finite and integral."""
    s = frame[column]
    _no_nulls(frame, column, uri)
    if s.dtype.is_float():
        bad = int((s.is_nan() | s.is_infinite()).sum())
        if bad:
            raise _bad(uri, column, f"{bad} NaN or infinite value(s)")
        if int((s != s.floor()).sum()):
            raise _bad(uri, column, "non-integral value(s)")
    elif not s.dtype.is_integer():
        raise _bad(uri, column, f"expected integer, got {s.dtype}")
    if s.len() and (s.min() < low or s.max() > high):  # type: ignore[operator]
        raise _bad(uri, column, f"value(s) outside [{low}, {high}]")
    return s.cast(pl.Int64)


def _validate_events(events: pl.DataFrame, uri: str) -> pl.DataFrame:
    """Check the columns the features need and return them normalised (ts as int64 UTC microseconds)."""
    _require_columns(events, _EVENT_COLUMNS, uri)
    user_id = _as_string(events, "user_id", uri)
    track_id = _as_string(events, "track_id", uri)
    ts = events["ts"]
    if not isinstance(ts.dtype, pl.Datetime):
        raise _bad(uri, "ts", f"expected a timestamp, got {ts.dtype}")
    if ts.dtype.time_zone is None:
        raise _bad(uri, "ts", "timestamps must be timezone-aware (UTC); got naive timestamps")
    _no_nulls(events, "ts", uri)
    ms_played = _as_count(events, "ms_played", uri, low=0, high=MAX_MS_PLAYED)
    skipped = events["skipped"]
    if skipped.dtype != pl.Boolean:
        raise _bad(uri, "skipped", f"expected boolean, got {skipped.dtype}")
    _no_nulls(events, "skipped", uri)
    return pl.DataFrame(
        {
            "user_id": user_id,
            "track_id": track_id,
            "ts_us": ts.dt.epoch("us"),
            "ms_played": ms_played,
            "skipped": skipped,
        }
    )


def _validate_tracks(tracks: pl.DataFrame, uri: str, vocab: Vocabulary) -> pl.DataFrame:
    """Check the catalog columns the features need; return them with ``track_genre_id`` (id in ``vocab``)."""
    _require_columns(tracks, _TRACK_COLUMNS, uri)
    track_id = _as_string(tracks, "track_id", uri)
    dupes = track_id.len() - track_id.n_unique()
    if dupes:
        raise _bad(uri, "track_id", f"{dupes} duplicate id(s)")
    genre = _as_string(tracks, "genre", uri)
    duration = _as_count(tracks, "duration_ms", uri, low=0, high=2**62)
    year = _as_count(tracks, "release_year", uri, low=0, high=9999)
    explicit = tracks["explicit"]
    if explicit.dtype != pl.Boolean:
        raise _bad(uri, "explicit", f"expected boolean, got {explicit.dtype}")
    _no_nulls(tracks, "explicit", uri)
    return pl.DataFrame(
        {
            "track_id": track_id,
            # Unseen genres (and those past the vocabulary's cap) get the vocabulary's `other` id.
            "track_genre_id": vocab.ids(genre),
            "track_duration_ms": duration,
            "track_release_year": year,
            "track_explicit": explicit.cast(pl.Int64),
        }
    )


def _check_params(lookback_days: int, half_life_days: float | None = None) -> None:
    issues: list[FieldIssue] = []
    if isinstance(lookback_days, bool) or not isinstance(lookback_days, int) or lookback_days < 1:
        issues.append(FieldIssue("lookback_days", f"must be an integer >= 1, got {lookback_days!r}"))
    if half_life_days is not None and not (math.isfinite(half_life_days) and half_life_days > 0):
        issues.append(FieldIssue("half_life_days", f"must be a finite number > 0, got {half_life_days!r}"))
    if issues:
        raise InvalidInputError(_TASK, issues)


# ------------------------------------------------------------------------------------- snapshots


def daily_snapshots(first: datetime, last: datetime) -> list[datetime]:
    """UTC midnights from the day after ``first`` up to and including the day after ``last``.

    Args:
        first: Time of the first event (timezone-aware).
        last: Time of the last event (timezone-aware).

    Returns:
        The snapshot times, ascending.
    """
    start = datetime.combine(first.astimezone(UTC).date(), datetime.min.time(), tzinfo=UTC) + timedelta(days=1)
    end = datetime.combine(last.astimezone(UTC).date(), datetime.min.time(), tzinfo=UTC) + timedelta(days=1)
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def _epoch_us(t: datetime) -> int:
    delta = t - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _resolve_snapshots(events: pl.DataFrame, snapshots: Sequence[datetime] | None) -> list[datetime]:
    if snapshots is None:
        if events.height == 0:
            return []
        lo, hi = int(events["ts_us"].min()), int(events["ts_us"].max())  # type: ignore[arg-type]
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        return daily_snapshots(epoch + timedelta(microseconds=lo), epoch + timedelta(microseconds=hi))
    naive = [i for i, t in enumerate(snapshots) if t.tzinfo is None or t.utcoffset() is None]
    if naive:
        raise InvalidInputError(
            _TASK, [FieldIssue(f"snapshots[{naive[0]}]", "snapshot times must be timezone-aware (UTC)")]
        )
    return sorted({t.astimezone(UTC) for t in snapshots})


def _genre_vocabulary(events: pl.DataFrame, tracks: pl.DataFrame, uri_tracks: str) -> Vocabulary:
    """The genre vocabulary of these inputs (ranked by catalog tracks; ``events`` only count plays)."""
    _require_columns(tracks, ("track_id", "genre"), uri_tracks)
    _as_string(tracks, "genre", uri_tracks)
    plays = events["track_id"] if "track_id" in events.columns else None
    try:
        return build_genre_vocabulary(tracks, plays)
    except DataFormatError as exc:
        raise DataFormatError(uri_tracks, exc.problem) from None


def _prepare(
    events: pl.DataFrame, tracks: pl.DataFrame, uri_events: str, uri_tracks: str, vocab: Vocabulary | None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    ev = _validate_events(events, uri_events)
    vocab = vocab or _genre_vocabulary(ev, tracks, uri_tracks)
    cat = _validate_tracks(tracks, uri_tracks, vocab)
    genre = pl.col("track_genre_id")
    # Affinity slot of each play: the genre's rank below GENRE_SLOTS, else GENRE_SLOTS (`other`, which
    # also holds the vocabulary's own `other` id); null for a track missing from the catalog.
    slot = pl.when((genre >= GENRE_SLOTS) | (genre == vocab.other_id)).then(pl.lit(GENRE_SLOTS)).otherwise(genre)
    ev = ev.join(cat.select("track_id", "track_genre_id"), on="track_id", how="left").with_columns(
        slot.cast(pl.Int64).alias("_slot")
    )
    # A full sort key (not just ts) fixes the order of float sums, so the output bytes are stable.
    ev = ev.sort(["ts_us", "user_id", "track_id", "ms_played", "skipped"])
    return ev, cat


def _window(events: pl.DataFrame, t_us: int, days: int) -> pl.LazyFrame:
    """Events with ``t_us - days <= ts < t_us`` as a zero-copy slice (events are sorted by ts)."""
    ts = events["ts_us"]
    lo = int(ts.search_sorted(t_us - days * _US_PER_DAY, side="left"))
    hi = int(ts.search_sorted(t_us, side="left"))  # side="left": an event at exactly T is excluded
    return events.slice(lo, hi - lo).lazy()


# ---------------------------------------------------------------------------------- user features


def _user_snapshot(events: pl.DataFrame, t: datetime, lookback_days: int, half_life_days: float) -> pl.LazyFrame:
    t_us = _epoch_us(t)
    ts = pl.col("ts_us")
    in_lb = ts >= t_us - lookback_days * _US_PER_DAY
    in_7 = ts >= t_us - _SHORT_WINDOW_DAYS * _US_PER_DAY
    age_days = (pl.lit(t_us) - ts).cast(pl.Float64) / _US_PER_DAY
    weight = pl.when(in_lb & ~pl.col("skipped")).then(pl.lit(0.5).pow(age_days / half_life_days)).otherwise(0.0)
    # Slot i < GENRE_SLOTS: the genre of rank i; slot GENRE_SLOTS: every other genre (see _prepare).
    genre_w = [f"_w{i}" for i in range(GENRE_SLOTS + 1)]
    slot = pl.col("_slot")
    window = _window(events, t_us, max(lookback_days, _SHORT_WINDOW_DAYS))
    agg = (
        window.group_by("user_id")
        .agg(
            in_lb.sum().alias("plays"),
            in_7.sum().alias("plays_7d"),
            (in_lb & pl.col("skipped")).sum().alias("skips"),
            (ts // _US_PER_DAY).filter(in_lb).n_unique().alias("active_days"),
            # Every event in the window precedes T and the entity has one in the lookback window, so
            # the window's newest event is also the newest event ever before T.
            ts.max().alias("last_us"),
            pl.col("ms_played").filter(in_lb).mean().alias("avg_ms"),
            *(pl.when(slot == i).then(weight).otherwise(0.0).sum().alias(w) for i, w in enumerate(genre_w)),
        )
        .filter(pl.col("plays") > 0)
    )
    total = pl.sum_horizontal(genre_w)
    return agg.select(
        "user_id",
        pl.lit(t, dtype=_TS).alias("event_timestamp"),
        pl.lit(t, dtype=_TS).alias("created_timestamp"),
        pl.col("plays_7d").cast(pl.Int64).alias("user_plays_7d"),
        pl.col("plays").cast(pl.Int64).alias("user_plays_28d"),
        (pl.col("skips") / pl.col("plays")).cast(pl.Float32).alias("user_skip_rate_28d"),
        pl.col("active_days").cast(pl.Int64).alias("user_active_days_28d"),
        ((pl.lit(t_us) - pl.col("last_us")) / _US_PER_DAY).cast(pl.Float32).alias("user_days_since_last_play"),
        pl.col("avg_ms").cast(pl.Float32).alias("user_avg_ms_played_28d"),
        *(
            pl.when(total > 0).then(pl.col(w) / total).otherwise(0.0).cast(pl.Float32).alias(c)
            for c, w in zip(GENRE_AFFINITY_COLUMNS, genre_w, strict=True)
        ),
    )


def user_features_frame(
    events: pl.DataFrame,
    tracks: pl.DataFrame,
    *,
    snapshots: Sequence[datetime] | None = None,
    lookback_days: int = 28,
    half_life_days: float = 14.0,
    events_uri: str = "<events>",
    tracks_uri: str = "<tracks>",
    genre_vocabulary: Vocabulary | None = None,
) -> pl.DataFrame:
    """Daily point-in-time user feature snapshots, in memory.

    Args:
        events: Listening events (contract columns ``user_id, track_id, ts, ms_played, skipped``).
        tracks: Track catalog (``track_id, genre, duration_ms, release_year, explicit``).
        snapshots: Snapshot times (timezone-aware); None for the daily default (see module doc).
        lookback_days: Length of the windowed (``*_28d``) features, in days.
        half_life_days: Half-life of the recency weight of the genre affinity, in days.
        events_uri: Name of the events input in error messages.
        tracks_uri: Name of the catalog input in error messages.
        genre_vocabulary: Whose ranks the affinity slots follow; None: built from ``tracks`` and ``events``.

    Returns:
        One row per (user, T) with columns of :data:`USER_FEATURES_SCHEMA`, sorted by user then T.

    Raises:
        DataFormatError: An input misses a column or holds a value the contract forbids.
        InvalidInputError: A parameter is out of range or a snapshot time is naive.
    """
    return _user_features(
        events, tracks, snapshots, lookback_days, half_life_days, events_uri, tracks_uri, genre_vocabulary
    )[0]


def _user_features(
    events: pl.DataFrame,
    tracks: pl.DataFrame,
    snapshots: Sequence[datetime] | None,
    lookback_days: int,
    half_life_days: float,
    events_uri: str,
    tracks_uri: str,
    vocab: Vocabulary | None,
) -> tuple[pl.DataFrame, list[datetime]]:
    _check_params(lookback_days, half_life_days)
    ev, _ = _prepare(events, tracks, events_uri, tracks_uri, vocab)
    times = _resolve_snapshots(ev, snapshots)
    parts = [_user_snapshot(ev, t, lookback_days, half_life_days) for t in times]
    return _finish(parts, _USER_DTYPES, "user_id"), times


# --------------------------------------------------------------------------------- track features


def _track_snapshot(events: pl.DataFrame, t: datetime, lookback_days: int) -> pl.LazyFrame:
    t_us = _epoch_us(t)
    agg = (
        _window(events, t_us, lookback_days)
        .group_by("track_id")
        .agg(
            pl.len().cast(pl.Int64).alias("track_plays_28d"),
            pl.col("user_id").n_unique().cast(pl.Int64).alias("track_listeners_28d"),
            pl.col("skipped").mean().cast(pl.Float32).alias("track_skip_rate_28d"),
        )
    )
    plays = pl.col("track_plays_28d")
    return agg.with_columns(
        pl.lit(t, dtype=_TS).alias("event_timestamp"),
        pl.lit(t, dtype=_TS).alias("created_timestamp"),
        # max plays >= 1 whenever a row exists, so the denominator is > 0.
        (plays.cast(pl.Float64).log1p() / plays.max().cast(pl.Float64).log1p())
        .cast(pl.Float32)
        .alias("track_popularity"),
    )


def track_features_frame(
    events: pl.DataFrame,
    tracks: pl.DataFrame,
    *,
    snapshots: Sequence[datetime] | None = None,
    lookback_days: int = 28,
    events_uri: str = "<events>",
    tracks_uri: str = "<tracks>",
    genre_vocabulary: Vocabulary | None = None,
) -> pl.DataFrame:
    """Daily point-in-time track feature snapshots, in memory.

    Args:
        events: Listening events (contract columns ``user_id, track_id, ts, ms_played, skipped``).
        tracks: Track catalog (``track_id, genre, duration_ms, release_year, explicit``).
        snapshots: Snapshot times (timezone-aware); None for the daily default (see module doc).
        lookback_days: Length of the windowed (``*_28d``) features, in days.
        events_uri: Name of the events input in error messages.
        tracks_uri: Name of the catalog input in error messages.
        genre_vocabulary: Whose ids ``track_genre_id`` holds; None: built from ``tracks`` and ``events``.

    Returns:
        One row per (track, T) with columns of :data:`TRACK_FEATURES_SCHEMA`, sorted by track then T.
        The audio columns are null (filled by the audio-analysis feature view).

    Raises:
        DataFormatError: An input misses a column or holds a value the contract forbids.
        InvalidInputError: A parameter is out of range or a snapshot time is naive.
    """
    return _track_features(events, tracks, snapshots, lookback_days, events_uri, tracks_uri, genre_vocabulary)[0]


def _track_features(
    events: pl.DataFrame,
    tracks: pl.DataFrame,
    snapshots: Sequence[datetime] | None,
    lookback_days: int,
    events_uri: str,
    tracks_uri: str,
    vocab: Vocabulary | None,
) -> tuple[pl.DataFrame, list[datetime]]:
    _check_params(lookback_days)
    ev, cat = _prepare(events, tracks, events_uri, tracks_uri, vocab)
    times = _resolve_snapshots(ev, snapshots)
    parts = [_track_snapshot(ev, t, lookback_days) for t in times]
    frame = _finish(parts, {c: _TRACK_DTYPES[c] for c in _TRACK_AGG_COLUMNS}, "track_id")
    frame = frame.join(cat, on="track_id", how="left", maintain_order="left")
    frame = frame.with_columns(pl.lit(None, dtype=pl.Float32).alias(c) for c in AUDIO_PLACEHOLDER_COLUMNS)
    return frame.select([pl.col(c).cast(d) for c, d in _TRACK_DTYPES.items()]), times


def _finish(parts: list[pl.LazyFrame], dtypes: dict[str, pl.DataType], key: str) -> pl.DataFrame:
    """Run all snapshot queries at once (polars runs the union's inputs in parallel), sort, fix dtypes."""
    select = [pl.col(c).cast(d) for c, d in dtypes.items()]
    if not parts:
        return pl.DataFrame(schema=dtypes)
    return pl.concat([p.select(select) for p in parts]).sort([key, "event_timestamp"]).collect()


# ------------------------------------------------------------------------------------------ files


def _read_parquet(path: Path, columns: Sequence[str]) -> pl.DataFrame:
    """Read the ``columns`` of ``path`` that exist (validation names the missing ones)."""
    uri = str(path)
    if not path.is_file():
        raise DataFormatError(uri, "file does not exist")
    try:
        present = pl.scan_parquet(path).collect_schema().names()
        return pl.read_parquet(path, columns=[c for c in columns if c in present])
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataFormatError(uri, f"not a readable Parquet file: {exc}") from exc


def _write_parquet_atomic(frame: pl.DataFrame, schema: pa.Schema, out: Path, vocab: Vocabularies) -> str:
    """Write ``frame`` with ``schema`` (and ``vocab`` in its metadata) to ``out`` atomically; return sha256."""
    import pyarrow.parquet as pq

    from aitasks.platform.files import atomic_path

    table = frame.to_arrow().select(schema.names).cast(schema.with_metadata(vocab.parquet_metadata()))
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
        digest = sha256_file(tmp)
    return digest  # noqa: RET504 - returned once the block has published the file


def _report(frame: pl.DataFrame, key: str, times: list[datetime], digest: str, vocab: Vocabularies) -> FeatureReport:
    return FeatureReport(
        rows=frame.height,
        entities=frame[key].n_unique(),
        snapshots=[t.isoformat() for t in times],
        columns=list(frame.columns),
        sha256=digest,
        genre_vocabulary=vocab.genres.version,
    )


def build_vocabularies(events: Path, tracks: Path) -> Vocabularies:
    """The genre and context vocabularies of a run, from its validated events and catalog (Parquet).

    Genres are ranked by catalog tracks (then key; plays are counted for people), contexts by events.

    Raises:
        DataFormatError: An input is unreadable, misses a column, or a genre has no letter or digit.
    """
    return vocabularies_frame(
        _read_parquet(events, ("track_id", "context")),
        _read_parquet(tracks, ("track_id", "genre")),
        events_uri=str(events),
        tracks_uri=str(tracks),
    )


def vocabularies_frame(
    events: pl.DataFrame, tracks: pl.DataFrame, *, events_uri: str = "<events>", tracks_uri: str = "<tracks>"
) -> Vocabularies:
    """:func:`build_vocabularies` of in-memory frames (events need ``track_id`` and ``context``)."""
    _require_columns(events, ("track_id", "context"), events_uri)
    genres = _genre_vocabulary(events, tracks, tracks_uri)
    return Vocabularies(genres=genres, contexts=build_context_vocabulary(_as_string(events, "context", events_uri)))


def compute_user_features(
    events: Path,
    tracks: Path,
    out: Path,
    *,
    snapshots: Sequence[datetime] | None = None,
    lookback_days: int = 28,
    half_life_days: float = 14.0,
    vocabularies: Vocabularies | None = None,
) -> FeatureReport:
    """Compute user feature snapshots from Parquet files and write them to ``out`` (Parquet, atomic).

    Args:
        events: Validated events Parquet (contract ``EVENTS_SCHEMA``).
        tracks: Track catalog Parquet (contract ``TRACKS_SCHEMA``).
        out: Output Parquet path; replaced atomically.
        snapshots: Snapshot times (timezone-aware); None for the daily default.
        lookback_days: Length of the windowed features, in days.
        half_life_days: Half-life of the recency weight of the genre affinity, in days.
        vocabularies: The run's vocabularies; None: :func:`build_vocabularies` of the inputs.

    Returns:
        What was written (the file's metadata holds the vocabularies).

    Raises:
        DataFormatError: An input is unreadable, misses a column or breaks the contract.
        InvalidInputError: A parameter is out of range.
    """
    vocab = vocabularies or build_vocabularies(events, tracks)
    ev = _read_parquet(events, _EVENT_COLUMNS)
    cat = _read_parquet(tracks, _TRACK_COLUMNS)
    frame, times = _user_features(
        ev, cat, snapshots, lookback_days, half_life_days, str(events), str(tracks), vocab.genres
    )
    digest = _write_parquet_atomic(frame, USER_FEATURES_SCHEMA, out, vocab)
    return _report(frame, "user_id", times, digest, vocab)


def compute_track_features(
    events: Path,
    tracks: Path,
    out: Path,
    *,
    snapshots: Sequence[datetime] | None = None,
    lookback_days: int = 28,
    vocabularies: Vocabularies | None = None,
) -> FeatureReport:
    """Compute track feature snapshots from Parquet files and write them to ``out`` (Parquet, atomic).

    Args:
        events: Validated events Parquet (contract ``EVENTS_SCHEMA``).
        tracks: Track catalog Parquet (contract ``TRACKS_SCHEMA``).
        out: Output Parquet path; replaced atomically.
        snapshots: Snapshot times (timezone-aware); None for the daily default.
        lookback_days: Length of the windowed features, in days.
        vocabularies: The run's vocabularies; None: :func:`build_vocabularies` of the inputs.

    Returns:
        What was written (the file's metadata holds the vocabularies).

    Raises:
        DataFormatError: An input is unreadable, misses a column or breaks the contract.
        InvalidInputError: A parameter is out of range.
    """
    vocab = vocabularies or build_vocabularies(events, tracks)
    ev = _read_parquet(events, _EVENT_COLUMNS)
    cat = _read_parquet(tracks, _TRACK_COLUMNS)
    frame, times = _track_features(ev, cat, snapshots, lookback_days, str(events), str(tracks), vocab.genres)
    digest = _write_parquet_atomic(frame, TRACK_FEATURES_SCHEMA, out, vocab)
    return _report(frame, "track_id", times, digest, vocab)
