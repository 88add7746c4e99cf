"""Two-tower training throughput: sparse id embeddings + SparseAdam against dense Adam.

Both runs train the same model (same configuration, same seed, same rows) for one epoch on the
synthetic data (``generate_dataset`` with point-in-time features, as in the tests), after a short
warm-up each. The vocabularies are production-like (every generated user, every catalog track) so
that the id tables dominate the parameters: that is where dense Adam pays, since it updates every
row of both tables on every step while SparseAdam touches only the rows of the batch.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import record


def _training_rows(out: Path, *, users: int, tracks: int, events: int, days: int, seed: int) -> tuple[Any, Any, Any]:
    """Positive plays of all days but the last with point-in-time features, and the vocabularies."""
    import numpy as np
    import polars as pl

    from aitasks.data_processing.features import track_features_frame, user_features_frame
    from aitasks.data_processing.generator import generate_dataset
    from aitasks.model_training.dataset import DEFAULT_SPEC, IdVocab, interactions_from_frame

    start = datetime(2026, 3, 1, tzinfo=UTC)
    ds = generate_dataset(out, seed=seed, users=users, tracks=tracks, events=events, start=start, days=days)
    ev, cat = pl.read_parquet(ds.events_path), pl.read_parquet(ds.tracks_path)
    split = start + timedelta(days=days - 1)
    frame = ev.filter(~pl.col("skipped") & (pl.col("ts") < split)).select("user_id", "track_id", "ts")
    for feats, key in ((user_features_frame(ev, cat), "user_id"), (track_features_frame(ev, cat), "track_id")):
        right = feats.drop("created_timestamp").sort(key, "event_timestamp")
        frame = (
            frame.sort(key, "ts")
            .join_asof(right, left_on="ts", right_on="event_timestamp", by=key, check_sortedness=False)
            .drop("event_timestamp")
        )
    frame = frame.sort("ts", "user_id", "track_id")
    # The generator names users u_000000 ... u_<users-1>: the vocabulary holds all of them, played or not.
    user_vocab = IdVocab.build(f"u_{i:06d}" for i in range(users))
    item_vocab = IdVocab.build(cat["track_id"].to_list())
    data = interactions_from_frame(frame, DEFAULT_SPEC, user_vocab, item_vocab)
    assert bool(np.all(data.users.idx > 0)), "generator user ids changed: fix the vocabulary above"
    return data, user_vocab, item_vocab


#: (users, tracks) of the vocabularies measured; the first is the headline figure. The ratio grows with the
#: tables (dense Adam's work per step is proportional to them, SparseAdam's to the batch), so a smaller
#: scale is recorded too, to show the trend rather than one flattering number.
SCALES: tuple[tuple[int, int], ...] = ((200_000, 400_000), (50_000, 100_000))


def _measure(users: int, tracks: int, events: int, days: int, seed: int) -> dict[str, Any]:
    from aitasks.model_training.dataset import DEFAULT_SPEC
    from aitasks.model_training.two_tower import TrainConfig, fit_config, train_two_tower
    from aitasks.platform.compute import default_num_threads

    with tempfile.TemporaryDirectory(prefix="aitasks-bench-train-") as tmp:
        data, user_vocab, item_vocab = _training_rows(
            Path(tmp), users=users, tracks=tracks, events=events, days=days, seed=seed
        )
    config = fit_config(data, DEFAULT_SPEC, len(user_vocab), len(item_vocab))
    base = TrainConfig(epochs=1, seed=seed)
    rates: dict[str, float] = {}
    losses: dict[str, float] = {}
    for optimizer in ("sparse", "dense"):
        tcfg = base.model_copy(update={"optimizer": optimizer})
        train_two_tower(config, data, tcfg.model_copy(update={"max_examples": 5 * base.batch_size}))  # warm-up
        _, report = train_two_tower(config, data, tcfg)
        rates[optimizer] = report.examples_per_s
        losses[optimizer] = report.history[-1]["loss"]
    params = {
        "examples": len(data),
        "epochs": base.epochs,
        "batch_size": base.batch_size,
        "num_users": config.num_users,
        "num_items": config.num_items,
        "id_dim": config.id_dim,
        "hidden_dim": config.hidden_dim,
        "embedding_dim": config.embedding_dim,
        "threads": base.num_threads or default_num_threads(),
        "data": f"generate_dataset(users={users}, tracks={tracks}, events={events}, days={days}, seed={seed}): "
        "non-skipped plays of all days but the last, point-in-time features; vocabularies = all users, all tracks",
        "value": "sparse id embeddings + SparseAdam (ids) + Adam (rest)",
        "baseline": "same model, dense id embeddings, one Adam for all parameters",
        "epoch_loss": {k: round(v, 4) for k, v in losses.items()},
    }
    return {"sparse": rates["sparse"], "dense": rates["dense"], "params": params}


def bench_training(
    *, scales: tuple[tuple[int, int], ...] = SCALES, events: int = 200_000, days: int = 14, seed: int = 1
) -> list[dict[str, Any]]:
    """Examples per second of one training epoch, ``optimizer="sparse"`` vs ``optimizer="dense"``, per scale."""
    results = []
    for i, (users, tracks) in enumerate(scales):
        m = _measure(users, tracks, events, days, seed)
        metric = "examples_per_s" if i == 0 else f"examples_per_s[{users // 1000}k_users_{tracks // 1000}k_tracks]"
        results.append(
            record(
                "two_tower_training",
                metric,
                m["sparse"],
                "examples/s",
                "dense_adam",
                m["dense"],
                m["params"],
                higher_is_better=True,
            )
        )
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(bench_training(), indent=1))
