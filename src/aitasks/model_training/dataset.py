"""From feature frames to the arrays the two-tower model trains on and embeds.

A frame (polars or pandas) with an id column and feature columns becomes a :class:`TowerInputs`:
vocabulary indices of the ids, a float32 matrix of dense features (NaN where a value is missing) and
an int64 matrix of categorical codes (-1 where missing). :class:`Interactions` pairs the user and
item side of the training rows (one positive play per row).

Genres come from the run's vocabulary (:mod:`aitasks.data_processing.vocabulary`): the item tower's
genre embedding has one row per vocabulary id plus ``other`` (:func:`feature_spec`), and the user
tower reads the fixed-width affinity slots. The vocabulary travels with the model
(``vocabulary.json`` in its bundle); features computed with another vocabulary are re-expressed in
the model's ids by :func:`align_genres` before they reach a tower.

Missing values are normal here: the training set comes from a point-in-time join, so a play on a
user's first day has no user snapshot yet, and the audio columns stay null until the audio-analysis
family fills them. They are imputed by the model (see :mod:`aitasks.model_training.two_tower`), never
dropped. Values that are wrong rather than missing (infinities, text in a numeric column) are
rejected with an :class:`~aitasks.runtime.errors.InvalidInputError` naming the column.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt
import polars as pl
from pydantic import BaseModel, ConfigDict, model_validator

from aitasks.data_processing.contract import GENRE_AFFINITY_COLUMNS, GENRE_SLOTS, MAX_VOCABULARY
from aitasks.data_processing.features import AUDIO_PLACEHOLDER_COLUMNS, USER_FEATURES_SCHEMA
from aitasks.runtime.errors import FieldIssue, InvalidInputError

if TYPE_CHECKING:
    import pandas as pd

    from aitasks.data_processing.vocabulary import Vocabulary

__all__ = [
    "DEFAULT_SPEC",
    "FeatureSpec",
    "IdVocab",
    "Interactions",
    "TowerInputs",
    "align_genres",
    "feature_spec",
    "interactions_from_frame",
    "tower_inputs",
]

_TASK: Final = "model.inputs"
_VOCAB_FORMAT: Final = "aitasks.id_vocab"
_VOCAB_VERSION: Final = 1
#: Columns that may be absent from a frame (read as all-missing): filled by another feature view later.
_OPTIONAL_COLUMNS: Final = frozenset(AUDIO_PLACEHOLDER_COLUMNS)


class FeatureSpec(BaseModel):
    """Which feature columns feed each tower.

    Attributes:
        user_dense: Numeric user columns (missing values allowed).
        user_categorical: ``(column, cardinality)`` of integer-coded user columns; codes in ``[0, cardinality)``.
        item_dense: Numeric item columns.
        item_categorical: ``(column, cardinality)`` of integer-coded item columns.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    user_dense: tuple[str, ...]
    user_categorical: tuple[tuple[str, int], ...] = ()
    item_dense: tuple[str, ...]
    item_categorical: tuple[tuple[str, int], ...] = ()

    @model_validator(mode="after")
    def _check(self) -> FeatureSpec:
        for side in ("user", "item"):
            dense: tuple[str, ...] = getattr(self, f"{side}_dense")
            cats: tuple[tuple[str, int], ...] = getattr(self, f"{side}_categorical")
            names = [*dense, *(c for c, _ in cats)]
            if any(not n for n in names):
                raise ValueError(f"{side}: empty column name")
            if len(set(names)) != len(names):
                raise ValueError(f"{side}: a column is listed twice")
            bad = [c for c, card in cats if not 1 <= card <= 10_000_000]
            if bad:
                raise ValueError(f"{side}_categorical: cardinality must be in [1, 10^7] for {bad}")
        return self


_USER_META: Final = ("user_id", "event_timestamp", "created_timestamp")
_GENRE_ID: Final = "track_genre_id"


def feature_spec(genre_ids: int) -> FeatureSpec:
    """The features the platform trains on, with a genre embedding of ``genre_ids`` rows.

    Every user feature (the genre affinity slots included), the track statistics and catalog
    attributes, and ``track_genre_id`` as a categorical. ``genre_ids`` is the vocabulary's
    :attr:`~aitasks.data_processing.vocabulary.Vocabulary.size` (its ids plus ``other``).
    """
    return FeatureSpec(
        user_dense=tuple(n for n in USER_FEATURES_SCHEMA.names if n not in _USER_META),
        user_categorical=(),
        item_dense=(
            "track_plays_28d",
            "track_listeners_28d",
            "track_skip_rate_28d",
            "track_popularity",
            "track_duration_ms",
            "track_release_year",
            "track_explicit",
            *AUDIO_PLACEHOLDER_COLUMNS,
        ),
        item_categorical=((_GENRE_ID, genre_ids),),
    )


