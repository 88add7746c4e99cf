"""The recommender's training and offline evaluation on a training-set directory.

Glue between the training set (:mod:`aitasks.model_training.training_set`), the two-tower model
(:mod:`aitasks.model_training.two_tower`) and the retrieval metrics
(:mod:`aitasks.model_training.evaluation`). Every ranker (model, popularity, the user's own
history, champion) is evaluated by the same code on the same held-out users, under both protocols
(all next plays, discovery; see :class:`HeldOutDay`).
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
    from aitasks.data_processing.vocabulary import Vocabularies
    from aitasks.model_training.checkpoint import CheckpointPolicy
    from aitasks.model_training.evaluation import MetricName, RetrievalMetrics
    from aitasks.model_training.two_tower import TrainConfig, TrainReport

#: Tracks kept in the model's popularity list (the fallback for unknown users).
POPULARITY_TOP: Final = 1000
POPULARITY_FILE: Final = "popularity.json"
#: Largest k of the recall curve; top-k lists are computed to this depth.
MAX_K: Final = 100
#: The evaluation protocols (see :class:`HeldOutDay`), the serving mode each one measures.
PROTOCOLS: Final = ("all", "discovery")


def _read(ts_dir: Path, name: str) -> pl.DataFrame:
    path = ts_dir / name
    try:
        return pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for a missing or non-Parquet file
        raise DataFormatError(str(path), f"not a readable training-set file: {exc}") from None


def read_vocabularies(directory: Path) -> Vocabularies | None:
    """The vocabularies of a training set or a model bundle (``vocabulary.json``); None when it has none
    (made before vocabularies: the model then has the largest genre embedding and no mapping to check).

    Raises:
        DataFormatError: The file exists but is not a valid vocabulary artifact.
    """
    from aitasks.data_processing.vocabulary import VOCABULARY_FILE, Vocabularies

    path = directory / VOCABULARY_FILE
    return Vocabularies.read(path) if path.is_file() else None


def train_recommender(
    ts_dir: Path,
    out_dir: Path,
    tcfg: TrainConfig,
    *,
    arch: dict[str, Any] | None = None,
    workers: int = 1,
    checkpoint: CheckpointPolicy | None = None,
    distributed: bool = False,
    save: bool = True,
) -> TrainReport:
    """Train the two-tower model on ``ts_dir/train.parquet`` and save it (safetensors + JSON) in ``out_dir``.

    The user vocabulary holds every user of the training rows and of the held-out users; the item
    vocabulary every catalog track. The genre embedding has one row per id of the training set's
    genre vocabulary plus ``other``, and the vocabularies (``vocabulary.json``) are saved beside the
    weights, so whoever embeds with the model maps genres as training did. ``popularity.json`` (most
    played tracks of the training window) rides along as the model's fallback for users it cannot embed.

    ``workers > 1`` trains with that many DDP processes through torchrun
    (:func:`aitasks.model_training.distributed.launch_local`; same model as one process up to float
    summation order). ``checkpoint`` makes the run resumable. ``distributed``/``save`` are for the
    torchrun workers themselves: train as one rank of the process group; only rank 0 saves.
    """
    if workers > 1 and not distributed:
        from aitasks.model_training.distributed import launch_local

        return launch_local(ts_dir, out_dir, tcfg, workers=workers, arch=arch, checkpoint=checkpoint)
    from aitasks.data_processing.vocabulary import VOCABULARY_FILE
    from aitasks.model_training.dataset import DEFAULT_SPEC, IdVocab, feature_spec, interactions_from_frame
    from aitasks.model_training.two_tower import fit_config, row_keys, save_model, train_two_tower

    train = _read(ts_dir, "train.parquet")
    users = _read(ts_dir, "users.parquet")
    items = _read(ts_dir, "items.parquet")
    user_vocab = IdVocab.build([*train["user_id"].to_list(), *users["user_id"].to_list()])
    item_vocab = IdVocab.build(items["track_id"].to_list())
    vocab = read_vocabularies(ts_dir)
    spec = DEFAULT_SPEC if vocab is None else feature_spec(vocab.genres.size)
    data = interactions_from_frame(train, spec, user_vocab, item_vocab)
    config = fit_config(data, spec, len(user_vocab), len(item_vocab), **(arch or {}))
    # The epoch order follows what each row is (user, track, time), not its position in the file.
    times = train["event_timestamp"].dt.epoch("us").fill_null(0).to_numpy()
    keys = row_keys(train["user_id"].to_list(), train["track_id"].to_list(), times)
    model, report = train_two_tower(config, data, tcfg, keys=keys, checkpoint=checkpoint, distributed=distributed)
    if not save:
        return report
    save_model(model, out_dir, user_vocab=user_vocab, item_vocab=item_vocab)
    if vocab is not None:
        (out_dir / VOCABULARY_FILE).write_text(vocab.to_json(), "utf-8")
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


def embed_for_holdout(model_dir: Path, ts_dir: Path, holdout: Holdout | HeldOutDay) -> tuple[np.ndarray, np.ndarray]:
    """(user vectors, item vectors) of the held-out users and the catalog, in ``holdout``'s order.

    When the model and the training set carry different genre vocabularies (a champion trained on
    an earlier day), the set's genre ids and affinity slots are first re-expressed in the model's
    (:func:`~aitasks.model_training.dataset.align_genres`).
    """
    from aitasks.model_training.dataset import align_genres, tower_inputs
    from aitasks.model_training.two_tower import load_model

    model, user_vocab, item_vocab = load_model(model_dir)
    spec = model.config.spec
    users = _read(ts_dir, "users.parquet")
    items = _read(ts_dir, "items.parquet")
    model_vocab, set_vocab = read_vocabularies(model_dir), read_vocabularies(ts_dir)
    if model_vocab is not None and set_vocab is not None:
        users = align_genres(users, source=set_vocab.genres, target=model_vocab.genres)
        items = align_genres(items, source=set_vocab.genres, target=model_vocab.genres)
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


@dataclass(frozen=True)
class HeldOutDay:
    """The held-out day under both evaluation protocols, as item row indices of ``item_ids``.

    * ``all``: every track the user played (not skipped) on the held-out day is a target, re-listens
      included, and every ranker ranks the whole catalog.
    * ``discovery``: only tracks the user had not played before the split are targets, and every
      ranker leaves the already played tracks out (what serving with ``filter_played`` shows).

    ``favourites`` holds each user's tracks played (not skipped) before the split, most played first
    (ties: most recent play first, then the lower row): the own-history baseline.
    """

    user_ids: list[str]
    item_ids: list[str]
    targets: dict[str, list[np.ndarray]]
    played: list[np.ndarray]
    item_plays: np.ndarray
    favourites: list[np.ndarray]

    def exclude(self, protocol: str) -> list[np.ndarray] | None:
        """What rankers must leave out under ``protocol``."""
        return self.played if protocol == "discovery" else None


def load_held_out_day(ts_dir: Path) -> HeldOutDay:
    """Targets, played tracks and favourites per held-out user, for both protocols."""
    base = load_holdout(ts_dir, exclude_seen=True)
    assert base.exclude is not None
    every = load_holdout(ts_dir, exclude_seen=False).targets
    row = pl.DataFrame({"track_id": base.item_ids, "_row": np.arange(len(base.item_ids), dtype=np.int64)})
    held = pl.DataFrame({"user_id": base.user_ids})
    plays = (
        _read(ts_dir, "train.parquet")
        .select("user_id", "track_id", "event_timestamp")
        .join(held, on="user_id", how="semi")
        .join(row, on="track_id", how="inner")
        .group_by("user_id", "_row")
        .agg(n=pl.len(), last=pl.col("event_timestamp").max())
        .sort(["user_id", "n", "last", "_row"], descending=[False, True, True, False])
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("_row"))
    )
    fav = {u: np.asarray(r, dtype=np.int64) for u, r in zip(plays["user_id"], plays["_row"], strict=True)}
    empty = np.zeros(0, dtype=np.int64)
    return HeldOutDay(
        user_ids=base.user_ids,
        item_ids=base.item_ids,
        targets={"all": every, "discovery": base.targets},
        played=base.exclude,
        item_plays=base.item_plays,
        favourites=[fav.get(u, empty) for u in base.user_ids],
    )


def model_lists(model_dir: Path, ts_dir: Path, day: HeldOutDay) -> dict[str, np.ndarray]:
    """The model's exact top-``MAX_K`` per held-out user under each protocol (brute force)."""
    from aitasks.model_training.evaluation import topk_from_embeddings

    uv, iv = embed_for_holdout(model_dir, ts_dir, day)
    return {p: topk_from_embeddings(uv, iv, MAX_K, exclude=day.exclude(p)) for p in PROTOCOLS}


