"""Recommender quality and its seed-to-seed spread: recall@10 over 5 training seeds, both protocols.

The demo's data (``generate_dataset`` seed 7: 2,000 users, 5,000 tracks, 200,000 events over 30 days),
the last day held out, a training set built without Feast (:mod:`aitasks.model_training.offline_set`,
the same layout and point-in-time rule). The two-tower model is trained with 5 seeds by the default
recipe (row order by a hash of the row, cosine learning-rate decay, checkpoint averaging) and by the
plain recipe it replaced (constant learning rate, last weights), and scored on the same held-out day
under both protocols: all next plays (re-listens count) and discovery (unplayed tracks only).

Figures, each with a baseline measured in the same run:

* ``recall_at_10[<protocol>]``: mean over the seeds, against popularity (ratio = lift) and against the
  listener's own most played tracks;
* ``recall_at_10_std[<protocol>]``: standard deviation over the seeds of the default recipe, against
  that of the plain recipe (ratio < 1: steadier). ``params`` holds every seed's value.
"""

from __future__ import annotations

import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import record

DATA = {"seed": 7, "users": 2_000, "tracks": 5_000, "events": 200_000, "days": 30}
SEEDS = (0, 1, 2, 3, 4)
PLAIN = {"average_epochs": 1, "checkpoints_per_epoch": 1, "lr_decay": "none"}


def _recalls(ts: Path, work: Path, seeds: tuple[int, ...], recipe: dict[str, Any]) -> dict[str, list[float]]:
    from aitasks.model_training import recommender as rec
    from aitasks.model_training.two_tower import TrainConfig

    day = rec.load_held_out_day(ts)
    out: dict[str, list[float]] = {p: [] for p in rec.PROTOCOLS}
    for seed in seeds:
        model_dir = work / f"model-{'plain' if recipe else 'default'}-{seed}"
        rec.train_recommender(ts, model_dir, TrainConfig(seed=seed, **recipe))
        ev = rec.evaluate_lists(day, rec.model_lists(model_dir, ts, day), "recall_at_10")
        for p in rec.PROTOCOLS:
            out[p].append(ev.metrics[p].recall_at_10)
    return out


def bench_reco_quality(*, seeds: tuple[int, ...] = SEEDS, data: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Mean and standard deviation of recall@10 over training seeds, with popularity and own history."""
    import polars as pl

    from aitasks.data_processing.generator import generate_dataset
    from aitasks.model_training import recommender as rec
    from aitasks.model_training.offline_set import training_set_from_events

    spec = {**DATA, **(data or {})}
    with tempfile.TemporaryDirectory(prefix="aitasks-bench-reco-") as tmp:
        work = Path(tmp)
        ds = generate_dataset(
            work / "raw",
            seed=spec["seed"],
            users=spec["users"],
            tracks=spec["tracks"],
            events=spec["events"],
            days=spec["days"],
            start=datetime(2026, 10, 1, tzinfo=UTC),
        )
        ts = work / "ts"
        training_set_from_events(pl.read_parquet(ds.events_path), pl.read_parquet(ds.tracks_path), ts)
        day = rec.load_held_out_day(ts)
        baselines = {
            name: rec.evaluate_lists(day, lists, "recall_at_10").metrics
            for name, lists in (("popularity", rec.popularity_lists(day)), ("own_history", rec.own_history_lists(day)))
        }
        default = _recalls(ts, work, seeds, {})
        plain = _recalls(ts, work, seeds, PLAIN)
    common = {
        "data": "generate_dataset({}), last day held out, training set without Feast (as-of join)".format(
            ", ".join(f"{k}={v}" for k, v in spec.items())
        ),
        "seeds": list(seeds),
        "held_out_users": len(day.user_ids),
        "recipe": "default TrainConfig: row order by hash of (user, track, time), cosine lr decay, "
        "mean of 4 checkpoints per epoch over the last 3 of 4 epochs",
        "plain_recipe": PLAIN,
    }
    out: list[dict[str, Any]] = []
    for protocol in rec.PROTOCOLS:
        values, old = default[protocol], plain[protocol]
        mean, std = statistics.fmean(values), statistics.stdev(values)
        per_seed = {"per_seed": [round(v, 4) for v in values], "plain_per_seed": [round(v, 4) for v in old]}
        spread = {"cv_percent": round(100 * std / mean, 2), "range": [round(min(values), 4), round(max(values), 4)]}
        for name in ("popularity", "own_history"):
            out.append(
                record(
                    "reco_quality",
                    f"recall_at_10[{protocol}] vs {name}",
                    mean,
                    "recall",
                    name,
                    baselines[name][protocol].recall_at_10,
                    {**common, "protocol": protocol, **per_seed, "std": round(std, 5), **spread},
                    higher_is_better=True,
                )
            )
        out.append(
            record(
                "reco_seed_variance",
                f"recall_at_10_std[{protocol}]",
                std,
                "recall (std over seeds)",
                "plain_training_std",
                statistics.stdev(old),
                {**common, "protocol": protocol, "mean": round(mean, 4), **per_seed, **spread},
            )
        )
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(bench_reco_quality(), indent=1))
