"""Explanations: attributions add up to the score's change, "because you played" is the nearest played track."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from aitasks.model_training import explain as X
from aitasks.runtime.errors import InvalidInputError


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from aitasks.data_processing.generator import generate_dataset
    from aitasks.model_training.offline_set import training_set_from_events
    from aitasks.model_training.recommender import train_recommender
    from aitasks.model_training.two_tower import TrainConfig

    out = tmp_path_factory.mktemp("explain")
    ds = generate_dataset(
        out / "raw", seed=8, users=120, tracks=200, events=3_000, start=datetime(2026, 4, 1, tzinfo=UTC), days=6
    )
    training_set_from_events(pl.read_parquet(ds.events_path), pl.read_parquet(ds.tracks_path), out / "ts")
    train_recommender(out / "ts", out / "model", TrainConfig(epochs=2, batch_size=256), arch={"hidden_dim": 32})
    return out / "ts", out / "model"


def test_attributions_add_up_to_the_score_change_from_an_average_listener(world: tuple[Path, Path]) -> None:
    import torch

    from aitasks.model_training.two_tower import load_model

    _, model_dir = world
    model, _, _ = load_model(model_dir)
    spec = model.config.spec
    rng = np.random.default_rng(0)
    dense = rng.normal(size=len(spec.user_dense)).astype(np.float32)
    cat = np.zeros(len(spec.user_categorical), dtype=np.int64)
    items = rng.normal(size=(4, model.config.embedding_dim)).astype(np.float32)
    attrs, scores, bases, deltas = X.attribute_user(model, 3, dense, cat, items, steps=200)
    assert attrs.shape == (4, len(spec.user_dense))
    change = scores - bases
    # Completeness of integrated gradients, up to the integral's error (ReLU kinks): within 2% of the change.
    assert np.abs(attrs.sum(axis=1) - change).max() <= 0.02 * np.abs(change).max()
    np.testing.assert_allclose(deltas, attrs.sum(axis=1) - change, atol=1e-4)
    # The scores are the model's own: the user vector (tower output) against each item vector.
    with torch.no_grad():
        u = model.user(torch.tensor([3]), torch.from_numpy(dense)[None], torch.from_numpy(cat)[None]).numpy()[0]
    np.testing.assert_allclose(scores, items @ u, rtol=1e-5, atol=1e-6)
    # A user at the baseline has nothing to attribute.
    zero, s0, b0, _ = X.attribute_user(model, 3, np.zeros_like(dense), cat, items, steps=8)
    assert np.abs(zero).max() < 1e-6 and np.allclose(s0, b0)


def test_nearest_played_is_the_most_similar_played_track() -> None:
    vecs = np.eye(3, dtype=np.float32)
    target = np.array([0.6, 0.8, 0.0], dtype=np.float32)
    got = X.nearest_played(target, vecs, ["a", "b", "c"], [1, 5, 2], 2)
    assert [n.track_id for n in got] == ["b", "a"] and got[0].similarity == pytest.approx(0.8)
    tie = X.nearest_played(np.array([1.0, 1.0, 0.0]), vecs, ["a", "b", "c"], [1, 5, 2], 1)
    assert tie[0].track_id == "b", "ties: the more played track"
    assert X.nearest_played(target, np.zeros((0, 3)), [], [], 3) == []


def test_explanations_of_held_out_listeners(world: tuple[Path, Path]) -> None:
    ts, model_dir = world
    out = X.explain_users(model_dir, ts, users=2, k=3, neighbours=2, top_features=5, steps=16)
    assert len(out) == 2
    history = pl.read_parquet(ts / "train.parquet")
    for ue in out:
        played = set(history.filter(pl.col("user_id") == ue.user_id)["track_id"].to_list())
        assert ue.played == len(played) > 0
        assert [e.rank for e in ue.items] == [1, 2, 3]
        assert [e.score for e in ue.items] == sorted((e.score for e in ue.items), reverse=True)
        for e in ue.items:
            assert e.track_id not in played, "recommendations leave played tracks out"
            assert {n.track_id for n in e.because} <= played and len(e.because) == 2
            assert len(e.attributions) == 5
            mags = [abs(a.attribution) for a in e.attributions]
            assert mags == sorted(mags, reverse=True)
    labels = [a.label for ue in out for e in ue.items for a in e.attributions]
    assert any(label.startswith("user_genre_affinity_") and "(" in label for label in labels) or labels


def test_bad_counts_are_named(world: tuple[Path, Path]) -> None:
    ts, model_dir = world
    with pytest.raises(InvalidInputError) as err:
        X.explain_users(model_dir, ts, users=0, k=500)
    assert "users" in str(err.value) and "k" in str(err.value)


def test_report_is_self_contained_and_escaped() -> None:
    ue = X.UserExplanations(
        user_id="u_<b>1</b>",
        played=2,
        items=[
            X.Explanation(
                track_id="t_1",
                rank=1,
                score=0.5,
                baseline_score=0.2,
                delta=1e-4,
                attributions=[
                    X.Attribution(feature="f", label="f <script>", value=None, attribution=0.2),
                    X.Attribution(feature="g", label="g", value=3.0, attribution=-0.1),
                ],
                because=[X.Neighbour(track_id="t_<i>", similarity=0.9, plays=3)],
            )
        ],
    )
    page = X.render_html([ue], title="T <x>", facts={"run": "r&d"})
    assert "Content-Security-Policy" in page and "<script" not in page and "href" not in page
    assert "&lt;script&gt;" in page and "u_&lt;b&gt;1&lt;/b&gt;" in page and "r&amp;d" in page
    assert page.count("<svg") == 1 and "#1a7f37" in page and "#cf222e" in page