def popularity_lists(day: HeldOutDay) -> dict[str, np.ndarray]:
    """The most played tracks of the training window, under each protocol."""
    from aitasks.model_training.evaluation import topk_popularity

    n = len(day.user_ids)
    return {p: topk_popularity(day.item_plays, n, MAX_K, exclude=day.exclude(p)) for p in PROTOCOLS}


def own_history_lists(day: HeldOutDay) -> dict[str, np.ndarray]:
    """Each user's own most played tracks, then popularity, under each protocol."""
    from aitasks.model_training.evaluation import topk_own_history

    return {p: topk_own_history(day.favourites, day.item_plays, MAX_K, exclude=day.exclude(p)) for p in PROTOCOLS}


@dataclass(frozen=True)
class RankerEvaluation:
    """One ranker on the held-out day: metrics and per-user scores under each protocol.

    ``filtered_on_all`` scores the discovery lists (played tracks removed) against all next plays:
    what a listener served with ``filter_played`` gets out of the day's actual listening.
    """

    metrics: dict[str, RetrievalMetrics]
    per_user: dict[str, np.ndarray]
    filtered_on_all: RetrievalMetrics
    filtered_on_all_per_user: np.ndarray


def evaluate_lists(day: HeldOutDay, lists: dict[str, np.ndarray], metric: MetricName) -> RankerEvaluation:
    """Metrics and per-user ``metric`` of ``lists`` (one top-k array per protocol)."""
    from aitasks.model_training.evaluation import per_user_scores, retrieval_metrics

    n = len(day.item_ids)
    metrics = {p: retrieval_metrics(lists[p], day.targets[p], n) for p in PROTOCOLS}
    per_user = {p: per_user_scores(lists[p], day.targets[p], n, metric) for p in PROTOCOLS}
    return RankerEvaluation(
        metrics=metrics,
        per_user=per_user,
        filtered_on_all=retrieval_metrics(lists["discovery"], day.targets["all"], n),
        filtered_on_all_per_user=per_user_scores(lists["discovery"], day.targets["all"], n, metric),
    )
