"""Open vocabularies: genres and contexts come from the data, as a versioned artifact.

The contract fixes the *shape* of a genre or a context (some letter or digit, a bounded length), never
a closed list: a real catalog has hundreds of genres and new ones appear every week. The feature step
builds the vocabularies of a run from its catalog and events; the features, the model and serving all
map values through that one artifact.

Normalisation policy (:data:`POLICY`, ``fold-v1``): the *key* of a raw value is the value case-folded,
decomposed (Unicode NFKD) with its combining marks dropped (accents), keeping letters and digits only
(Unicode ``isalnum``); spaces, punctuation and symbols go. So ``Hip-Hop``, ``hip hop``, ``HipHop`` and
``HIP_HOP`` are one genre (``hiphop``), ``Électro`` and ``electro`` another. The policy does not know
synonyms (``R&B`` is ``rb``, ``RnB`` is ``rnb``). A value whose key is empty (only spaces or
punctuation) breaks the shape rule; so does one longer than the contract's limit.

Genre vocabulary: one entry per key, ranked by catalog tracks, then by key; the rank is the id (0 = the
genre with the most tracks). The ranking reads the catalog only, never the events: a feature row at
time T then depends on events before T alone, and the held-out day cannot reorder the slots. (Plays
are counted in each entry for people, not used for the order.) At most ``max_size``
entries (:data:`~aitasks.data_processing.contract.MAX_VOCABULARY`); keys past the cap share the
``other`` id (``len(terms)``), and so does a key the vocabulary has never seen (a value met after the
vocabulary was built). Each entry keeps its display label (the most common spelling, by tracks) and
every spelling seen with its count.

Context vocabulary: the same, ranked by events. No feature uses contexts today; the vocabulary records
what the data hold, so a new context is visible, never refused.

Version: the sha256 of the policy, the cap and the ranked keys (not the counts): two vocabularies
with the same version map every value to the same id.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Final, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aitasks.data_processing.contract import MAX_VOCABULARY
from aitasks.runtime.errors import DataFormatError
from aitasks.runtime.hashing import sha256_json

__all__ = [
    "FORMAT",
    "PARQUET_KEY",
    "POLICY",
    "VOCABULARY_FILE",
    "Term",
    "Vocabularies",
    "Vocabulary",
    "build_context_vocabulary",
    "build_genre_vocabulary",
    "fold",
    "fold_series",
    "read_parquet_vocabularies",
]

#: Name of the normalisation policy (see the module docstring); part of every version.
POLICY: Final = "fold-v1"
FORMAT: Final = "aitasks.vocabularies"
FORMAT_VERSION: Final = 1
#: File name of the artifact, in the feature step's outputs, the training set and the model bundle.
VOCABULARY_FILE: Final = "vocabulary.json"
#: Key of the artifact in the schema metadata of the feature Parquet files it indexed.
PARQUET_KEY: Final = b"aitasks.vocabularies"


def fold(value: str) -> str:
    """The key of ``value`` under :data:`POLICY` (``"Hip-Hop"`` -> ``"hiphop"``); may be empty."""
    # Decompose, fold case, decompose again (case folding can yield composed or compatibility forms).
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", value).casefold())
    return "".join(ch for ch in decomposed if ch.isalnum() and not unicodedata.combining(ch))


def fold_series(values: pl.Series) -> pl.Series:
    """:func:`fold` of every value (nulls stay null); computed once per distinct value."""
    values = values.cast(pl.String)
    distinct = values.drop_nulls().unique()
    table = pl.DataFrame(
        {"_v": distinct, "_k": [fold(v) for v in distinct.to_list()]}, schema=[("_v", pl.String), ("_k", pl.String)]
    )
    joined = pl.DataFrame({"_v": values}).join(table, on="_v", how="left", maintain_order="left")
    return joined["_k"].alias(values.name)


class Term(BaseModel):
    """One vocabulary entry.

    Attributes:
        key: The normalised key (:func:`fold`).
        label: The most common spelling (ties: the smallest text), for people.
        count: Plays (genres) or events (contexts) in the data the vocabulary was built from (for people;
            genres are ranked by tracks).
        tracks: Catalog tracks with this genre (genres only).
        variants: Every spelling seen, with its count (tracks for genres, events for contexts).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(min_length=1)
    label: str
    count: int = Field(ge=0)
    tracks: int | None = Field(default=None, ge=0)
    variants: dict[str, int]


