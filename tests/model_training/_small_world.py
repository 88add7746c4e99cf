"""A small offline training set (no Feast) shared by the distributed-training tests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from aitasks.data_processing.generator import generate_dataset
from aitasks.model_training.offline_set import training_set_from_events


def small_training_set(out: Path) -> Path:
    """~14k training rows, 400 users, 1000 tracks, a held-out last day; returns the training-set directory."""
    ds = generate_dataset(
        out / "raw", seed=11, users=400, tracks=1000, events=20_000, start=datetime(2026, 5, 1, tzinfo=UTC), days=14
    )
    training_set_from_events(pl.read_parquet(ds.events_path), pl.read_parquet(ds.tracks_path), out / "ts")
    return out / "ts"
