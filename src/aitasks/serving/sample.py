"""A small, real serving world built offline: a seeded two-tower model and its published index.

For the serving tests, ``python -m bench.serving`` and trying ``serve-updates`` / ``serve-api`` on a
laptop: the platform's own model classes (saved as safetensors with their vocabularies), the item
tower's vectors in an hnswlib index published with ``CURRENT``, and the model version in a model
directory (``ModelSource(kind="dir")``). The model is seeded, not trained: its answers are
deterministic, not good.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GENRES = tuple(f"Genre {chr(65 + i)}" for i in range(20))


@dataclass
class World:
    """Where the sample lives and what it holds."""

    root: Path
    storage_root: str
    models_dir: Path
    model_name: str
    index_name: str
    track_ids: list[str]
    user_ids: list[str]
    genres: dict[str, str]

    def settings(self, redis_url: str) -> Any:
        from aitasks.runtime.settings import Settings

        return Settings(storage_root=self.storage_root, redis_url=redis_url, feast_online_store="redis")

    def source(self) -> Any:
        from aitasks.serving.model import ModelSource

        return ModelSource(kind="dir", directory=str(self.models_dir))


def sample_world(root: Path, *, users: int = 40, tracks: int = 300, seed: int = 0) -> World:
    """A world under ``root`` with model version 1 published (index ``reco-tracks``)."""
    rng = np.random.default_rng(seed)
    track_ids = [f"t{i:04d}" for i in range(tracks)]
    user_ids = [f"u{i:03d}" for i in range(users)]
    genres = {t: GENRES[int(rng.integers(len(GENRES)))] for t in track_ids}
    world = World(
        root=root,
        storage_root=str(root / "store"),
        models_dir=root / "models",
        model_name="reco-two-tower",
        index_name="reco-tracks",
        track_ids=track_ids,
        user_ids=user_ids,
        genres=genres,
    )
    publish_for(world, 1, seed=seed + 1)
    return world


def save_tiny_model(out: Path, track_ids: list[str], user_ids: list[str], genres: dict[str, str], seed: int) -> None:
    """A seeded, untrained two-tower model over this catalog, with vocabularies and a popularity list."""
    import polars as pl
    import torch

    from aitasks.data_processing.vocabulary import (
        VOCABULARY_FILE,
        Vocabularies,
        build_context_vocabulary,
        build_genre_vocabulary,
    )
    from aitasks.model_training.dataset import IdVocab, feature_spec
    from aitasks.model_training.two_tower import TwoTowerConfig, TwoTowerModel, save_model

    catalog = pl.DataFrame({"track_id": track_ids, "genre": [genres[t] for t in track_ids]})
    gv = build_genre_vocabulary(catalog)
    vocabs = Vocabularies(genres=gv, contexts=build_context_vocabulary(pl.Series(["home", "car"])))
    spec = feature_spec(gv.size)
    torch.manual_seed(seed)
    cfg = TwoTowerConfig(
        spec=spec,
        num_users=len(user_ids) + 1,
        num_items=len(track_ids) + 1,
        id_dim=8,
        cat_dim=4,
        hidden_dim=16,
        embedding_dim=16,
        user_mean=tuple(0.0 for _ in spec.user_dense),
        user_std=tuple(1.0 for _ in spec.user_dense),
        item_mean=tuple(0.0 for _ in spec.item_dense),
        item_std=tuple(1.0 for _ in spec.item_dense),
    )
    model = TwoTowerModel(cfg)
    with torch.no_grad():  # give known ids a vector of their own (a trained model would)
        model.user.ids.weight.normal_(0, 0.5)
        model.item.ids.weight.normal_(0, 0.5)
    save_model(model, out, user_vocab=IdVocab.build(user_ids), item_vocab=IdVocab.build(track_ids))
    (out / VOCABULARY_FILE).write_text(vocabs.to_json(), "utf-8")
    (out / "popularity.json").write_text(json.dumps({"tracks": track_ids[:50]}), "utf-8")


def publish_for(world: World, version: int, seed: int) -> int:
    """Build model ``version`` (seeded), index its item vectors and publish; returns the index version."""
    import polars as pl

    from aitasks.recommendation_update.index import IndexConfig, build_index
    from aitasks.recommendation_update.publish import publish_index
    from aitasks.serving.model import ServingModel

    mdir = world.models_dir / world.model_name / f"v{version}"
    save_tiny_model(mdir, world.track_ids, world.user_ids, world.genres, seed)
    model = ServingModel(world.model_name, version, mdir)
    rows = [{"track_id": t, "track_genre_id": model.genre_id(world.genres[t])} for t in world.track_ids]
    vecs = model.embed_tracks(rows)
    index = build_index(vecs, world.track_ids, IndexConfig(ef_search_ladder=(64,)))
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp))
        pl.DataFrame({"user_id": [world.user_ids[0]], "track_id": [world.track_ids[0]]}).write_parquet(
            Path(tmp) / "seen.parquet"
        )
        res = publish_index(
            world.storage_root,
            world.index_name,
            Path(tmp),
            backend="hnswlib",
            dim=16,
            m=16,
            ef_construction=200,
            ef_search=64,
            recall_at_k=1.0,
            k=10,
            model_name=world.model_name,
            model_version=version,
            sweep_after_s=None,
        )
    return res.version
