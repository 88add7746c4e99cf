"""The recommender's training and offline evaluation on a training-set directory.

Glue between the training set (:mod:`aitasks.model_training.training_set`), the two-tower model
(:mod:`aitasks.model_training.two_tower`) and the retrieval metrics
(:mod:`aitasks.model_training.evaluation`). Every ranker (model, popularity, champion) is
evaluated by the same code on the same held-out users, targets and exclusions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import polars as pl

from aitasks.runtime.errors import DataFormatError

if TYPE_CHECKING:
    from aitasks.model_training.evaluation import RetrievalMetrics
    from aitasks.model_training.two_tower import TrainConfig, TrainReport

#: Tracks kept in the model's popularity list (the fallback for unknown users).
POPULARITY_TOP: Final = 1000
POPULARITY_FILE: Final = "popularity.json"
#: Largest k of the recall curve; top-k lists are computed to this depth.
MAX_K: Final = 100


def _read(ts_dir: Path, name: str) -> pl.DataFrame:
    path = ts_dir / name
    try:
        return pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for a missing or non-Parquet file
        raise DataFormatError(str(path), f"not a readable training-set file: {exc}") from None


def train_recommender(
    ts_dir: Path, out_dir: Path, tcfg: TrainConfig, *, arch: dict[str, Any] | None = None
) -> TrainReport:
    """Train the two-tower model on ``ts_dir/train.parquet`` and save it (safetensors + JSON) in ``out_dir``.

    The user vocabulary holds every user of the training rows and of the held-out users; the item
    vocabulary every catalog track. ``popularity.json`` (most played tracks of the training window)
    rides along as the model's fallback for users it cannot embed.
    """
    from aitasks.model_training.dataset import DEFAULT_SPEC, IdVocab, interactions_from_frame
    from aitasks.model_training.two_tower import fit_config, save_model, train_two_tower

    train = _read(ts_dir, "train.parquet")
    users = _read(ts_dir, "users.parquet")
    items = _read(ts_dir, "items.parquet")
    user_vocab = IdVocab.build([*train["user_id"].to_list(), *users["user_id"].to_list()])
    item_vocab = IdVocab.build(items["track_id"].to_list())
    data = interactions_from_frame(train, DEFAULT_SPEC, user_vocab, item_vocab)
    config = fit_config(data, DEFAULT_SPEC, len(user_vocab), len(item_vocab), **(arch or {}))
    model, report = train_two_tower(config, data, tcfg)
    save_model(model, out_dir, user_vocab=user_vocab, item_vocab=item_vocab)
    top = items.sort(["train_plays", "track_id"], descending=[True, False]).head(POPULARITY_TOP)
    (out_dir / POPULARITY_FILE).write_text(
        json.dumps({"tracks": top["track_id"].to_list(), "plays": top["train_plays"].to_list()}), "utf-8"
    )
    return report


@dataclass(frozen=True)
class Holdout:
    """Held-out users, their targets and exclusions, as item row indices of ``item_ids``."""

    user_ids: list[str]
    item_ids: list[str]
    targets: list[np.ndarray]
    exclude: list[np.ndarray] | None
    item_plays: np.ndarray


def load_holdout(ts_dir: Path, *, exclude_seen: bool) -> Holdout:
    """Targets per held-out user; with ``exclude_seen`` the already-played tracks leave both the
    ranking and the targets (the product never recommends a track the user has played)."""
    users = _read(ts_dir, "users.parquet").select("user_id")
    items = _read(ts_dir, "items.parquet").select("track_id", "train_plays")
    item_ids = items["track_id"].to_list()
    row = pl.DataFrame({"track_id": item_ids, "_row": np.arange(len(item_ids), dtype=np.int64)})
    user_ids = users["user_id"].to_list()

    def grouped(frame: pl.DataFrame) -> dict[str, np.ndarray]:
        joined = frame.join(row, on="track_id", how="inner").group_by("user_id").agg(pl.col("_row").sort())
        return {u: np.asarray(r, dtype=np.int64) for u, r in zip(joined["user_id"], joined["_row"], strict=True)}

    tgt = grouped(_read(ts_dir, "targets.parquet").select("user_id", "track_id"))
    empty = np.zeros(0, dtype=np.int64)
    targets = [tgt.get(u, empty) for u in user_ids]
    exclude: list[np.ndarray] | None = None
    if exclude_seen:
        seen = grouped(_read(ts_dir, "history.parquet").select("user_id", "track_id"))
        exclude = [seen.get(u, empty) for u in user_ids]
        targets = [np.setdiff1d(t, x, assume_unique=True) for t, x in zip(targets, exclude, strict=True)]
    return Holdout(user_ids, item_ids, targets, exclude, items["train_plays"].to_numpy().astype(np.float64))


def popularity_metrics(holdout: Holdout) -> RetrievalMetrics:
    """The popularity baseline: most played tracks of the training window, same exclusions."""
    from aitasks.model_training.evaluation import retrieval_metrics, topk_popularity

    top = topk_popularity(holdout.item_plays, len(holdout.user_ids), MAX_K, exclude=holdout.exclude)
    return retrieval_metrics(top, holdout.targets, len(holdout.item_ids))


def embed_for_holdout(model_dir: Path, ts_dir: Path, holdout: Holdout) -> tuple[np.ndarray, np.ndarray]:
    """(user vectors, item vectors) of the held-out users and the catalog, in ``holdout``'s order."""
    from aitasks.model_training.dataset import tower_inputs
    from aitasks.model_training.two_tower import load_model

    model, user_vocab, item_vocab = load_model(model_dir)
    spec = model.config.spec
    users = _read(ts_dir, "users.parquet")
    items = _read(ts_dir, "items.parquet")
    uv = model.embed_users(
        tower_inputs(
            users, id_column="user_id", vocab=user_vocab, dense=spec.user_dense, categorical=spec.user_categorical
        )
    )
    iv = model.embed_items(
        tower_inputs(
            items, id_column="track_id", vocab=item_vocab, dense=spec.item_dense, categorical=spec.item_categorical
        )
    )
    if users["user_id"].to_list() != holdout.user_ids or items["track_id"].to_list() != holdout.item_ids:
        raise DataFormatError(str(ts_dir), "users.parquet / items.parquet changed while evaluating")
    return uv, iv


def model_metrics(model_dir: Path, ts_dir: Path, holdout: Holdout) -> RetrievalMetrics:
    """Exact (brute-force) retrieval metrics of the model in ``model_dir`` on the held-out day."""
    from aitasks.model_training.evaluation import retrieval_metrics, topk_from_embeddings

    uv, iv = embed_for_holdout(model_dir, ts_dir, holdout)
    top = topk_from_embeddings(uv, iv, MAX_K, exclude=holdout.exclude)
    return retrieval_metrics(top, holdout.targets, len(holdout.item_ids))