#: :func:`feature_spec` for the largest vocabulary (every genre id fits); a model trained on a training
#: set sizes its genre embedding from the set's own vocabulary instead.
DEFAULT_SPEC: Final = feature_spec(MAX_VOCABULARY + 1)


def align_genres(frame: pl.DataFrame, *, source: Vocabulary, target: Vocabulary) -> pl.DataFrame:
    """Re-express the genre columns of ``frame``, computed with ``source``, in ``target``'s ids.

    ``track_genre_id``: the id of the same genre key in ``target``, or ``target``'s ``other`` (a genre
    it does not know or keeps past its cap). Affinity slots: each ``source`` slot's share moves to the
    ``target`` slot of the same genre, or to ``other``; ``source``'s ``other`` share stays ``other``
    (which genres it held is not in the features). Columns absent from ``frame`` are left alone; the
    same vocabulary (same version) returns ``frame`` unchanged.
    """
    if source.version == target.version:
        return frame
    where = {k: i for i, k in enumerate(target.keys)}
    to_target = [where.get(k, target.other_id) for k in source.keys]
    out = frame
    if _GENRE_ID in frame.columns:
        mapping = pl.DataFrame(
            {"_src": list(range(source.size)), "_dst": [*to_target, target.other_id]},
            schema=[("_src", pl.Int64), ("_dst", pl.Int64)],
        )
        ids = pl.DataFrame({"_src": frame[_GENRE_ID].cast(pl.Int64)}).join(
            mapping, on="_src", how="left", maintain_order="left"
        )
        # An id outside the source vocabulary is not a genre of it: `other` in the target too.
        dst = ids.select(
            pl.when(pl.col("_src").is_null()).then(None).otherwise(pl.col("_dst").fill_null(target.other_id))
        ).to_series()
        out = out.with_columns(dst.cast(frame.schema[_GENRE_ID]).alias(_GENRE_ID))
    if all(c in frame.columns for c in GENRE_AFFINITY_COLUMNS):
        # The target slot of each source slot: the same genre's rank when it has a slot, else `other`.
        slot_of = [GENRE_SLOTS] * GENRE_SLOTS
        for i, t in enumerate(to_target[:GENRE_SLOTS]):
            if t < GENRE_SLOTS and t != target.other_id:
                slot_of[i] = t
        src = [pl.col(c).cast(pl.Float64) for c in GENRE_AFFINITY_COLUMNS]
        dst_exprs = []
        for j, name in enumerate(GENRE_AFFINITY_COLUMNS):
            parts = [src[i] for i in range(GENRE_SLOTS) if slot_of[i] == j]
            if j == GENRE_SLOTS:
                parts.append(src[GENRE_SLOTS])
            total = pl.sum_horizontal(parts) if parts else pl.lit(0.0)
            # A row without a user snapshot has every slot missing: it stays missing (the model imputes).
            total = pl.when(src[GENRE_SLOTS].is_null()).then(None).otherwise(total)
            dst_exprs.append(total.cast(frame.schema[name]).alias(name))
        out = out.with_columns(dst_exprs)
    return out


