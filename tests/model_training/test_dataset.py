"""Frame -> arrays conversion of the two-tower model: validation, missing values, vocabularies."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from aitasks.data_processing.contract import GENRE_AFFINITY_COLUMNS, MAX_VOCABULARY
from aitasks.data_processing.features import AUDIO_PLACEHOLDER_COLUMNS, USER_FEATURES_SCHEMA
from aitasks.data_processing.vocabulary import build_genre_vocabulary
from aitasks.model_training.dataset import (
    DEFAULT_SPEC,
    FeatureSpec,
    IdVocab,
    align_genres,
    feature_spec,
    interactions_from_frame,
    tower_inputs,
)
from aitasks.runtime.errors import InvalidInputError

VOCAB = IdVocab.build(["t_a", "t_b", "t_c"])


def _items(**overrides: object) -> pl.DataFrame:
    data: dict[str, object] = {
        "track_id": ["t_b", "t_zzz", "t_a", None],
        "plays": [3, 0, 10, None],
        "skip": [0.5, float("nan"), 0.1, 0.2],
        "genre": [2, 99, -3, None],
    }
    data.update(overrides)
    return pl.DataFrame(data, strict=False)


def _convert(frame: pl.DataFrame | pd.DataFrame, dense: tuple[str, ...] = ("plays", "skip")):
    return tower_inputs(frame, id_column="track_id", vocab=VOCAB, dense=dense, categorical=[("genre", 4)])


def test_ids_dense_and_categorical_values() -> None:
    out = _convert(_items())
    # Unknown and null ids map to the reserved index 0.
    assert out.idx.tolist() == [2, 0, 1, 0]
    assert out.idx.dtype == np.int64
    assert out.dense.dtype == np.float32 and out.dense.shape == (4, 2)
    np.testing.assert_array_equal(out.dense[:, 0], np.array([3, 0, 10, np.nan], dtype=np.float32))
    assert np.isnan(out.dense[1, 1]) and out.dense[3, 1] == pytest.approx(0.2)
    # Codes outside [0, card) and nulls are "missing" (-1), not errors: a new genre must not break serving.
    assert out.cat.dtype == np.int64 and out.cat[:, 0].tolist() == [2, -1, -1, -1]


def test_pandas_frame_gives_the_same_arrays() -> None:
    frame = _items()
    as_pandas = frame.to_pandas()  # nullable ints become float64 with NaN, as Feast returns them
    assert as_pandas["genre"].dtype == np.float64
    a, b = _convert(frame), _convert(as_pandas)
    np.testing.assert_array_equal(a.idx, b.idx)
    np.testing.assert_array_equal(a.dense, b.dense)
    np.testing.assert_array_equal(a.cat, b.cat)


def test_missing_columns_are_all_named() -> None:
    with pytest.raises(InvalidInputError) as err:
        tower_inputs(
            _items(),
            id_column="track_id",
            vocab=VOCAB,
            dense=("plays", "nope_1"),
            categorical=[("nope_2", 3)],
        )
    assert set(err.value.fields) == {"nope_1", "nope_2"}
    assert "missing column" in str(err.value)


def test_audio_placeholders_may_be_absent_or_all_null() -> None:
    dense = ("plays", *AUDIO_PLACEHOLDER_COLUMNS)
    absent = _convert(_items(), dense)
    assert np.isnan(absent.dense[:, 1:]).all()
    nulls = _items(**{c: [None] * 4 for c in AUDIO_PLACEHOLDER_COLUMNS})
    assert nulls[AUDIO_PLACEHOLDER_COLUMNS[0]].dtype == pl.Null
    np.testing.assert_array_equal(_convert(nulls, dense).dense, absent.dense)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), 1e300])
def test_infinite_values_are_rejected_naming_the_column(bad: float) -> None:
    with pytest.raises(InvalidInputError) as err:
        _convert(_items(skip=[0.5, bad, 0.1, 0.2]))
    assert err.value.fields == ("skip",)
    assert "infinite" in str(err.value)


def test_wrong_types_are_rejected() -> None:
    with pytest.raises(InvalidInputError) as err:
        _convert(_items(plays=["a", "b", "c", "d"], genre=[0.5, 1.0, 2.0, None]))
    assert set(err.value.fields) == {"plays", "genre"}
    with pytest.raises(InvalidInputError) as err:
        _convert(_items(track_id=[1, 2, 3, 4]))
    assert err.value.fields == ("track_id",)


def test_booleans_count_as_numeric() -> None:
    out = _convert(_items(plays=[True, False, True, None]))
    np.testing.assert_array_equal(out.dense[:, 0], np.array([1, 0, 1, np.nan], dtype=np.float32))


def test_interactions_report_both_towers_and_align_rows() -> None:
    spec = FeatureSpec(user_dense=("u_x",), item_dense=("plays",), item_categorical=(("genre", 4),))
    users = IdVocab.build(["u1", "u2"])
    frame = _items().with_columns(user_id=pl.Series(["u2", "u1", "u9", "u1"]), u_x=pl.Series([1.0, 2.0, 3.0, 4.0]))
    data = interactions_from_frame(frame, spec, users, VOCAB)
    assert len(data) == 4
    assert data.users.idx.tolist() == [2, 1, 0, 1]
    assert data.items.idx.tolist() == [2, 0, 1, 0]
    with pytest.raises(InvalidInputError) as err:
        interactions_from_frame(frame.drop("u_x", "genre"), spec, users, VOCAB)
    assert set(err.value.fields) == {"u_x", "genre"}


def test_empty_frame_gives_empty_arrays_of_the_right_width() -> None:
    out = _convert(_items().head(0))
    assert out.idx.shape == (0,) and out.dense.shape == (0, 2) and out.cat.shape == (0, 1)


def test_default_spec_matches_the_feature_contract() -> None:
    expected_user = [
        n for n in USER_FEATURES_SCHEMA.names if n not in {"user_id", "event_timestamp", "created_timestamp"}
    ]
    assert list(DEFAULT_SPEC.user_dense) == expected_user
    assert DEFAULT_SPEC.user_categorical == ()
    assert set(AUDIO_PLACEHOLDER_COLUMNS) <= set(DEFAULT_SPEC.item_dense)
    assert DEFAULT_SPEC.item_categorical == (("track_genre_id", MAX_VOCABULARY + 1),), "any vocabulary fits"
    assert "track_genre_id" not in DEFAULT_SPEC.item_dense
    assert set(GENRE_AFFINITY_COLUMNS) <= set(DEFAULT_SPEC.user_dense)
    # A model trained on a vocabulary has one genre row per id plus `other`.
    assert feature_spec(49).item_categorical == (("track_genre_id", 49),)
    assert feature_spec(49).user_dense == DEFAULT_SPEC.user_dense


def _vocab(genres: list[str]):
    return build_genre_vocabulary(pl.DataFrame({"track_id": [f"t{i}" for i in range(len(genres))], "genre": genres}))


def test_align_genres_moves_ids_and_shares_to_the_same_genre() -> None:
    # source ranks: rock 0, pop 1, jazz 2; target ranks: pop 0, folk 1, rock 2 (no jazz: other = 3).
    source = _vocab(["rock"] * 3 + ["pop"] * 2 + ["jazz"])
    target = _vocab(["pop"] * 3 + ["folk"] * 2 + ["rock"])
    slots = {c: [0.0, None] for c in GENRE_AFFINITY_COLUMNS}
    slots["user_genre_affinity_00"] = [0.5, None]  # rock
    slots["user_genre_affinity_01"] = [0.2, None]  # pop
    slots["user_genre_affinity_02"] = [0.2, None]  # jazz
    slots["user_genre_affinity_other"] = [0.1, None]
    frame = pl.DataFrame({"track_genre_id": [0, 1, 2, 3, None], **{k: v * 2 + [0.0] for k, v in slots.items()}})
    frame = frame.with_columns(pl.col(c).cast(pl.Float32) for c in GENRE_AFFINITY_COLUMNS)
    out = align_genres(frame, source=source, target=target)
    assert out["track_genre_id"].to_list() == [2, 0, 3, 3, None], "rock->2, pop->0, jazz and other->other"
    row = out.row(0, named=True)
    assert row["user_genre_affinity_00"] == pytest.approx(0.2)  # pop
    assert row["user_genre_affinity_02"] == pytest.approx(0.5)  # rock
    assert row["user_genre_affinity_01"] == 0.0  # folk: nobody had it
    assert row["user_genre_affinity_other"] == pytest.approx(0.3)  # jazz + source other
    assert sum(row[c] for c in GENRE_AFFINITY_COLUMNS) == pytest.approx(1.0)
    assert out.row(1, named=True)["user_genre_affinity_00"] is None, "a missing snapshot stays missing"
    assert out.schema == frame.schema
    assert align_genres(frame, source=source, target=source) is frame


def test_feature_spec_is_strict() -> None:
    with pytest.raises(ValidationError):
        FeatureSpec(user_dense=("a", "a"), item_dense=())
    with pytest.raises(ValidationError):
        FeatureSpec(user_dense=(), item_dense=("b",), item_categorical=(("b", 3),))
    with pytest.raises(ValidationError):
        FeatureSpec(user_dense=(), item_dense=(), item_categorical=(("g", 0),))
    with pytest.raises(ValidationError):
        FeatureSpec(user_dense=(), item_dense=(), colour="blue")  # type: ignore[call-arg]
    assert FeatureSpec.model_validate_json(DEFAULT_SPEC.model_dump_json()) == DEFAULT_SPEC


# ---------------------------------------------------------------------------------------- vocab


def test_vocab_is_sorted_unique_with_zero_reserved() -> None:
    vocab = IdVocab.build(["b", "a", "b", "c"])
    assert vocab.ids == ("a", "b", "c") and len(vocab) == 4
    assert vocab.id_at(0) is None and vocab.id_at(1) == "a"
    assert vocab.index(np.array(["c", "x", "a"])).tolist() == [3, 0, 1]
    with pytest.raises(IndexError):
        vocab.id_at(4)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        json.dumps({"format": "aitasks.id_vocab", "version": 1, "ids": ["a", "a"]}),
        json.dumps({"format": "aitasks.id_vocab", "version": 1, "ids": ["a", 3]}),
        json.dumps({"format": "aitasks.id_vocab", "version": 2, "ids": []}),
        json.dumps({"format": "aitasks.id_vocab", "version": 1, "ids": [], "more": 1}),
        json.dumps({"format": "other", "version": 1, "ids": []}),
    ],
)
def test_vocab_json_is_validated(text: str) -> None:
    with pytest.raises(ValueError):
        IdVocab.from_json(text)


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.text(max_size=12), max_size=30), probe=st.text(max_size=12))
def test_vocab_properties(ids: list[str], probe: str) -> None:
    vocab = IdVocab.build(ids)
    assert len(vocab) == len(set(ids)) + 1
    positions = np.arange(1, len(vocab), dtype=np.int64)
    # Every index maps back to itself through its id, in one vectorised call.
    np.testing.assert_array_equal(vocab.index([vocab.id_at(int(i)) or "" for i in positions]), positions)
    if probe not in set(ids):
        assert vocab.index([probe]).tolist() == [0]
    again = IdVocab.from_json(vocab.to_json())
    assert again == vocab and again.ids == vocab.ids
    assert IdVocab.build(reversed(ids)) == vocab  # order of the input does not matter
