"""The Feast-free training set (benchmarks, stability test) and the held-out day under both protocols."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from aitasks.data_processing.generator import generate_dataset
from aitasks.data_processing.vocabulary import VOCABULARY_FILE
from aitasks.model_training import recommender as rec
from aitasks.model_training.offline_set import training_set_from_events
from aitasks.model_training.training_set import FILES


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, pl.DataFrame, Path, datetime]:
    out = tmp_path_factory.mktemp("offline")
    ds = generate_dataset(
        out / "raw", seed=5, users=200, tracks=400, events=8_000, start=datetime(2026, 4, 1, tzinfo=UTC), days=10
    )
    events, tracks = pl.read_parquet(ds.events_path), pl.read_parquet(ds.tracks_path)
    split = training_set_from_events(events, tracks, out / "ts")
    return events, tracks, out / "ts", split


def test_layout_split_and_no_leak_from_the_held_out_day(
    world: tuple[pl.DataFrame, pl.DataFrame, Path, datetime], tmp_path: Path
) -> None:
    events, tracks, ts, split = world
    assert split == datetime(2026, 4, 10, tzinfo=UTC)
    assert {p.name for p in ts.iterdir()} == {*FILES, VOCABULARY_FILE}
    train = pl.read_parquet(ts / "train.parquet")
    assert (
        train["event_timestamp"].max() < split
        and train.height == events.filter((pl.col("ts") < split) & ~pl.col("skipped")).height
    )
    targets = pl.read_parquet(ts / "targets.parquet")
    users = pl.read_parquet(ts / "users.parquet")
    assert users["user_id"].to_list() == targets["user_id"].unique().sort().to_list()
    # Features at the split come from history only: dropping the held-out day's events changes nothing there.
    history_only = events.filter(pl.col("ts") < split)
    other = tmp_path / "ts"
    training_set_from_events(
        pl.concat([history_only, events.filter((pl.col("ts") >= split) & ~pl.col("skipped")).head(1)]), tracks, other
    )
    again = pl.read_parquet(other / "users.parquet")
    common = users.join(again.select("user_id"), on="user_id", how="semi").sort("user_id")
    assert common.equals(again.join(common.select("user_id"), on="user_id", how="semi").sort("user_id"))
    assert pl.read_parquet(other / "items.parquet").equals(pl.read_parquet(ts / "items.parquet"))


def test_held_out_day_protocols_and_favourites(world: tuple[pl.DataFrame, pl.DataFrame, Path, datetime]) -> None:
    _, _, ts, _ = world
    day = rec.load_held_out_day(ts)
    assert len(day.targets["all"]) == len(day.targets["discovery"]) == len(day.user_ids)
    relisten = 0
    for every, new, played in zip(day.targets["all"], day.targets["discovery"], day.played, strict=True):
        assert set(new) <= set(every) and not set(new) & set(played)
        assert set(every) - set(new) <= set(played)
        relisten += len(set(every) - set(new))
    assert relisten > 0, "the generator's listeners replay tracks"
    # Favourites: most non-skipped training plays first.
    train = pl.read_parquet(ts / "train.parquet", columns=["user_id", "track_id"])
    row = {t: i for i, t in enumerate(day.item_ids)}
    for user, fav in list(zip(day.user_ids, day.favourites, strict=True))[:30]:
        counts = train.filter(pl.col("user_id") == user)["track_id"].value_counts()
        by_row = {row[t]: n for t, n in zip(counts["track_id"], counts["count"], strict=True)}
        assert sorted(fav.tolist()) == sorted(by_row)
        assert [by_row[r] for r in fav.tolist()] == sorted(by_row.values(), reverse=True)
    own, pop = rec.own_history_lists(day), rec.popularity_lists(day)
    assert np.array_equal(own["discovery"], pop["discovery"])
    assert not np.array_equal(own["all"], pop["all"])
    assert day.exclude("all") is None and day.exclude("discovery") is day.played
