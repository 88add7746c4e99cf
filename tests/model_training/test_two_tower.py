"""The two-tower model: it learns (beats popularity), is deterministic, and saves/loads safely."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from pydantic import ValidationError

from aitasks.data_processing.features import track_features_frame, user_features_frame
from aitasks.data_processing.generator import generate_dataset
from aitasks.model_training.dataset import (
    DEFAULT_SPEC,
    FeatureSpec,
    IdVocab,
    Interactions,
    TowerInputs,
    interactions_from_frame,
    tower_inputs,
)
from aitasks.model_training.two_tower import (
    TrainConfig,
    TwoTowerConfig,
    TwoTowerModel,
    fit_config,
    in_batch_loss,
    load_model,
    save_model,
    train_two_tower,
)
from aitasks.runtime.errors import DataFormatError, FatalError, InvalidInputError

START = datetime(2026, 3, 1, tzinfo=UTC)
DAYS = 14
SPLIT = START + timedelta(days=DAYS - 1)
# Small and fast settings for the tests that are not about quality.
QUICK = TrainConfig(epochs=1, batch_size=256, max_examples=4000, num_threads=1)


@dataclass(frozen=True)
class World:
    """Synthetic plays with point-in-time features: train on all days but the last, evaluate on the last."""

    train: Interactions
    user_vocab: IdVocab
    item_vocab: IdVocab
    eval_users: TowerInputs  # held-out users, user features at SPLIT
    catalog: TowerInputs  # every track, track features at SPLIT (missing when no recent plays)
    targets: list[set[int]]  # per held-out user: catalog rows played (not skipped) on the last day
    train_plays: np.ndarray  # per catalog row: non-skipped plays in the training days


def _asof(left: pl.DataFrame, feats: pl.DataFrame, key: str) -> pl.DataFrame:
    """Stand-in for Feast's point-in-time join: the latest snapshot at or before each play."""
    right = feats.drop("created_timestamp").sort(key, "event_timestamp")
    joined = left.sort(key, "ts").join_asof(
        right, left_on="ts", right_on="event_timestamp", by=key, strategy="backward", check_sortedness=False
    )
    return joined.drop("event_timestamp")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    out = tmp_path_factory.mktemp("world")
    ds = generate_dataset(out, seed=7, users=600, tracks=1500, events=60_000, start=START, days=DAYS)
    events, tracks = pl.read_parquet(ds.events_path), pl.read_parquet(ds.tracks_path)
    users_f, tracks_f = user_features_frame(events, tracks), track_features_frame(events, tracks)
    plays = events.filter(~pl.col("skipped")).select("user_id", "track_id", "ts")
    history = plays.filter(pl.col("ts") < SPLIT)
    future = plays.filter(pl.col("ts") >= SPLIT)
    train_frame = _asof(_asof(history, users_f, "user_id"), tracks_f, "track_id").sort("ts", "user_id", "track_id")

    user_vocab = IdVocab.build(events["user_id"].to_list())
    item_vocab = IdVocab.build(tracks["track_id"].to_list())
    train = interactions_from_frame(train_frame, DEFAULT_SPEC, user_vocab, item_vocab)

    at_split = pl.col("event_timestamp") == SPLIT
    targets_f = future.select("user_id", "track_id").unique()
    eval_ids = targets_f["user_id"].unique().sort()
    users_at = pl.DataFrame({"user_id": eval_ids}).join(
        users_f.filter(at_split), on="user_id", how="left", maintain_order="left"
    )
    catalog_at = pl.DataFrame({"track_id": list(item_vocab.ids)}).join(
        tracks_f.filter(at_split), on="track_id", how="left", maintain_order="left"
    )
    spec = DEFAULT_SPEC
    eval_users = tower_inputs(
        users_at, id_column="user_id", vocab=user_vocab, dense=spec.user_dense, categorical=spec.user_categorical
    )
    catalog = tower_inputs(
        catalog_at, id_column="track_id", vocab=item_vocab, dense=spec.item_dense, categorical=spec.item_categorical
    )
    # Catalog row r is vocabulary index r + 1.
    rows = item_vocab.index(targets_f["track_id"].to_numpy()) - 1
    by_user: dict[str, set[int]] = {}
    for user, row in zip(targets_f["user_id"].to_list(), rows.tolist(), strict=True):
        by_user.setdefault(user, set()).add(row)
    train_plays = np.bincount(train.items.idx, minlength=len(item_vocab))[1:]
    return World(
        train, user_vocab, item_vocab, eval_users, catalog, [by_user[u] for u in eval_ids.to_list()], train_plays
    )


