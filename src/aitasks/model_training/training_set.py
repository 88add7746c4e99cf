"""Training and evaluation data for the recommender, read from Feast with a time-based split.

Positives are plays that were not skipped. Everything strictly before ``split_at`` (midnight UTC at
the start of the held-out days) is history; the held-out days are the evaluation targets. Feature
values come from Feast ``get_historical_features`` (point-in-time: each training row sees the
snapshot valid at its play time, never a later one); the held-out users and the catalog get the
snapshot valid at ``split_at``, which is what a model trained at that moment would have seen.

Outputs (Parquet, one directory):

- ``train.parquet``: ``user_id``, ``track_id``, ``event_timestamp`` + every feature of the service.
- ``users.parquet``: held-out users (those with at least one target) + user features at ``split_at``.
- ``items.parquet``: every catalog track + track features at ``split_at`` + ``train_plays``.
- ``targets.parquet``: distinct (``user_id``, ``track_id``) played, not skipped, in the held-out days.
- ``history.parquet``: distinct (``user_id``, ``track_id``) played before ``split_at`` (skips
  included): what serving filters out as "already played".
- ``vocabulary.json``: the genre and context vocabularies the features were computed with (when
  given): which genre each ``track_genre_id`` and affinity slot means.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final

import polars as pl
from pydantic import BaseModel, ConfigDict

from aitasks.runtime.errors import DataFormatError, FieldIssue, InvalidInputError
from aitasks.runtime.hashing import sha256_file, sha256_json

if TYPE_CHECKING:
    from aitasks.data_processing.vocabulary import Vocabularies
    from aitasks.platform.feature_store import FeastConfig

_TASK: Final = "reco.training_set"
FILES: Final = ("train.parquet", "users.parquet", "items.parquet", "targets.parquet", "history.parquet")


class TrainingSetReport(BaseModel):
    """What was written, with counts a reviewer checks first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    split_at: datetime
    holdout_days: int
    train_rows: int
    train_users: int
    holdout_users: int
    holdout_targets: int
    items: int
    history_pairs: int
    snapshot_hash: str
    files: dict[str, str]


