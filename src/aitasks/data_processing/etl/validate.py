"""Validation of a chunk of events: vectorised polars parsing and the contract's rules, in precedence order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from aitasks.data_processing.contract import (
    EVENT_COLUMNS,
    EVENT_ID_COLUMNS,
    EVENTS_SCHEMA,
    FALSE_TEXTS,
    ID_PATTERN,
    MAX_CONTEXT_CHARS,
    MAX_MS_PLAYED,
    QUARANTINE_EXTRA_COLUMNS,
    TRUE_TEXTS,
)
from aitasks.data_processing.etl.read import _Chunk
from aitasks.data_processing.vocabulary import fold_series

#: Quarantine file schema: every contract column as text, then the extra columns.
QUARANTINE_SCHEMA: Final = pa.schema(
    [
        *(pa.field(c, pa.string()) for c in EVENT_COLUMNS),
        pa.field(QUARANTINE_EXTRA_COLUMNS[0], pa.int64(), nullable=False),
        pa.field(QUARANTINE_EXTRA_COLUMNS[1], pa.string(), nullable=False),
        pa.field(QUARANTINE_EXTRA_COLUMNS[2], pa.string()),
    ]
)

_PARSED: Final = ("ts", "ms_played", "skipped")
_RAW_PREFIX: Final = "_raw_"
_SPILL_SCHEMA: Final = pa.schema(
    [
        *(pa.field(f.name, f.type) for f in EVENTS_SCHEMA),
        pa.field("_source_row", pa.int64()),
        *(pa.field(_RAW_PREFIX + c, pa.string()) for c in _PARSED),
    ]
)
_ZONED_TS: Final = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:?\d{2})$"
_NAIVE_TS: Final = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?$"
_INT_TEXT: Final = r"^[+-]?\d+$"
_CONTEXT_KEY: Final = "_context_key"


# ------------------------------------------------------------------------------------- validation

ColumnKind = Literal["text", "int", "bool", "ts"]
_EVENT_KINDS: Final[dict[str, ColumnKind]] = {
    "event_id": "text",
    "user_id": "text",
    "track_id": "text",
    "ts": "ts",
    "ms_played": "int",
    "context": "text",
    "skipped": "bool",
}
_TRACK_KINDS: Final[dict[str, ColumnKind]] = {
    "track_id": "text",
    "artist_id": "text",
    "genre": "text",
    "duration_ms": "int",
    "release_year": "int",
    "explicit": "bool",
}
_FLAGS: Final = ("missing", "bad_type", "overflow", "naive")
_UTC: Final = pl.Datetime("us", "UTC")


def _flag(col: str, flag: str) -> str:
    return f"{col}__{flag}"


@dataclass(frozen=True)
class _Parsed:
    """How to parse one column: typed value and rule flags (polars expressions or ready series)."""

    value: pl.Expr | pl.Series
    missing: pl.Expr | pl.Series
    bad_type: pl.Expr | pl.Series = field(default_factory=lambda: pl.lit(False))
    overflow: pl.Expr | pl.Series = field(default_factory=lambda: pl.lit(False))
    naive: pl.Expr | pl.Series = field(default_factory=lambda: pl.lit(False))


def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _text_missing(c: pl.Expr) -> pl.Expr:
    return c.is_null() | (c == "")


def _parse_text(name: str, t: pa.DataType) -> _Parsed:
    c = pl.col(name) if _is_text(t) else pl.col(name).cast(pl.String)
    return _Parsed(value=c, missing=_text_missing(c))


def _parse_int(name: str, t: pa.DataType) -> _Parsed:
    c = pl.col(name)
    if pa.types.is_null(t):
        return _Parsed(value=pl.lit(None, pl.Int64), missing=pl.lit(True))
    if pa.types.is_integer(t):
        v = c.cast(pl.Int64, strict=False)
        return _Parsed(value=v, missing=c.is_null(), overflow=c.is_not_null() & v.is_null())
    if pa.types.is_floating(t):
        missing = c.is_null() | c.is_nan()
        bad = ~missing & (c.is_infinite() | (c != c.floor()))
        v = pl.when(bad).then(None).otherwise(c).cast(pl.Int64, strict=False)
        return _Parsed(value=v, missing=missing, bad_type=bad, overflow=~missing & ~bad & v.is_null())
    if not _is_text(t):  # booleans, timestamps, dates: not an integer
        return _Parsed(value=pl.lit(None, pl.Int64), missing=c.is_null(), bad_type=c.is_not_null())
    missing = _text_missing(c)
    numeric = c.str.contains(_INT_TEXT)
    v = pl.when(numeric).then(c).otherwise(None).cast(pl.Int64, strict=False)
    return _Parsed(value=v, missing=missing, bad_type=~missing & ~numeric, overflow=numeric & v.is_null())


def _parse_bool(name: str, t: pa.DataType) -> _Parsed:
    c = pl.col(name)
    if pa.types.is_null(t):
        return _Parsed(value=pl.lit(None, pl.Boolean), missing=pl.lit(True))
    if pa.types.is_boolean(t):
        return _Parsed(value=c, missing=c.is_null())
    if pa.types.is_integer(t):
        return _Parsed(value=c == 1, missing=c.is_null(), bad_type=c.is_not_null() & ~c.is_in([0, 1]))
    if not _is_text(t):
        return _Parsed(value=pl.lit(None, pl.Boolean), missing=c.is_null(), bad_type=c.is_not_null())
    missing = _text_missing(c)
    low = c.str.to_lowercase()
    ok = low.is_in([*TRUE_TEXTS, *FALSE_TEXTS])
    return _Parsed(value=low.is_in(list(TRUE_TEXTS)), missing=missing, bad_type=~missing & ~ok)


def _parse_ts(name: str, col: pa.ChunkedArray) -> _Parsed:
    c = pl.col(name)
    t = col.type
    if pa.types.is_null(t):
        return _Parsed(value=pl.lit(None, _UTC), missing=pl.lit(True))
    if pa.types.is_timestamp(t):
        if t.tz is None:
            return _Parsed(value=pl.lit(None, _UTC), missing=c.is_null(), naive=c.is_not_null())
        return _Parsed(value=c.dt.convert_time_zone("UTC").dt.cast_time_unit("us"), missing=c.is_null())
    if not _is_text(t):  # numbers, booleans, dates: not a timestamp
        return _Parsed(value=pl.lit(None, _UTC), missing=c.is_null(), bad_type=c.is_not_null())
    return _parse_ts_text(col)


def _parse_ts_text(col: pa.ChunkedArray) -> _Parsed:
    """ISO-8601 text: Arrow's fast parser on the rows shaped like a zoned timestamp; polars (the exact,
    per-row reference) when Arrow rejects any of them (Feb 30, > 6 fraction digits, lowercase z...)."""
    s = pl.Series(col)
    missing = s.is_null() | (s == "")
    zoned = s.str.contains(_ZONED_TS).fill_null(False)
    shaped = pc.if_else(pa.array(zoned.to_numpy(), pa.bool_()), col, pa.scalar(None, pa.string()))
    try:
        value = pl.Series(pc.cast(shaped, pa.timestamp("us", tz="UTC")))
    except pa.ArrowInvalid:
        norm = pl.Series(shaped).str.replace(" ", "T", literal=True).str.replace(r"[Zz]$", "+00:00")
        value = norm.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%z", time_zone="UTC", time_unit="us", strict=False)
    naive = s.str.contains(_NAIVE_TS).fill_null(False)
    if naive.any():
        parsed = s.str.replace(" ", "T", literal=True).str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False)
        naive = naive & parsed.is_not_null()
    return _Parsed(value=value, missing=missing, bad_type=~missing & value.is_null() & ~naive, naive=naive)


def _parse_frame(table: pa.Table, kinds: Mapping[str, ColumnKind]) -> pl.DataFrame:
    """Stage 1: typed values (named like the columns) and flags (``<col>__<flag>``) of every column."""
    frame = pl.from_arrow(table, rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    exprs: list[pl.Expr | pl.Series] = []
    for name, kind in kinds.items():
        t = table.schema.field(name).type
        if kind == "ts":
            p = _parse_ts(name, table.column(name))
        elif kind == "int":
            p = _parse_int(name, t)
        elif kind == "bool":
            p = _parse_bool(name, t)
        else:
            p = _parse_text(name, t)
        exprs.append(p.value.alias(name))
        exprs += [getattr(p, f).alias(_flag(name, f)) for f in _FLAGS]
    return frame.select(exprs)


def _breaks(col: str, flag: str) -> pl.Expr:
    return pl.col(_flag(col, flag))


def _event_rules(track_ids: pl.Series, limit: datetime) -> list[tuple[str, pl.Expr]]:
    """``(reason, breaks)`` in precedence order, for the row rules (not the structural ones)."""
    rules: list[tuple[str, pl.Expr]] = [(f"missing_column_value:{c}", _breaks(c, "missing")) for c in EVENT_COLUMNS]
    rules += [(f"bad_type:{c}", _breaks(c, "bad_type")) for c in _PARSED]
    rules.append(("naive_timestamp", _breaks("ts", "naive")))
    rules += [(f"bad_id:{c}", ~pl.col(c).str.contains(ID_PATTERN)) for c in EVENT_ID_COLUMNS]
    ms = pl.col("ms_played")
    rules.append(("out_of_range:ms_played", _breaks("ms_played", "overflow") | (ms < 0) | (ms > MAX_MS_PLAYED)))
    # Contexts are an open vocabulary: any value with a letter or digit (its fold-v1 key is not empty),
    # at most MAX_CONTEXT_CHARS long.
    rules.append(
        ("bad_context", (pl.col(_CONTEXT_KEY) == "") | (pl.col("context").str.len_chars() > MAX_CONTEXT_CHARS))
    )
    rules.append(("unknown_track_id", ~pl.col("track_id").is_in(track_ids.implode())))
    rules.append(("future_timestamp", pl.col("ts") > pl.lit(limit, _UTC)))
    return rules


def _reason_expr(rules: Sequence[tuple[str, pl.Expr]]) -> pl.Expr:
    return pl.coalesce([pl.when(breaks.fill_null(False)).then(pl.lit(code)) for code, breaks in rules])


def _as_text(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    if col.type == pa.string():
        return col
    return pc.cast(col, pa.string())


@dataclass(frozen=True)
class _Validated:
    good: pa.Table  # _SPILL_SCHEMA
    bad: pa.Table  # QUARANTINE_SCHEMA


def _validate_chunk(chunk: _Chunk, track_ids: pl.Series, limit: datetime) -> _Validated:
    table = chunk.table
    parsed = _parse_frame(table, _EVENT_KINDS)
    parsed = parsed.with_columns(fold_series(parsed["context"]).alias(_CONTEXT_KEY))
    reason = parsed.select(_reason_expr(_event_rules(track_ids, limit)).alias("_reason"))["_reason"]
    is_bad = reason.is_not_null()
    is_good = ~is_bad
    bad_mask = pa.array(is_bad.to_numpy(), pa.bool_())
    good_mask = pc.invert(bad_mask)
    n_good = int(is_good.sum())
    rows = pa.array(chunk.rows, pa.int64())

    good_cols: list[pa.Array | pa.ChunkedArray] = []
    for f in _SPILL_SCHEMA:
        if f.name == "_source_row":
            good_cols.append(rows.filter(good_mask))
        elif f.name.startswith(_RAW_PREFIX):
            name = f.name.removeprefix(_RAW_PREFIX)
            src = table.column(name)
            # Keep the text as read when the value was converted, to quarantine it unchanged later.
            same = src.type == EVENTS_SCHEMA.field(name).type
            good_cols.append(pa.nulls(n_good, pa.string()) if same else _as_text(src.filter(good_mask)))
        elif f.name in _PARSED:
            good_cols.append(parsed[f.name].filter(is_good).to_arrow().cast(f.type))
        else:
            good_cols.append(_as_text(table.column(f.name).filter(good_mask)))
    good = pa.Table.from_arrays(good_cols, schema=_SPILL_SCHEMA)

    bad_reasons = reason.filter(is_bad).to_arrow().cast(pa.string())
    bad = pa.Table.from_arrays(
        [
            *(_as_text(table.column(c).filter(bad_mask)) for c in EVENT_COLUMNS),
            rows.filter(bad_mask),
            bad_reasons,
            pa.nulls(len(bad_reasons), pa.string()),
        ],
        schema=QUARANTINE_SCHEMA,
    )
    if chunk.rejects:
        bad = pa.concat_tables([_rejects_table(chunk.rejects), bad]).sort_by("_source_row")
    return _Validated(good, bad)


def _rejects_table(rejects: Sequence[tuple[int, str, str, Mapping[str, str | None]]]) -> pa.Table:
    return pa.Table.from_arrays(
        [
            *(pa.array([r[3].get(c) for r in rejects], pa.string()) for c in EVENT_COLUMNS),
            pa.array([r[0] for r in rejects], pa.int64()),
            pa.array([r[1] for r in rejects], pa.string()),
            pa.array([r[2] for r in rejects], pa.string()),
        ],
        schema=QUARANTINE_SCHEMA,
    )


def validate_event_table(
    table: pa.Table, track_ids: pl.Series, limit: datetime, rows: Sequence[int] | None = None
) -> tuple[pa.Table, pa.Table]:
    """The contract's event rules applied to ``table`` (any column types, e.g. text from a stream).

    The same rules, in the same precedence, as the batch ingest: for a streaming consumer that must
    judge events exactly as the ETL does (``aitasks.serving.updater``).

    Args:
        table: Every column of :data:`EVENT_COLUMNS` (nulls for missing values).
        track_ids: The known track ids (``unknown_track_id`` otherwise).
        limit: Events stamped later than this are ``future_timestamp``.
        rows: Position of each row, reported as ``_source_row`` (default 0..n-1).

    Returns:
        ``(good, bad)``: good rows typed like :data:`EVENTS_SCHEMA` (plus ``_source_row``), bad rows
        as text with ``_source_row`` and ``_reason`` (:data:`QUARANTINE_SCHEMA`).
    """
    import numpy as np

    positions = np.arange(table.num_rows, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    checked = _validate_chunk(_Chunk(table, positions), track_ids, limit)
    good = checked.good.select([*EVENT_COLUMNS, "_source_row"])
    return good, checked.bad