class IdVocab:
    """An ordered id vocabulary; index 0 is reserved for unknown (out-of-vocabulary) ids.

    ``ids[i]`` has index ``i + 1``; ``len(vocab) == len(vocab.ids) + 1`` is the embedding table size.
    Lookups are vectorised (a polars hash join), never a Python loop over rows.
    """

    __slots__ = ("_ids", "_table")

    def __init__(self, ids: Sequence[str]) -> None:
        """Wrap ``ids`` in this order (use :meth:`build` for the canonical sorted vocabulary).

        Raises:
            ValueError: An id is not a string or appears twice.
        """
        ids = tuple(ids)
        if not all(isinstance(i, str) for i in ids):
            raise ValueError("vocabulary ids must be strings")
        if len(set(ids)) != len(ids):
            raise ValueError("vocabulary ids must be unique")
        self._ids = ids
        self._table = pl.DataFrame(
            {"id": pl.Series(ids, dtype=pl.String), "idx": np.arange(1, len(ids) + 1, dtype=np.int64)}
        )

    @classmethod
    def build(cls, ids: Iterable[str]) -> IdVocab:
        """The sorted unique ``ids``: the same set of ids always gives the same indices."""
        return cls(sorted(set(ids)))

    @property
    def ids(self) -> tuple[str, ...]:
        """The ids; ``ids[i]`` has index ``i + 1``."""
        return self._ids

    def __len__(self) -> int:
        return len(self._ids) + 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdVocab) and self._ids == other._ids

    def __hash__(self) -> int:
        return hash(self._ids)

    def __repr__(self) -> str:
        return f"IdVocab({len(self._ids)} ids)"

    def id_at(self, idx: int) -> str | None:
        """The id at index ``idx``; None for 0 (unknown).

        Raises:
            IndexError: ``idx`` is outside ``[0, len(self))``.
        """
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} outside [0, {len(self)})")
        return None if idx == 0 else self._ids[idx - 1]

    def index(self, ids: Sequence[str] | np.ndarray | pl.Series) -> npt.NDArray[np.int64]:
        """Indices of ``ids`` (int64); unknown and null ids map to 0."""
        series = ids if isinstance(ids, pl.Series) else pl.Series(np.asarray(ids, dtype=object), dtype=pl.String)
        query = pl.DataFrame({"id": series.cast(pl.String)})
        joined = query.join(self._table, on="id", how="left", maintain_order="left")
        return np.array(joined["idx"].fill_null(0).to_numpy(), dtype=np.int64)  # a writable copy

    def to_json(self) -> str:
        """Plain JSON: ``{"format", "version", "ids"}`` (position in ``ids`` + 1 = index)."""
        return json.dumps({"format": _VOCAB_FORMAT, "version": _VOCAB_VERSION, "ids": list(self._ids)})

    @classmethod
    def from_json(cls, text: str) -> IdVocab:
        """Parse :meth:`to_json` output, strictly.

        Raises:
            ValueError: Not JSON, wrong format or version, unknown keys, or ids that are not unique strings.
        """
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(data, dict) or set(data) != {"format", "version", "ids"}:
            raise ValueError('expected an object with exactly the keys "format", "version", "ids"')
        if data["format"] != _VOCAB_FORMAT or data["version"] != _VOCAB_VERSION:
            raise ValueError(f"unsupported vocabulary format {data['format']!r} version {data['version']!r}")
        if not isinstance(data["ids"], list):
            raise ValueError('"ids" must be a list')
        return cls(data["ids"])


@dataclass(frozen=True)
class TowerInputs:
    """One tower's inputs for ``n`` rows.

    Attributes:
        idx: Vocabulary indices, int64 ``[n]`` (0 = unknown id).
        dense: Raw dense features, float32 ``[n, D]`` in spec order; NaN = missing.
        cat: Categorical codes, int64 ``[n, C]`` in spec order; -1 = missing or out of range.
    """

    idx: npt.NDArray[np.int64]
    dense: npt.NDArray[np.float32]
    cat: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.idx.shape[0])

    def take(self, rows: npt.NDArray[np.int64]) -> TowerInputs:
        """The rows ``rows`` (a copy)."""
        return TowerInputs(self.idx[rows], self.dense[rows], self.cat[rows])


@dataclass(frozen=True)
class Interactions:
    """Training rows: row ``i`` of ``users`` played row ``i`` of ``items`` (a positive example)."""

    users: TowerInputs
    items: TowerInputs

    def __len__(self) -> int:
        return len(self.users)