def _config(world: World, **arch: float) -> TwoTowerConfig:
    return fit_config(world.train, DEFAULT_SPEC, len(world.user_vocab), len(world.item_vocab), **arch)


@pytest.fixture(scope="module")
def quick_model(world: World) -> TwoTowerModel:
    return train_two_tower(_config(world), world.train, QUICK)[0]


def _recall_at_10(top: np.ndarray, targets: list[set[int]]) -> float:
    return float(np.mean([len(t & set(row.tolist())) / min(len(t), 10) for row, t in zip(top, targets, strict=True)]))


# ---------------------------------------------------------------------------------------- learning


def test_beats_popularity_on_the_held_out_day_with_default_settings(world: World) -> None:
    model, report = train_two_tower(_config(world), world.train, TrainConfig())
    users = model.embed_users(world.eval_users)
    items = model.embed_items(world.catalog)
    scores = users @ items.T  # the whole catalog, exact
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    popular = np.lexsort((np.arange(len(world.train_plays)), -world.train_plays))[:10]
    model_recall = _recall_at_10(top, world.targets)
    pop_recall = _recall_at_10(np.tile(popular, (len(world.targets), 1)), world.targets)
    print(f"recall@10 model {model_recall:.4f} popularity {pop_recall:.4f} ratio {model_recall / pop_recall:.2f}")
    assert pop_recall > 0.02  # the baseline is a real one
    assert model_recall >= 1.5 * pop_recall
    losses = [h["loss"] for h in report.history]
    assert len(losses) == TrainConfig().epochs and losses[-1] < losses[0]


@pytest.mark.parametrize("optimizer", ["sparse", "dense"])
def test_both_optimizers_reduce_the_loss(world: World, optimizer: str) -> None:
    seen: list[dict[str, float]] = []
    tcfg = TrainConfig(epochs=3, batch_size=256, max_examples=6000, num_threads=1, optimizer=optimizer)
    _, report = train_two_tower(_config(world), world.train, tcfg, on_epoch=seen.append)
    assert seen == report.history
    assert [h["epoch"] for h in report.history] == [1.0, 2.0, 3.0]
    assert report.history[-1]["loss"] < 0.9 * report.history[0]["loss"]
    assert report.examples == 3 * 6000 and report.examples_per_s > 0


def test_embeddings_are_unit_vectors_and_eval_mode_is_kept(world: World, quick_model: TwoTowerModel) -> None:
    quick_model.train()
    vectors = quick_model.embed_items(world.catalog, batch_size=100)
    assert quick_model.training  # restored
    assert vectors.dtype == np.float32 and vectors.shape == (len(world.catalog), 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Batching does not change the result.
    np.testing.assert_allclose(quick_model.embed_items(world.catalog), vectors, atol=1e-6)
    assert quick_model.embed_users(world.eval_users.take(np.arange(0))).shape == (0, 64)


def test_training_leaves_global_torch_state_alone(world: World) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    train_two_tower(_config(world), world.train, QUICK.model_copy(update={"num_threads": 2}))
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------------------------------- loss


def test_in_batch_loss_masks_duplicates_and_corrects_popularity() -> None:
    u = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    v = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.3, 1.0], [1.0, 0.2]]), dim=1)
    item = torch.tensor([5, 7, 5])  # rows 0 and 2 played the same track
    log_q = torch.log(torch.tensor([0.1] * 5 + [0.5, 0.1, 0.2]))
    inv_t = 1 / 0.5
    logits = (u @ v.T) * inv_t - log_q[item].unsqueeze(0)
    # Row 0 must not count row 2's copy of track 5 as a negative (and vice versa).
    manual = torch.stack(
        [
            -torch.log_softmax(logits[0, [0, 1]], 0)[0],
            -torch.log_softmax(logits[1], 0)[1],
            -torch.log_softmax(logits[2, [1, 2]], 0)[1],
        ]
    ).mean()
    torch.testing.assert_close(in_batch_loss(u, v, item, log_q, inv_t), manual)
    plain = torch.nn.functional.cross_entropy((u @ v.T) * inv_t, torch.arange(3))
    assert not torch.allclose(in_batch_loss(u, v, item, None, inv_t), plain)  # masking matters


# ------------------------------------------------------------------------------------- determinism


