"""Training stability: one changed input row must not swing the evaluation (issue: 8% from one row of 200k).

The bound is stated here and in docs/en/recommender.md: with the default training settings, changing one
training event moves recall@10 on all next plays by at most 2% (relative) and keeps at least 90% of
every held-out user's top-10; discovery recall (a few unplayed targets per user, so a handful of hits
decide it) moves by at most 6%.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from aitasks.data_processing.generator import generate_dataset
from aitasks.model_training import recommender as rec
from aitasks.model_training.offline_set import training_set_from_events
from aitasks.model_training.two_tower import TrainConfig, epoch_order, row_keys

#: Relative recall@10 change allowed for one changed row, per protocol.
MAX_CHANGE = {"all": 0.02, "discovery": 0.06}
#: Share of each held-out user's top-10 (all next plays) that must survive the change, on average.
MIN_OVERLAP = 0.9


def test_row_order_follows_what_rows_are_not_where_they_are() -> None:
    users = [f"u{i % 50}" for i in range(1000)]
    items = [f"t{i % 77}" for i in range(1000)]
    times = np.arange(1000, dtype=np.int64) * 1000
    keys = row_keys(users, items, times)
    assert keys.dtype == np.uint64 and len(np.unique(keys)) == 1000
    assert np.array_equal(keys, row_keys(users, items, times)), "deterministic"
    order = epoch_order(keys, seed=0, epoch=1)
    assert sorted(order.tolist()) == list(range(1000))
    assert not np.array_equal(order, epoch_order(keys, seed=0, epoch=2))
    assert not np.array_equal(order, epoch_order(keys, seed=1, epoch=1))
    # Insert one row at the front: every other row keeps its relative order (a positional shuffle would not).
    keys2 = row_keys(["new", *users], ["tnew", *items], np.concatenate([[7], times]))
    order2 = epoch_order(keys2, seed=0, epoch=1)
    assert [i - 1 for i in order2.tolist() if i != 0] == order.tolist()


@pytest.fixture(scope="module")
def two_days(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same events twice, except for one non-skipped training play whose track changes."""
    out = tmp_path_factory.mktemp("stability")
    ds = generate_dataset(
        out / "raw", seed=11, users=800, tracks=2000, events=60_000, start=datetime(2026, 5, 1, tzinfo=UTC), days=21
    )
    events, tracks = pl.read_parquet(ds.events_path), pl.read_parquet(ds.tracks_path)
    row = int(events.with_row_index().filter(~pl.col("skipped"))["index"][events.height // 2])
    old = events["track_id"][row]
    new = tracks.filter(pl.col("track_id") != old)["track_id"][0]
    changed = events.with_columns(
        pl.when(pl.int_range(pl.len()) == row).then(pl.lit(new)).otherwise(pl.col("track_id")).alias("track_id")
    )
    assert (changed["track_id"] != events["track_id"]).sum() == 1
    training_set_from_events(events, tracks, out / "a")
    training_set_from_events(changed, tracks, out / "b")
    return out / "a", out / "b"


@pytest.mark.slow  # two trainings on 45k rows: about a minute on 2 cores (`make test-all` and CI run it)
def test_one_changed_row_does_not_swing_recall(two_days: tuple[Path, Path], tmp_path: Path) -> None:
    ts_a, ts_b = two_days
    day = rec.load_held_out_day(ts_a)
    lists = {}
    for name, ts in (("a", ts_a), ("b", ts_b)):
        rec.train_recommender(ts, tmp_path / name, TrainConfig(seed=0))
        lists[name] = rec.model_lists(tmp_path / name, ts_a, day)  # both scored on the same held-out day
    for protocol, bound in MAX_CHANGE.items():
        a = rec.evaluate_lists(day, lists["a"], "recall_at_10").metrics[protocol].recall_at_10
        b = rec.evaluate_lists(day, lists["b"], "recall_at_10").metrics[protocol].recall_at_10
        print(f"{protocol}: recall@10 {a:.4f} -> {b:.4f} ({(b - a) / a:+.2%}, bound {bound:.0%})")
        assert abs(b - a) <= bound * a
    top_a, top_b = lists["a"]["all"][:, :10], lists["b"]["all"][:, :10]
    overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(top_a.tolist(), top_b.tolist(), strict=True)])
    print(f"top-10 overlap {overlap:.3f}")
    assert overlap >= MIN_OVERLAP
