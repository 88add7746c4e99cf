"""A training set in the layout of :mod:`aitasks.model_training.training_set`, without Feast.

The point-in-time join is an as-of join in polars on the daily feature snapshots of
:mod:`aitasks.data_processing.features` (each row takes the latest snapshot at or before its time,
as Feast's ``get_historical_features`` does); the split, targets and history follow
:func:`aitasks.model_training.training_set.build_training_set`. Benchmarks and tests use it to train
and evaluate the recommender on generated data in seconds, without a feature store. The pipeline
uses the Feast version.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from aitasks.runtime.errors import FieldIssue, InvalidInputError

__all__ = ["split_time", "training_set_from_events"]

_TASK = "reco.training_set"


def split_time(last_event: datetime, holdout_days: int) -> datetime:
    """Midnight UTC at the start of the held-out days (the last ``holdout_days`` calendar days)."""
    day = last_event.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=holdout_days - 1)


def _as_of(frame: pl.DataFrame, feats: pl.DataFrame, key: str, on: str) -> pl.DataFrame:
    """``frame`` with the latest snapshot of ``feats`` at or before its ``on`` time, per ``key``."""
    right = feats.drop("created_timestamp").rename({"event_timestamp": "_snapshot"}).sort(key, "_snapshot")
    return (
        frame.sort(key, on)
        .join_asof(right, left_on=on, right_on="_snapshot", by=key, check_sortedness=False)
        .drop("_snapshot", strict=False)
    )


def training_set_from_events(
    events: pl.DataFrame, tracks: pl.DataFrame, out_dir: Path, *, holdout_days: int = 1
) -> datetime:
    """Write ``train``/``users``/``items``/``targets``/``history`` Parquet files and ``vocabulary.json``.

    Args:
        events: Contract events (``user_id, track_id, ts, ms_played, skipped`` at least).
        tracks: The catalog (contract columns).
        out_dir: Output directory (created).
        holdout_days: Final calendar days held out as targets.

    Returns:
        The split time.

    Raises:
        InvalidInputError: No training plays or no held-out plays.
    """
    from aitasks.data_processing.features import track_features_frame, user_features_frame, vocabularies_frame
    from aitasks.data_processing.vocabulary import VOCABULARY_FILE

    last = events["ts"].max()
    assert isinstance(last, datetime)
    split_at = split_time(last, holdout_days)
    history = events.filter(pl.col("ts") < split_at)
    future = events.filter(pl.col("ts") >= split_at)
    positives = history.filter(~pl.col("skipped"))
    targets = future.filter(~pl.col("skipped")).select("user_id", "track_id").unique().sort("user_id", "track_id")
    if positives.height == 0 or targets.height == 0:
        raise InvalidInputError(_TASK, [FieldIssue("holdout_days", "no training plays or no held-out plays")])
    # Features (and the genre vocabulary) from history only: a snapshot at split_at must not see the
    # held-out day.
    vocab = vocabularies_frame(history, tracks)
    user_feats = user_features_frame(history, tracks, genre_vocabulary=vocab.genres)
    track_feats = track_features_frame(history, tracks, genre_vocabulary=vocab.genres)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / VOCABULARY_FILE).write_text(vocab.to_json(), "utf-8")

    train = positives.select("user_id", "track_id", "ts")
    train = _as_of(_as_of(train, user_feats, "user_id", "ts"), track_feats, "track_id", "ts")
    train = train.rename({"ts": "event_timestamp"}).sort("event_timestamp", "user_id", "track_id")
    train.write_parquet(out_dir / "train.parquet")

    at = pl.lit(split_at).dt.cast_time_unit("us")
    users = targets.select("user_id").unique().sort("user_id").with_columns(ts=at)
    users = _as_of(users, user_feats, "user_id", "ts").drop("ts").sort("user_id")
    users.write_parquet(out_dir / "users.parquet")

    plays = positives.group_by("track_id").agg(train_plays=pl.len())
    items = tracks.select("track_id").unique().sort("track_id").with_columns(ts=at)
    items = _as_of(items, track_feats, "track_id", "ts").drop("ts").sort("track_id")
    items = items.join(plays, on="track_id", how="left").with_columns(pl.col("train_plays").fill_null(0))
    items.write_parquet(out_dir / "items.parquet")

    targets.write_parquet(out_dir / "targets.parquet")
    seen = history.group_by("user_id", "track_id").agg(plays=pl.len()).sort("user_id", "track_id")
    seen.write_parquet(out_dir / "history.parquet")
    return split_at