def _trained_bytes(world: World, tmp: Path, seed: int) -> bytes:
    model, _ = train_two_tower(_config(world), world.train, QUICK.model_copy(update={"seed": seed}))
    save_model(model, tmp, user_vocab=world.user_vocab, item_vocab=world.item_vocab)
    return (tmp / "model.safetensors").read_bytes()


def test_saving_is_byte_stable(world: World, quick_model: TwoTowerModel, tmp_path: Path) -> None:
    # safetensors orders its metadata by a per-call random hash; save_model must not pass that on.
    files = set()
    for i in range(8):
        save_model(quick_model, tmp_path / str(i), user_vocab=world.user_vocab, item_vocab=world.item_vocab)
        files.add((tmp_path / str(i) / "model.safetensors").read_bytes())
    assert len(files) == 1


def test_same_seed_gives_identical_weights_different_seed_does_not(world: World, tmp_path: Path) -> None:
    first = _trained_bytes(world, tmp_path / "a", seed=3)
    again = _trained_bytes(world, tmp_path / "b", seed=3)
    other = _trained_bytes(world, tmp_path / "c", seed=4)
    assert first == again
    assert first != other


# ------------------------------------------------------------------------------------- validation


def test_bad_training_data_is_rejected(world: World) -> None:
    cfg = _config(world)
    empty = Interactions(world.train.users.take(np.arange(0)), world.train.items.take(np.arange(0)))
    with pytest.raises(InvalidInputError, match="no training rows"):
        train_two_tower(cfg, empty, QUICK)
    few = np.arange(10)
    users, items = world.train.users.take(few), world.train.items.take(few)
    with pytest.raises(InvalidInputError, match="differ in rows"):
        train_two_tower(cfg, Interactions(users, world.train.items.take(np.arange(9))), QUICK)
    out_of_range = TowerInputs(np.full(10, len(world.item_vocab)), items.dense, items.cat)
    with pytest.raises(InvalidInputError) as err:
        train_two_tower(cfg, Interactions(users, out_of_range), QUICK)
    assert err.value.task == "model.train" and err.value.fields == ("items.idx",)
    narrow = TowerInputs(users.idx, users.dense[:, :3], users.cat)
    with pytest.raises(InvalidInputError) as err:
        train_two_tower(cfg, Interactions(narrow, items), QUICK)
    assert err.value.fields == ("users.dense",)
    bad_cat = TowerInputs(items.idx, items.dense, np.full_like(items.cat, cfg.spec.item_categorical[0][1]))
    with pytest.raises(InvalidInputError) as err:
        train_two_tower(cfg, Interactions(users, bad_cat), QUICK)
    assert err.value.fields == ("items.cat[track_genre_id]",)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is absent")
def test_unavailable_device_is_an_input_error(world: World) -> None:
    with pytest.raises(InvalidInputError, match="CUDA is not available"):
        train_two_tower(_config(world), world.train, QUICK.model_copy(update={"device": "cuda"}))
    with pytest.raises(ValidationError):
        TrainConfig(device="tpu")


def test_divergence_is_a_fatal_error_naming_epoch_and_batch(world: World) -> None:
    tcfg = QUICK.model_copy(update={"lr": 1e30, "sparse_lr": 1e30})
    with pytest.raises(FatalError, match=r"loss became (NaN|infinite) at epoch 1 batch \d+"):
        train_two_tower(_config(world), world.train, tcfg)


def test_normalisation_handles_missing_and_constant_columns() -> None:
    spec = FeatureSpec(user_dense=("a", "b", "c"), item_dense=("d",))
    dense = np.array([[1.0, np.nan, 5.0], [3.0, np.nan, 5.0], [np.nan, np.nan, 5.0]], dtype=np.float32)
    users = TowerInputs(np.array([1, 2, 1]), dense, np.zeros((3, 0), dtype=np.int64))
    item_dense = np.array([[1e6], [0.0], [-1e6]], dtype=np.float32)
    items = TowerInputs(np.array([1, 1, 2]), item_dense, np.zeros((3, 0), dtype=np.int64))
    cfg = fit_config(Interactions(users, items), spec, 3, 3)
    assert cfg.user_mean[0] == pytest.approx((np.log1p(1) + np.log1p(3)) / 2)  # NaN rows ignored
    assert (cfg.user_mean[1], cfg.user_std[1]) == (0.0, 1.0)  # all missing
    assert cfg.user_std[2] == 1.0  # constant
    assert cfg.item_mean[0] == pytest.approx(0.0)  # sign(x) log1p(|x|) is symmetric
    model = TwoTowerModel(cfg)
    vectors = model.embed_users(users)
    assert np.isfinite(vectors).all()
    with pytest.raises(InvalidInputError) as err:
        fit_config(Interactions(users, items), spec, 3, 3, temperature=0.0, user_mean=(1.0,))
    assert set(err.value.fields) == {"user_mean"}  # derived from the data, never passed
    with pytest.raises(InvalidInputError) as err:
        fit_config(Interactions(users, items), spec, 3, 3, temperature=0.0)
    assert err.value.fields == ("temperature",)


