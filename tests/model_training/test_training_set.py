"""The training set: time split, Feast point-in-time features, held-out targets, catalog snapshot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from aitasks.data_processing.vocabulary import VOCABULARY_FILE
from aitasks.model_training.training_set import FILES
from aitasks.runtime.bundle import open_bundle, read_manifest
from aitasks.runtime.errors import InvalidInputError
from tests.conftest import RecoWorld


def test_time_split_and_files(reco_world: RecoWorld) -> None:
    ts = reco_world.training_set
    assert ts.split_at == datetime(2026, 10, 30, tzinfo=UTC)  # last day of the 30-day window held out
    manifest = read_manifest(ts.training_set_uri, kind="training_set")
    assert set(manifest["files"]) == {*FILES, VOCABULARY_FILE}, "the features' vocabulary travels on"
    with open_bundle(ts.training_set_uri) as (d, _):
        train = pl.read_parquet(d / "train.parquet")
        targets = pl.read_parquet(d / "targets.parquet")
        users = pl.read_parquet(d / "users.parquet")
        items = pl.read_parquet(d / "items.parquet")
        history = pl.read_parquet(d / "history.parquet")
    events = pl.read_parquet(reco_world.ingest.good_uri)
    positives = events.filter(~pl.col("skipped"))
    assert train.height == ts.train_rows == positives.filter(pl.col("ts") < ts.split_at).height
    assert train["event_timestamp"].max() < ts.split_at
    held = positives.filter(pl.col("ts") >= ts.split_at).select("user_id", "track_id").unique()
    assert targets.height == held.height == ts.holdout_targets
    assert set(users["user_id"]) == set(targets["user_id"]) and users.height == ts.holdout_users
    assert items.height == ts.items == pl.read_parquet(reco_world.source.tracks_uri).height
    assert items["train_plays"].sum() == train.height
    # Already-played pairs cover skips too (a skipped track was still played).
    assert history.height == events.filter(pl.col("ts") < ts.split_at).select("user_id", "track_id").unique().height
    assert {"user_plays_28d", "track_popularity", "user_genre_affinity_00", "user_genre_affinity_other"} <= set(
        train.columns
    )


def test_training_rows_see_only_past_snapshots(reco_world: RecoWorld) -> None:
    """Feast point-in-time: a row's user features equal the latest snapshot at or before its play time."""
    with open_bundle(reco_world.training_set.training_set_uri) as (d, _):
        train = pl.read_parquet(d / "train.parquet")
    snaps = pl.read_parquet(reco_world.features.user_features_uri).select(
        "user_id", "event_timestamp", "user_plays_28d"
    )
    sample = train.select("user_id", "event_timestamp", "user_plays_28d").sample(2000, seed=1).sort("event_timestamp")
    expected = sample.drop("user_plays_28d").join_asof(
        snaps.sort("event_timestamp").rename({"event_timestamp": "snap"}),
        left_on="event_timestamp",
        right_on="snap",
        by="user_id",
        strategy="backward",
        tolerance=timedelta(days=30),
        check_sortedness=False,
    )
    got = sample["user_plays_28d"].cast(pl.Float64).fill_null(-1).to_list()
    want = expected["user_plays_28d"].cast(pl.Float64).fill_null(-1).to_list()
    assert got == want
    assert (expected["snap"].drop_nulls() <= expected.filter(pl.col("snap").is_not_null())["event_timestamp"]).all()


def test_holdout_that_eats_all_history_is_refused(reco_world: RecoWorld) -> None:
    from aitasks.model_training.tasks import training_set_task

    with pytest.raises(InvalidInputError, match="holdout_days"):
        training_set_task(
            {
                "events_uri": reco_world.ingest.good_uri,
                "catalog_uri": reco_world.source.tracks_uri,
                "user_features_uri": reco_world.features.user_features_uri,
                "track_features_uri": reco_world.features.track_features_uri,
                "holdout_days": 30,
            },
            runtime=reco_world.rt,
        )
