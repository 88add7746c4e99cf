"""Tuning wall time: an Optuna study of the two-tower recommender against plain training, same run.

One study (TPE, median pruning, ``n_trials`` trials, sqlite storage in a temp dir) on generated data
with the Feast-free training set, against the baseline measured in the same run: one plain training of
the default settings scored on the same validation split (what a trial that is never pruned costs at
the default epochs, without the study's bookkeeping). Figures: wall seconds per trial (study total /
trials) and the study's total against ``n_trials`` plain trainings (below 1: pruning paid for the
rung trainings). Timings on a shared 2-core machine are noisy: read the ratios, not the seconds.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import record


def bench_tuning(
    *, n_trials: int = 6, users: int = 400, tracks: int = 800, events: int = 15_000, days: int = 10, seed: int = 1
) -> list[dict[str, Any]]:
    import polars as pl

    from aitasks.data_processing.generator import generate_dataset
    from aitasks.model_training import tuning as T  # noqa: N812 - short, as in the tests
    from aitasks.model_training.offline_set import training_set_from_events

    with tempfile.TemporaryDirectory(prefix="aitasks-bench-tune-") as tmp:
        root = Path(tmp)
        ds = generate_dataset(
            root / "raw",
            seed=seed,
            users=users,
            tracks=tracks,
            events=events,
            start=datetime(2026, 3, 1, tzinfo=UTC),
            days=days,
        )
        training_set_from_events(pl.read_parquet(ds.events_path), pl.read_parquet(ds.tracks_path), root / "ts")
        space = T.SearchSpace(
            params={
                "lr": T.FloatParam(low=1e-3, high=3e-2, log=True),
                "embedding_dim": T.CategoricalParam(choices=(32, 64)),
                "temperature": T.FloatParam(low=0.02, high=0.2, log=True),
                "epochs": T.IntParam(low=2, high=4),
            }
        )
        cfg = T.TuningConfig(space=space, base=T.TrialParams(batch_size=512), n_trials=n_trials, n_startup_trials=2)
        T.write_validation_set(root / "ts", root / "val")
        # Warm-up (imports, first allocations), then the baseline: the default settings, one plain training.
        T.evaluate_trial(root / "val", cfg.trial_params({"epochs": 1}), cfg=cfg)
        t0 = time.perf_counter()
        default = T.evaluate_trial(root / "val", cfg.trial_params(cfg.default_point()), cfg=cfg)
        baseline_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = T.tune(root / "ts", cfg, study_name="bench", storage=f"sqlite:///{root / 'study.db'}")
        total_s = time.perf_counter() - t0
    states = {s: res.states.count(s) for s in sorted(set(res.states))}
    params = {
        "trials": n_trials,
        "states": states,
        "pruner": cfg.pruner,
        "sampler": f"TPE(seed={cfg.seed}, n_startup_trials={cfg.n_startup_trials})",
        "storage": "sqlite",
        "space": sorted(space.params),
        "best_value": round(res.best_value, 4),
        "default_value": round(default.value, 4),
        "metric": f"validation {cfg.metric} ({cfg.protocol})",
        "data": f"generate_dataset(users={users}, tracks={tracks}, events={events}, days={days}, seed={seed})",
        "baseline": "one plain training of the default settings + validation scoring, same data, same run",
        "note": "shared 2-core machine: timings noisy, compare ratios",
    }
    return [
        record("tuning", "wall_s_per_trial", total_s / n_trials, "s", "plain_training", baseline_s, params),
        record("tuning", "wall_s_total", total_s, "s", f"{n_trials}x_plain_training", n_trials * baseline_s, params),
    ]


if __name__ == "__main__":
    import json

    print(json.dumps(bench_tuning(), indent=1))