# ----------------------------------------------------------------------------------- save / load


def test_round_trip_gives_identical_embeddings(world: World, quick_model: TwoTowerModel, tmp_path: Path) -> None:
    hashes = save_model(
        quick_model, tmp_path, user_vocab=world.user_vocab, item_vocab=world.item_vocab, extra={"run": "r1"}
    )
    assert set(hashes) == {"model.safetensors", "model.json", "users.json", "items.json"}
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    model, users, items = load_model(tmp_path)
    assert torch.equal(torch.rand(2), expected)  # loading draws no random numbers
    assert users == world.user_vocab and items == world.item_vocab
    assert model.config == quick_model.config and not model.training
    np.testing.assert_array_equal(model.embed_users(world.eval_users), quick_model.embed_users(world.eval_users))
    np.testing.assert_array_equal(model.embed_items(world.catalog), quick_model.embed_items(world.catalog))
    doc = json.loads((tmp_path / "model.json").read_text())
    assert doc["format"] == "aitasks.two_tower" and doc["extra"] == {"run": "r1"}


@pytest.fixture
def saved(world: World, quick_model: TwoTowerModel, tmp_path: Path) -> Path:
    save_model(quick_model, tmp_path, user_vocab=world.user_vocab, item_vocab=world.item_vocab)
    return tmp_path


def _load_error(model_dir: Path) -> DataFormatError:
    with pytest.raises(DataFormatError) as err:
        load_model(model_dir)
    return err.value


def test_truncated_weights_are_rejected(saved: Path) -> None:
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    err = _load_error(saved)
    assert err.uri == str(path) and "not a valid safetensors file" in err.problem


def test_wrong_tensor_shape_is_rejected(saved: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = saved / "model.safetensors"
    tensors = load_file(str(path))
    tensors["item.mlp.2.weight"] = tensors["item.mlp.2.weight"][:-1]
    save_file(tensors, str(path), metadata={"format": "aitasks.two_tower", "version": "1"})
    err = _load_error(saved)
    assert "tensor 'item.mlp.2.weight'" in err.problem and "expected F32[64, 128]" in err.problem


def test_unexpected_tensor_and_foreign_metadata_are_rejected(saved: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = saved / "model.safetensors"
    tensors = load_file(str(path))
    save_file(
        {**tensors, "backdoor": torch.zeros(1)}, str(path), metadata={"format": "aitasks.two_tower", "version": "1"}
    )
    assert "unexpected ['backdoor']" in _load_error(saved).problem
    save_file(tensors, str(path))
    assert "metadata format" in _load_error(saved).problem


def test_unknown_field_in_model_json_is_rejected(saved: Path) -> None:
    path = saved / "model.json"
    doc = json.loads(path.read_text())
    doc["config"]["dropout"] = 0.5
    path.write_text(json.dumps(doc))
    err = _load_error(saved)
    assert err.uri == str(path) and "config.dropout" in err.problem and "Extra inputs" in err.problem


def test_vocabulary_size_mismatch_and_missing_files_are_rejected(saved: Path) -> None:
    (saved / "items.json").write_text(IdVocab.build(["t_1"]).to_json())
    err = _load_error(saved)
    assert err.uri == str(saved / "items.json") and "vocabulary has 2 entries" in err.problem
    (saved / "model.json").unlink()
    assert "file is missing" in _load_error(saved).problem


class _Payload:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def test_pickles_are_never_unpickled(saved: Path, tmp_path: Path) -> None:
    armed = tmp_path / "armed"
    pickle.loads(pickle.dumps(_Payload(armed)))
    assert armed.exists()  # the payload really runs when unpickled

    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    (saved / "model.safetensors").write_bytes(payload)
    assert "not a valid safetensors file" in _load_error(saved).problem
    torch.save({"x": _Payload(marker)}, saved / "model.safetensors")  # a torch checkpoint is a zip of pickles
    assert "not a valid safetensors file" in _load_error(saved).problem
    (saved / "model.json").write_bytes(payload)
    assert _load_error(saved).uri == str(saved / "model.json")
    assert not marker.exists()