def _day_floor(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def build_training_set(
    cfg: FeastConfig,
    *,
    events: Path,
    tracks: Path,
    out_dir: Path,
    holdout_days: int = 1,
    feature_service: str = "reco_training",
    vocabularies: Vocabularies | None = None,
) -> TrainingSetReport:
    """Write the training set, the held-out targets and the catalog snapshot to ``out_dir``.

    Args:
        cfg: The Feast repository (applied) whose offline store holds the feature snapshots.
        events: Validated events (Parquet, contract schema).
        tracks: Track catalog (Parquet, contract schema).
        out_dir: Output directory (created).
        holdout_days: Number of final days held out for evaluation.
        feature_service: Feast feature service with the user and track features.
        vocabularies: The vocabularies of the feature files, written as ``vocabulary.json``.

    Returns:
        The report, with the sha256 of every file and a snapshot hash over them.

    Raises:
        InvalidInputError: ``holdout_days`` leaves no history or no held-out positives.
        DataFormatError: An input file lacks the contract columns.
    """
    from aitasks.platform.feature_store import historical_features

    if holdout_days < 1:
        raise InvalidInputError(_TASK, [FieldIssue("holdout_days", "must be at least 1")])
    ev = _read(events, ("user_id", "track_id", "ts", "skipped"))
    cat = _read(tracks, ("track_id",))
    if ev.height == 0:
        raise DataFormatError(str(events), "no events")
    last = ev["ts"].max()
    assert isinstance(last, datetime)
    split_at = _day_floor(last) - timedelta(days=holdout_days - 1)
    history = ev.filter(pl.col("ts") < split_at)
    future = ev.filter(pl.col("ts") >= split_at)
    positives = history.filter(~pl.col("skipped"))
    targets = future.filter(~pl.col("skipped")).select("user_id", "track_id").unique().sort("user_id", "track_id")
    problems = []
    if positives.height == 0:
        problems.append(FieldIssue("holdout_days", f"no training plays before {split_at.isoformat()}"))
    if targets.height == 0:
        problems.append(FieldIssue("holdout_days", f"no held-out plays at or after {split_at.isoformat()}"))
    if problems:
        raise InvalidInputError(_TASK, problems)

    out_dir.mkdir(parents=True, exist_ok=True)
    # Training rows: each positive play with the features valid at its time (Feast point-in-time join).
    entity = positives.select("user_id", "track_id", pl.col("ts").alias("event_timestamp")).sort(
        "event_timestamp", "user_id", "track_id"
    )
    train = historical_features(cfg, entity.to_pandas(), feature_service)
    pl.from_pandas(train).write_parquet(out_dir / "train.parquet")

    at = pl.lit(split_at).dt.cast_time_unit("us")
    users = targets.select("user_id").unique().sort("user_id").with_columns(event_timestamp=at)
    users_feats = historical_features(cfg, users.to_pandas(), feature_service, partial=True)
    pl.from_pandas(users_feats).drop("event_timestamp").write_parquet(out_dir / "users.parquet")

    plays = positives.group_by("track_id").agg(train_plays=pl.len())
    items = cat.select("track_id").unique().sort("track_id").with_columns(event_timestamp=at)
    items_feats = pl.from_pandas(historical_features(cfg, items.to_pandas(), feature_service, partial=True)).drop(
        "event_timestamp"
    )
    items_feats = items_feats.join(plays, on="track_id", how="left").with_columns(pl.col("train_plays").fill_null(0))
    items_feats.write_parquet(out_dir / "items.parquet")

    targets.write_parquet(out_dir / "targets.parquet")
    seen = history.group_by("user_id", "track_id").agg(plays=pl.len()).sort("user_id", "track_id")
    seen.write_parquet(out_dir / "history.parquet")

    names = list(FILES)
    if vocabularies is not None:
        from aitasks.data_processing.vocabulary import VOCABULARY_FILE

        (out_dir / VOCABULARY_FILE).write_text(vocabularies.to_json(), "utf-8")
        names.append(VOCABULARY_FILE)
    files = {name: sha256_file(out_dir / name) for name in names}
    snapshot = sha256_json({"events": sha256_file(events), "tracks": sha256_file(tracks)})
    return TrainingSetReport(
        split_at=split_at,
        holdout_days=holdout_days,
        train_rows=len(train),
        train_users=positives["user_id"].n_unique(),
        holdout_users=users.height,
        holdout_targets=targets.height,
        items=items_feats.height,
        history_pairs=seen.height,
        snapshot_hash=snapshot,
        files=files,
    )


def _read(path: Path, columns: tuple[str, ...]) -> pl.DataFrame:
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for a non-Parquet file
        raise DataFormatError(str(path), f"not a readable Parquet file: {exc}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataFormatError(str(path), f"missing columns: {', '.join(missing)}")
    return frame.select(columns)


def read_feature_vocabularies(user_features: Path, track_features: Path) -> Vocabularies:
    """The vocabularies both feature files were computed with (their Parquet metadata).

    Raises:
        DataFormatError: A file carries no vocabulary, or the two files carry different genre
            vocabularies (their slots and ids would mean different genres); the message names both
            versions and the rule.
    """
    from aitasks.data_processing.vocabulary import read_parquet_vocabularies

    users = read_parquet_vocabularies(user_features)
    tracks = read_parquet_vocabularies(track_features)
    if users.genres.version != tracks.genres.version:
        raise DataFormatError(
            str(track_features),
            f"genre vocabulary {tracks.genres.version[:16]} differs from the user features' "
            f"{users.genres.version[:16]} ({user_features}); rule: user and track features of one training "
            "set come from one data.features run",
        )
    return users
