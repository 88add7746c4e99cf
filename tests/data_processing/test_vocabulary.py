"""Open vocabularies: the normalisation policy, ranking, the `other` bucket, versions and the artifact."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aitasks.data_processing.contract import GENRE_AFFINITY_COLUMNS, GENRE_SLOTS, genre_affinity_column
from aitasks.data_processing.features import (
    build_vocabularies,
    compute_track_features,
    compute_user_features,
    track_features_frame,
    user_features_frame,
)
from aitasks.data_processing.vocabulary import (
    Vocabularies,
    build_context_vocabulary,
    build_genre_vocabulary,
    fold,
    read_parquet_vocabularies,
)
from aitasks.runtime.errors import DataFormatError

T = datetime(2026, 10, 11, tzinfo=UTC)


def catalog(genres: list[str]) -> pl.DataFrame:
    n = len(genres)
    return pl.DataFrame(
        {
            "track_id": [f"t{i}" for i in range(n)],
            "artist_id": [f"a{i}" for i in range(n)],
            "genre": genres,
            "duration_ms": pl.Series([200_000] * n, dtype=pl.Int64),
            "release_year": pl.Series([2020] * n, dtype=pl.Int32),
            "explicit": [False] * n,
        }
    )


def events(plays: list[tuple[str, str, datetime]], context: str = "playlist") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(plays))],
            "user_id": [p[0] for p in plays],
            "track_id": [p[1] for p in plays],
            "ts": pl.Series([p[2] for p in plays], dtype=pl.Datetime("us", "UTC")),
            "ms_played": pl.Series([100_000] * len(plays), dtype=pl.Int64),
            "context": [context] * len(plays),
            "skipped": [False] * len(plays),
        }
    )


# ------------------------------------------------------------------------------------ policy


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("Hip-Hop", "hiphop"),
        ("hip hop", "hiphop"),
        ("HipHop", "hiphop"),
        ("HIP_HOP", "hiphop"),
        (" hip-hop ", "hiphop"),
        ("Électro", "electro"),
        ("electro", "electro"),
        ("R&B", "rb"),
        ("RnB", "rnb"),  # no synonyms: a different key
        ("Straße", "strasse"),
        ("8-bit", "8bit"),
        ("ジャズ", "シャス"),  # decomposed: the voicing marks are combining marks, dropped like accents
        ("--", ""),
        ("   ", ""),
    ],
)
def test_fold_policy(raw: str, key: str) -> None:
    assert fold(raw) == key


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_fold_is_idempotent_and_keeps_only_letters_and_digits(raw: str) -> None:
    key = fold(raw)
    assert fold(key) == key
    assert all(ch.isalnum() for ch in key)
    assert fold(raw.upper()) == fold(raw.lower()) == fold(raw)


# ----------------------------------------------------------------------------------- genres


def test_spelling_variants_are_one_genre_ranked_by_tracks_with_label_and_variants() -> None:
    cat = catalog(["Hip-Hop", "hip hop", "HipHop", "Hip-Hop", "Jazz", "jazz", "Polka"])
    plays = pl.Series(["t6"] * 10 + ["t0"])
    vocab = build_genre_vocabulary(cat, plays)
    assert vocab.keys == ("hiphop", "jazz", "polka"), "tracks (4, 2, 1) decide the rank, not plays"
    hiphop = vocab.terms[0]
    assert hiphop.label == "Hip-Hop", "the most common spelling"
    assert hiphop.variants == {"Hip-Hop": 2, "HipHop": 1, "hip hop": 1}
    assert hiphop.tracks == 4 and hiphop.count == 1
    assert vocab.terms[2].count == 10, "plays are counted for people"
    assert vocab.other == {"keys": 0, "count": 0, "tracks": 0}
    assert vocab.ids(pl.Series(["HIP HOP", "polka", "Shoegaze", None])).to_list() == [0, 2, 3, None]


def test_cap_sends_the_smallest_genres_to_other() -> None:
    cat = catalog(["a"] * 3 + ["b"] * 2 + ["c", "d"])
    vocab = build_genre_vocabulary(cat, pl.Series(["t5", "t6", "t6"]), max_size=2)
    assert vocab.keys == ("a", "b") and vocab.other_id == 2 and vocab.size == 3
    assert vocab.other == {"keys": 2, "count": 3, "tracks": 2}
    assert vocab.ids(cat["genre"]).to_list() == [0, 0, 0, 1, 1, 2, 2]


def test_a_genre_without_letter_or_digit_is_named_with_its_rule() -> None:
    with pytest.raises(DataFormatError, match=r"genre ' / ' of track 't1' has no letter or digit \(rule: .*fold-v1"):
        build_genre_vocabulary(catalog(["pop", " / "]))


def test_version_covers_the_mapping_not_the_counts() -> None:
    one = build_genre_vocabulary(catalog(["pop", "rock", "rock"]), pl.Series(["t0"]))
    two = build_genre_vocabulary(catalog(["Pop", "Rock", "ROCK"]), pl.Series(["t1", "t2", "t2"]))
    assert one.version == two.version, "same keys in the same order: same ids"
    other = build_genre_vocabulary(catalog(["pop", "pop", "rock"]))
    assert other.version != one.version, "pop now ranks first: ids differ"


def test_artifact_round_trip_and_tampering_is_refused() -> None:
    vocab = Vocabularies(
        genres=build_genre_vocabulary(catalog(["pop", "Hip-Hop"])),
        contexts=build_context_vocabulary(pl.Series(["Radio", "radio", "CarPlay", "car play", "--"])),
    )
    assert vocab.contexts.keys == ("carplay", "radio")
    assert Vocabularies.from_json(vocab.to_json()) == vocab
    data = json.loads(vocab.to_json())
    data["genres"]["terms"].reverse()
    with pytest.raises(DataFormatError, match=r"version .* does not match its keys"):
        Vocabularies.from_json(json.dumps(data))
    data = json.loads(vocab.to_json())
    data["genres"]["terms"][0]["key"] = "Pop"
    with pytest.raises(DataFormatError, match="not normalised"):
        Vocabularies.from_json(json.dumps(data))


# --------------------------------------------------------------------------------- features


def test_affinity_has_fixed_width_and_an_other_share_beyond_the_top_slots() -> None:
    # 20 genres; genre g<i> has 20 - i tracks so the rank is the index. User a plays ranks 0 and 18.
    genres = [f"g{i:02d}" for i in range(20) for _ in range(20 - i)]
    cat = catalog(genres)
    first = {g: genres.index(g) for g in dict.fromkeys(genres)}
    ev = events([("a", f"t{first['g00']}", T - timedelta(hours=1)), ("a", f"t{first['g18']}", T - timedelta(hours=1))])
    out = user_features_frame(ev, cat, snapshots=[T])
    assert [c for c in out.columns if "affinity" in c] == list(GENRE_AFFINITY_COLUMNS)
    row = out.row(0, named=True)
    assert row[genre_affinity_column(0)] == pytest.approx(0.5)
    assert row["user_genre_affinity_other"] == pytest.approx(0.5), "rank 18 >= 16 slots: other"
    assert sum(row[genre_affinity_column(i)] for i in range(1, GENRE_SLOTS)) == 0.0
    tracks = track_features_frame(ev, cat, snapshots=[T])
    assert sorted(tracks["track_genre_id"].to_list()) == [0, 18], "the item side keeps every id"


def test_feature_files_carry_their_vocabulary(tmp_path: Path) -> None:
    cat = catalog(["Hip-Hop", "hip hop", "Jazz"])
    ev = events([("a", "t0", T - timedelta(days=1)), ("b", "t2", T - timedelta(days=1))], context="Car Play")
    ev_path, cat_path = tmp_path / "events.parquet", tmp_path / "tracks.parquet"
    ev.write_parquet(ev_path)
    cat.write_parquet(cat_path)
    vocab = build_vocabularies(ev_path, cat_path)
    assert vocab.genres.keys == ("hiphop", "jazz") and vocab.contexts.keys == ("carplay",)
    users = compute_user_features(ev_path, cat_path, tmp_path / "u.parquet")
    tracks = compute_track_features(ev_path, cat_path, tmp_path / "t.parquet", vocabularies=vocab)
    assert users.genre_vocabulary == tracks.genre_vocabulary == vocab.genres.version
    assert (
        read_parquet_vocabularies(tmp_path / "u.parquet") == vocab == read_parquet_vocabularies(tmp_path / "t.parquet")
    )
    assert pl.read_parquet(tmp_path / "t.parquet").sort("track_id")["track_genre_id"].to_list() == [0, 1]
    ev.write_parquet(tmp_path / "plain.parquet")
    with pytest.raises(DataFormatError, match=r"carries no aitasks\.vocabularies metadata"):
        read_parquet_vocabularies(tmp_path / "plain.parquet")


def test_a_genre_the_given_vocabulary_has_not_seen_is_other() -> None:
    vocab = build_genre_vocabulary(catalog(["pop", "rock", "rock"]))  # rock 0, pop 1; other = 2
    cat = catalog(["Pop", "Shoegaze"])  # a newer catalog: shoegaze is unseen
    ev = events([("a", "t0", T - timedelta(hours=1)), ("a", "t1", T - timedelta(hours=2))])
    tracks = track_features_frame(ev, cat, snapshots=[T], genre_vocabulary=vocab).sort("track_id")
    assert tracks["track_genre_id"].to_list() == [1, 2]
    row = user_features_frame(ev, cat, snapshots=[T], genre_vocabulary=vocab).row(0, named=True)
    assert row[genre_affinity_column(1)] > 0 and row["user_genre_affinity_other"] > 0
    assert row[genre_affinity_column(2)] == 0.0, "the other id is not slot 2"
    assert row[genre_affinity_column(1)] + row["user_genre_affinity_other"] == pytest.approx(1.0)