class Vocabulary(BaseModel):
    """A ranked vocabulary: ``terms[i]`` has id ``i``; everything else has id :attr:`other_id`.

    Attributes:
        kind: ``genre`` or ``context``.
        policy: The normalisation policy of the keys.
        ranked_by: How the terms are ordered (for people; the version covers the order itself).
        max_size: The cap the vocabulary was built with.
        terms: The entries, by rank.
        other: What fell past the cap: ``{"keys", "count", "tracks"}``.
        version: sha256 over the policy, the cap and the ranked keys.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["genre", "context"]
    policy: str = POLICY
    ranked_by: str
    max_size: int = Field(ge=1)
    terms: tuple[Term, ...]
    other: dict[str, int]
    version: str

    @staticmethod
    def version_of(kind: str, policy: str, max_size: int, keys: Iterable[str]) -> str:
        """The version of a vocabulary with these ranked ``keys``."""
        return sha256_json({"kind": kind, "policy": policy, "max_size": max_size, "keys": list(keys)})

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys, by id."""
        return tuple(t.key for t in self.terms)

    @property
    def other_id(self) -> int:
        """The id of keys past the cap and of unseen keys (``len(terms)``)."""
        return len(self.terms)

    @property
    def size(self) -> int:
        """Number of ids including ``other``: the embedding table size of a model that uses the ids."""
        return len(self.terms) + 1

    def ids(self, values: pl.Series) -> pl.Series:
        """Id of every raw value (Int64): its key's rank, or :attr:`other_id`; nulls stay null."""
        keys = fold_series(values)
        table = pl.DataFrame(
            {"_k": list(self.keys), "_id": list(range(len(self.terms)))}, schema=[("_k", pl.String), ("_id", pl.Int64)]
        )
        joined = pl.DataFrame({"_k": keys}).join(table, on="_k", how="left", maintain_order="left")
        return joined.select(
            pl.when(pl.col("_k").is_null())
            .then(pl.lit(None, pl.Int64))
            .otherwise(pl.col("_id").fill_null(self.other_id))
            .alias(values.name)
        ).to_series()

    def check(self) -> None:
        """Raise ValueError when the keys are not unique normalised keys or the version does not match."""
        keys = self.keys
        if len(set(keys)) != len(keys):
            raise ValueError(f"{self.kind} vocabulary: duplicate keys")
        bad = [k for k in keys if fold(k) != k]
        if bad:
            raise ValueError(f"{self.kind} vocabulary: key {bad[0]!r} is not normalised under {self.policy}")
        if self.policy != POLICY:
            raise ValueError(f"{self.kind} vocabulary: unknown normalisation policy {self.policy!r}")
        if len(keys) > self.max_size:
            raise ValueError(f"{self.kind} vocabulary: {len(keys)} terms above its cap {self.max_size}")
        expected = self.version_of(self.kind, self.policy, self.max_size, keys)
        if self.version != expected:
            raise ValueError(f"{self.kind} vocabulary: version {self.version} does not match its keys ({expected})")


