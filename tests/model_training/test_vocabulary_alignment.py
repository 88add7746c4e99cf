"""A model meets features of another genre vocabulary (a champion on a later day): they are re-expressed first."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from aitasks.data_processing.generator import generate_dataset
from aitasks.data_processing.vocabulary import VOCABULARY_FILE, Vocabularies, Vocabulary
from aitasks.model_training import recommender as rec
from aitasks.model_training.dataset import align_genres
from aitasks.model_training.offline_set import training_set_from_events
from aitasks.model_training.two_tower import TrainConfig


def _reversed(vocab: Vocabulary) -> Vocabulary:
    """The same genres ranked the other way round: every id and affinity slot means another genre."""
    terms = tuple(reversed(vocab.terms))
    keys = [t.key for t in terms]
    return vocab.model_copy(
        update={"terms": terms, "version": Vocabulary.version_of(vocab.kind, vocab.policy, vocab.max_size, keys)}
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("align")
    ds = generate_dataset(
        out / "raw", seed=3, users=150, tracks=300, events=6_000, start=datetime(2026, 5, 1, tzinfo=UTC), days=8
    )
    training_set_from_events(pl.read_parquet(ds.events_path), pl.read_parquet(ds.tracks_path), out / "ts")
    tcfg = TrainConfig(epochs=1, batch_size=256, num_threads=1, average_epochs=1, checkpoints_per_epoch=1)
    rec.train_recommender(out / "ts", out / "model", tcfg, arch={"embedding_dim": 16, "hidden_dim": 32})
    return out / "ts", out / "model"


def test_model_bundle_carries_the_training_sets_vocabulary(trained: tuple[Path, Path]) -> None:
    ts, model = trained
    assert rec.read_vocabularies(model) == rec.read_vocabularies(ts)


def test_features_of_a_reordered_vocabulary_embed_as_the_originals(trained: tuple[Path, Path], tmp_path: Path) -> None:
    ts, model = trained
    vocab = rec.read_vocabularies(ts)
    assert vocab is not None and 2 <= len(vocab.genres.terms) < 16
    other = _reversed(vocab.genres)
    # The same day, its genre columns written in the reversed vocabulary (what a later run would hold).
    moved = tmp_path / "ts"
    shutil.copytree(ts, moved)
    for name in ("users.parquet", "items.parquet"):
        frame = pl.read_parquet(ts / name)
        align_genres(frame, source=vocab.genres, target=other).write_parquet(moved / name)
    (moved / VOCABULARY_FILE).write_text(Vocabularies(genres=other, contexts=vocab.contexts).to_json(), "utf-8")
    assert not pl.read_parquet(moved / "items.parquet").equals(pl.read_parquet(ts / "items.parquet"))

    day = rec.load_held_out_day(ts)
    users, items = rec.embed_for_holdout(model, ts, day)
    users_moved, items_moved = rec.embed_for_holdout(model, moved, day)
    np.testing.assert_allclose(items_moved, items, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(users_moved, users, rtol=1e-5, atol=1e-6)
    # Without its vocabulary the set cannot be re-expressed: the same columns then mean other genres.
    (moved / VOCABULARY_FILE).unlink()
    _, items_unaligned = rec.embed_for_holdout(model, moved, day)
    assert not np.allclose(items_unaligned, items, atol=1e-4)