def _as_polars(frame: pl.DataFrame | pd.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    """The present ``columns`` of ``frame`` as polars (pandas is converted column subset only)."""
    if isinstance(frame, pl.DataFrame):
        return frame.select([c for c in columns if c in frame.columns])
    present = [c for c in columns if c in frame.columns]
    return pl.from_pandas(frame[present])


def _dense_column(frame: pl.DataFrame, name: str, issues: list[FieldIssue]) -> npt.NDArray[np.float32]:
    n = frame.height
    if name not in frame.columns:
        return np.full(n, np.nan, dtype=np.float32)
    s = frame[name]
    if s.dtype == pl.Null:
        return np.full(n, np.nan, dtype=np.float32)
    if not (s.dtype.is_numeric() or s.dtype == pl.Boolean):
        issues.append(FieldIssue(name, f"expected a numeric column, got {s.dtype}"))
        return np.zeros(n, dtype=np.float32)
    values = s.cast(pl.Float64).fill_null(float("nan")).to_numpy()
    with np.errstate(over="ignore"):
        out = values.astype(np.float32)
    bad = int(np.isinf(out).sum())
    if bad:
        issues.append(FieldIssue(name, f"{bad} infinite value(s) (or beyond the float32 range)"))
    return out


def _cat_column(frame: pl.DataFrame, name: str, card: int, issues: list[FieldIssue]) -> npt.NDArray[np.int64]:
    n = frame.height
    if name not in frame.columns:
        return np.full(n, -1, dtype=np.int64)
    s = frame[name]
    if s.dtype == pl.Null:
        return np.full(n, -1, dtype=np.int64)
    if s.dtype.is_float():
        # pandas turns nullable integers into floats with NaN (Feast does): accept integral values.
        values = s.fill_null(float("nan")).to_numpy().astype(np.float64)
        missing = np.isnan(values)
        if np.isinf(values).any() or (values[~missing] != np.floor(values[~missing])).any():
            issues.append(FieldIssue(name, "categorical codes must be integers (got infinite or fractional values)"))
            return np.full(n, -1, dtype=np.int64)
        codes = np.where(missing, -1.0, np.clip(values, -1.0, float(card))).astype(np.int64)
    elif s.dtype.is_integer():
        codes = np.array(s.cast(pl.Int64).fill_null(-1).to_numpy(), dtype=np.int64)
    else:
        issues.append(FieldIssue(name, f"expected integer codes, got {s.dtype}"))
        return np.full(n, -1, dtype=np.int64)
    out: npt.NDArray[np.int64] = np.where((codes >= 0) & (codes < card), codes, -1).astype(np.int64)
    return out


def tower_inputs(
    frame: pl.DataFrame | pd.DataFrame,
    *,
    id_column: str,
    vocab: IdVocab,
    dense: Sequence[str],
    categorical: Sequence[tuple[str, int]],
) -> TowerInputs:
    """Convert the rows of ``frame`` into one tower's inputs.

    Args:
        frame: Polars or pandas frame with ``id_column`` and the feature columns.
        id_column: Column of string ids, looked up in ``vocab`` (unknown or null ids become 0).
        vocab: The tower's id vocabulary.
        dense: Numeric columns, in order. Nulls and NaN become NaN (missing). The audio placeholder
            columns may be absent (all missing).
        categorical: ``(column, cardinality)`` of integer-coded columns. Null and codes outside
            ``[0, cardinality)`` become -1 (missing).

    Returns:
        The arrays, one row per frame row, in frame order.

    Raises:
        InvalidInputError: A required column is missing, not numeric (or not integer for a
            categorical), or holds an infinite value; every offending column is named.
    """
    cat_names = [c for c, _ in categorical]
    needed = [id_column, *dense, *cat_names]
    present = set(frame.columns)
    issues = [
        FieldIssue(c, "missing column")
        for c in dict.fromkeys(needed)
        if c not in present and c not in _OPTIONAL_COLUMNS
    ]
    if issues:
        raise InvalidInputError(_TASK, issues)
    pf = _as_polars(frame, list(dict.fromkeys(needed)))
    ids = pf[id_column]
    if isinstance(ids.dtype, pl.Categorical | pl.Enum):
        ids = ids.cast(pl.String)
    if ids.dtype not in (pl.String, pl.Null):
        issues.append(FieldIssue(id_column, f"expected string ids, got {ids.dtype}"))
    dense_cols = [_dense_column(pf, c, issues) for c in dense]
    cat_cols = [_cat_column(pf, c, card, issues) for c, card in categorical]
    if issues:
        raise InvalidInputError(_TASK, issues)
    n = pf.height
    return TowerInputs(
        idx=vocab.index(ids.cast(pl.String)),
        dense=np.stack(dense_cols, axis=1) if dense_cols else np.zeros((n, 0), dtype=np.float32),
        cat=np.stack(cat_cols, axis=1) if cat_cols else np.zeros((n, 0), dtype=np.int64),
    )


def interactions_from_frame(
    frame: pl.DataFrame | pd.DataFrame, spec: FeatureSpec, user_vocab: IdVocab, item_vocab: IdVocab
) -> Interactions:
    """Training rows from the training-set frame (one positive play per row, features joined).

    Args:
        frame: ``user_id``, ``track_id`` and every feature column of ``spec``.
        spec: Which columns feed which tower.
        user_vocab: Vocabulary of ``user_id``.
        item_vocab: Vocabulary of ``track_id``.

    Returns:
        The user and item inputs, row-aligned with ``frame``.

    Raises:
        InvalidInputError: A column is missing or holds invalid values (see :func:`tower_inputs`).
    """
    sides: list[TowerInputs] = []
    issues: list[FieldIssue] = []
    for id_column, vocab, dense, cats in (
        ("user_id", user_vocab, spec.user_dense, spec.user_categorical),
        ("track_id", item_vocab, spec.item_dense, spec.item_categorical),
    ):
        try:
            sides.append(tower_inputs(frame, id_column=id_column, vocab=vocab, dense=dense, categorical=cats))
        except InvalidInputError as exc:  # report both towers' problems at once
            issues.extend(exc.issues)
    if issues:
        raise InvalidInputError(_TASK, issues)
    return Interactions(users=sides[0], items=sides[1])