class Vocabularies(BaseModel):
    """The artifact: the genre and context vocabularies of one run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["aitasks.vocabularies"] = FORMAT
    format_version: Literal[1] = FORMAT_VERSION
    genres: Vocabulary
    contexts: Vocabulary

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace): the same vocabularies give the same bytes."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, *, uri: str = "<vocabulary>") -> Vocabularies:
        """Parse and check :meth:`to_json` output.

        Raises:
            DataFormatError: Not JSON, not this format, or keys/versions that do not hold.
        """
        try:
            vocab = cls.model_validate_json(text)
            if vocab.genres.kind != "genre" or vocab.contexts.kind != "context":
                raise ValueError("genres/contexts hold the wrong kind of vocabulary")
            vocab.genres.check()
            vocab.contexts.check()
        except (ValidationError, ValueError) as exc:
            raise DataFormatError(uri, f"not a valid {FORMAT} artifact: {str(exc).splitlines()[0]}") from None
        return vocab

    @classmethod
    def read(cls, path: Path) -> Vocabularies:
        """Read and check the artifact at ``path``.

        Raises:
            DataFormatError: Missing or invalid.
        """
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise DataFormatError(str(path), f"cannot read the vocabulary: {exc}") from None
        return cls.from_json(text, uri=str(path))

    def parquet_metadata(self) -> dict[bytes, bytes]:
        """Schema metadata that ties a feature file to the vocabulary whose ids it holds."""
        return {PARQUET_KEY: self.to_json().encode()}


def read_parquet_vocabularies(path: Path) -> Vocabularies:
    """The vocabularies a feature Parquet file was computed with (its schema metadata).

    Raises:
        DataFormatError: Unreadable, or the file carries no vocabulary.
    """
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, ValueError) as exc:
        raise DataFormatError(str(path), f"not a readable Parquet file: {exc}") from None
    raw = meta.get(PARQUET_KEY)
    if raw is None:
        raise DataFormatError(
            str(path), f"carries no {FORMAT} metadata: feature files must come from data.features >= 2.0.0"
        )
    return Vocabularies.from_json(raw.decode(), uri=str(path))


def _labelled(counts: pl.DataFrame, weight: str) -> pl.DataFrame:
    """Per key: label (most common spelling by ``weight``, ties by text) and the variants map."""
    return (
        counts.sort(["_k", weight, "_v"], descending=[False, True, False])
        .group_by("_k", maintain_order=True)
        .agg(pl.col("_v").first().alias("label"), pl.col("_v").alias("_vs"), pl.col(weight).alias("_ns"))
    )


def _terms(frame: pl.DataFrame, *, genres: bool) -> list[Term]:
    return [
        Term(
            key=r["_k"],
            label=r["label"],
            count=int(r["count"]),
            tracks=int(r["tracks"]) if genres else None,
            variants={v: int(n) for v, n in zip(r["_vs"], r["_ns"], strict=True)},
        )
        for r in frame.iter_rows(named=True)
    ]


def build_genre_vocabulary(
    tracks: pl.DataFrame, plays: pl.Series | None = None, *, max_size: int = MAX_VOCABULARY
) -> Vocabulary:
    """The genre vocabulary of a catalog, ranked by tracks, then key.

    Args:
        tracks: Catalog with ``track_id`` and ``genre`` (raw spellings).
        plays: ``track_id`` of every play, counted per genre for people (None: counts are 0); never
            part of the ranking.
        max_size: At most this many terms; the rest map to ``other``.

    Returns:
        The vocabulary (checked).

    Raises:
        DataFormatError: A genre has no letter or digit (its key is empty).
    """
    keyed = tracks.select(pl.col("track_id").cast(pl.String), pl.col("genre").cast(pl.String).alias("_v")).with_columns(
        fold_series(tracks["genre"]).alias("_k")
    )
    empty = keyed.filter(pl.col("_k").is_null() | (pl.col("_k") == ""))
    if empty.height:
        raw = empty["_v"][0]
        raise DataFormatError(
            "<catalog>",
            f"genre {raw!r} of track {empty['track_id'][0]!r} has no letter or digit "
            f"(rule: a genre's key under {POLICY} must not be empty); {empty.height} track(s)",
        )
    if plays is None:
        per_track = keyed.with_columns(pl.lit(0, pl.Int64).alias("_p"))
    else:
        counts = pl.DataFrame({"track_id": plays.cast(pl.String)}).group_by("track_id").agg(pl.len().alias("_p"))
        per_track = keyed.join(counts, on="track_id", how="left").with_columns(pl.col("_p").fill_null(0).cast(pl.Int64))
    spellings = per_track.group_by("_k", "_v").agg(pl.len().alias("tracks"), pl.col("_p").sum().alias("plays"))
    totals = spellings.group_by("_k").agg(pl.col("tracks").sum(), pl.col("plays").sum().alias("count"))
    ranked = totals.join(_labelled(spellings, "tracks"), on="_k").sort(["tracks", "_k"], descending=[True, False])
    kept, rest = ranked.head(max_size), ranked.slice(max_size)
    terms = _terms(kept, genres=True)
    keys = [t.key for t in terms]
    vocab = Vocabulary(
        kind="genre",
        ranked_by="tracks, then key",
        max_size=max_size,
        terms=tuple(terms),
        other={"keys": rest.height, "count": int(rest["count"].sum()), "tracks": int(rest["tracks"].sum())},
        version=Vocabulary.version_of("genre", POLICY, max_size, keys),
    )
    vocab.check()
    return vocab


def build_context_vocabulary(contexts: pl.Series, *, max_size: int = MAX_VOCABULARY) -> Vocabulary:
    """The context vocabulary of the events, ranked by events then key (empty keys are left out)."""
    frame = (
        pl.DataFrame({"_v": contexts.cast(pl.String)})
        .drop_nulls()
        .with_columns(fold_series(contexts.drop_nulls()).alias("_k"))
    )
    spellings = frame.filter(pl.col("_k") != "").group_by("_k", "_v").agg(pl.len().alias("count"))
    totals = spellings.group_by("_k").agg(pl.col("count").sum())
    ranked = totals.join(_labelled(spellings, "count"), on="_k").sort(["count", "_k"], descending=[True, False])
    kept, rest = ranked.head(max_size), ranked.slice(max_size)
    terms = _terms(kept, genres=False)
    vocab = Vocabulary(
        kind="context",
        ranked_by="events, then key",
        max_size=max_size,
        terms=tuple(terms),
        other={"keys": rest.height, "count": int(rest["count"].sum())},
        version=Vocabulary.version_of("context", POLICY, max_size, [t.key for t in terms]),
    )
    vocab.check()
    return vocab
