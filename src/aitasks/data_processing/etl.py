"""Chunked ingest of listening events: read, validate, quarantine, deduplicate, publish atomically.

:func:`ingest_events` reads an events file (Parquet, CSV or JSON Lines) in chunks of ``chunk_rows``
rows, checks every row against the data contract with vectorised polars expressions and splits the
input into *good* rows (written with exactly ``EVENTS_SCHEMA``) and *quarantined* rows (every input
column as text, plus ``_source_row``, ``_reason`` and ``_raw``). Counts always reconcile:
``input_rows == good_rows + quarantined_rows``.

Rules, in precedence order (a bad row gets the reason of the first rule it breaks; the codes are
:data:`~aitasks.data_processing.contract.QUARANTINE_REASONS`):

1. ``malformed_json`` (JSONL: a line that is not valid JSON or not an object) and ``malformed_row``
   (CSV: wrong number of fields, e.g. a truncated last line; JSONL: an object with keys outside the
   contract). ``_raw`` keeps the line's text (up to 64 KiB).
2. ``missing_column_value:<col>``: null, absent or empty text, in column order.
3. ``bad_type:<col>``: ``ts`` is not an ISO-8601 timestamp, ``ms_played`` not an integer,
   ``skipped`` not a boolean (``true``/``false``/``1``/``0``, any case).
4. ``naive_timestamp``: a timestamp without a time zone (text without ``Z``/``±HH:MM``, or a
   Parquet timestamp type without a zone). Zoned timestamps are converted to UTC.
5. ``bad_id:<col>``: ``event_id``, ``user_id`` or ``track_id`` breaks ``ID_PATTERN``.
6. ``out_of_range:ms_played``: outside ``[0, MAX_MS_PLAYED]``.
7. ``unknown_context``: not one of ``CONTEXTS``.
8. ``unknown_track_id``: not in the catalog.
9. ``future_timestamp``: later than ``now + FUTURE_TOLERANCE_S``.
10. ``duplicate_event_id``: a row that passes every rule above but whose ``event_id`` already
    appeared in an earlier such row anywhere in the input; the first occurrence (smallest source
    row) stays good.

Row numbers (``_source_row``, 0-based): Parquet row; CSV data line (the header is not counted: one
record per line, see :func:`_iter_csv`); JSONL line (blank lines are skipped, not counted as rows,
but keep their number).

How duplicates are found with flat memory (two passes plus a copy): pass 1 writes every row that
passes rules 1-9 to an in-order Arrow IPC spill file, and its ``(event_id, _source_row)`` pair to one
of ``B`` hash buckets (IPC files), with ``B`` chosen from the input size so that a bucket holds about
``max(4 * chunk_rows, 65_536)`` rows. Pass 2 loads one bucket at a time and marks every occurrence
after the first of an id; only the source rows of duplicates (8 bytes each) stay in memory. Pass 3
streams the spill in order, writes the good rows and sends the duplicates to the quarantine. Memory
is therefore bounded by the chunk size, the bucket size and the number of duplicates, never by the
number of distinct ids (``B`` is capped at 256 open files, so past ~67 M rows at the default chunk
size the buckets grow beyond their target). The spill (uncompressed, about the size of the good data)
lives in a temporary directory next to ``good_out`` and is always removed. Good rows keep the input
order; the quarantine holds the rows rejected in pass 1 in input order, then the duplicates.

Both outputs are written to temporary files beside their targets, fsynced, and renamed into place
only after the whole input was processed: a failure leaves neither a torn nor a partial output.

A file that is not what it claims raises :class:`~aitasks.runtime.errors.DataFormatError` with a
one-line problem: empty (0 bytes), missing or unknown columns, not UTF-8 (with the byte offset),
truncated Parquet (no footer), Parquet under a text format, gzip, JSON array, unsupported column
types. The format is detected from the content (``PAR1`` magic, a leading ``{``), not only from the
extension. A header-only CSV is a valid input with zero rows.

The catalog is small: :func:`read_catalog` reads it fully and validates it strictly (any bad row,
duplicate ``track_id`` or empty catalog raises :class:`DataFormatError`), since a bad catalog
invalidates every event.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from pyarrow import ipc
from pydantic import BaseModel, ConfigDict, Field

from aitasks.data_processing.contract import (
    CONTEXTS,
    CONTRACT_VERSION,
    EVENT_COLUMNS,
    EVENT_ID_COLUMNS,
    EVENTS_SCHEMA,
    FALSE_TEXTS,
    FUTURE_TOLERANCE_S,
    GENRES,
    ID_PATTERN,
    MAX_DURATION_MS,
    MAX_MS_PLAYED,
    MIN_RELEASE_YEAR,
    QUARANTINE_EXTRA_COLUMNS,
    QUARANTINE_REASONS,
    TRACK_COLUMNS,
    TRACKS_SCHEMA,
    TRUE_TEXTS,
)
from aitasks.runtime.errors import DataFormatError, FieldIssue, InvalidInputError

__all__ = [
    "QUARANTINE_REASONS",
    "QUARANTINE_SCHEMA",
    "IngestReport",
    "detect_format",
    "ingest_events",
    "read_catalog",
]

_TASK: Final = "data.ingest"
FileFormat = Literal["parquet", "csv", "jsonl"]

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
_BUCKET_SCHEMA: Final = pa.schema([pa.field("event_id", pa.string()), pa.field("_source_row", pa.int64())])
_MAX_RAW: Final = 65_536
_MAX_BUCKETS: Final = 256
_MIN_BYTES_PER_ROW: Final = 32  # a conservative text row size, to size the buckets from the file size
_ZONED_TS: Final = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:?\d{2})$"
_NAIVE_TS: Final = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?$"
_INT_TEXT: Final = r"^[+-]?\d+$"
_UTF8_BOM: Final = b"\xef\xbb\xbf"
_JSON_SUFFIXES: Final = (".jsonl", ".ndjson", ".json")

_I64 = npt.NDArray[np.int64]


class IngestReport(BaseModel):
    """Counts of one ingest; ``input_rows == good_rows + quarantined_rows`` always holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source_format: FileFormat = Field(description="Detected (or given) format of the events file.")
    input_rows: int = Field(ge=0, description="Rows read (CSV data lines, JSONL non-blank lines).")
    good_rows: int = Field(ge=0, description="Rows written to the good output.")
    quarantined_rows: int = Field(ge=0, description="Rows written to the quarantine.")
    reasons: dict[str, int] = Field(description="Quarantined rows per reason code, in precedence order.")
    duplicate_event_ids: int = Field(ge=0, description="Distinct event ids that occurred more than once.")
    chunks: int = Field(ge=0, description="Chunks read.")
    catalog_tracks: int = Field(ge=0, description="Tracks in the validated catalog.")
    contract_version: str = Field(description="Version of the data contract the rows were checked against.")


# -------------------------------------------------------------------------------- format detection


def detect_format(
    path: Path, fmt: Literal["auto", "parquet", "csv", "jsonl"] = "auto", uri: str | None = None
) -> FileFormat:
    """Check that ``path`` is plausibly of format ``fmt`` (or find it, for ``auto``) from its content.

    ``auto``: ``PAR1`` magic means Parquet, whatever the extension; else a first non-blank ``{`` or a
    ``.jsonl``/``.ndjson``/``.json`` extension means JSON Lines; else CSV.

    Args:
        path: The file.
        fmt: Claimed format, or ``auto``.
        uri: Name of the file in error messages (default: the path).

    Returns:
        The format to read the file with.

    Raises:
        DataFormatError: The file is missing, empty, compressed, UTF-16, a truncated Parquet file, or
            clearly not of the claimed format.
    """
    name = uri or str(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(4096)
            fh.seek(max(0, size - 4))
            tail = fh.read(4)
    except FileNotFoundError:
        raise DataFormatError(name, "file not found") from None
    except IsADirectoryError:
        raise DataFormatError(name, "is a directory, not a file") from None
    if size == 0:
        raise DataFormatError(name, "empty file (0 bytes)")
    if head.startswith(b"\x1f\x8b"):
        raise DataFormatError(name, "gzip-compressed file: decompress it first")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataFormatError(name, "not UTF-8 text: UTF-16 byte-order mark at byte offset 0")
    is_parquet = head.startswith(b"PAR1")
    stripped = head.removeprefix(_UTF8_BOM).lstrip()
    first = stripped[:1]
    if is_parquet:
        if fmt not in ("auto", "parquet"):
            raise DataFormatError(name, f"is a Parquet file (PAR1 magic), not {fmt.upper()}")
        if size < 12 or tail != b"PAR1":
            raise DataFormatError(name, "truncated Parquet file: footer missing (no PAR1 magic at the end)")
        return "parquet"
    if fmt == "parquet":
        raise DataFormatError(name, "not a Parquet file (no PAR1 magic at the start)")
    if fmt == "csv" and first == b"{":
        raise DataFormatError(name, "looks like JSON Lines (starts with '{'), not CSV")
    is_json = fmt == "jsonl" or (fmt == "auto" and (first == b"{" or path.suffix.lower() in _JSON_SUFFIXES))
    if is_json:
        if first == b"[":
            raise DataFormatError(name, "a JSON array document, not JSON Lines (one object per line)")
        return "jsonl"
    return "csv"


# ----------------------------------------------------------------------------------------- readers


@dataclass
class _Chunk:
    """Rows of one chunk as read (any column types) and their source rows, plus rows that could not
    even be split into columns (already in quarantine form)."""

    table: pa.Table
    rows: _I64
    rejects: list[tuple[int, str, str, dict[str, str | None]]] = field(default_factory=list)


def _check_columns(found: Sequence[str], expected: Sequence[str], uri: str) -> None:
    dupes = sorted({c for c in found if list(found).count(c) > 1})
    missing = [c for c in expected if c not in found]
    unknown = [c for c in found if c not in expected]
    problems = []
    if dupes:
        problems.append("duplicate columns: " + ", ".join(dupes))
    if missing:
        problems.append("missing columns: " + ", ".join(missing))
    if unknown:
        problems.append("unknown columns: " + ", ".join(unknown))
    if problems:
        raise DataFormatError(uri, "; ".join(problems))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _check_types(schema: pa.Schema, uri: str) -> None:
    for f in schema:
        t = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
        ok = (
            pa.types.is_string(t)
            or pa.types.is_large_string(t)
            or pa.types.is_string_view(t)
            or pa.types.is_integer(t)
            or pa.types.is_floating(t)
            or pa.types.is_boolean(t)
            or pa.types.is_timestamp(t)
            or pa.types.is_date(t)
            or pa.types.is_null(t)
        )
        if not ok:
            raise DataFormatError(uri, f"column {f.name} has unsupported type {f.type}")


def _iter_parquet(path: Path, uri: str, columns: Sequence[str], chunk_rows: int) -> Iterator[_Chunk]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataFormatError(uri, f"unreadable Parquet file: {_first_line(exc)}") from None
    _check_columns(pf.schema_arrow.names, columns, uri)
    _check_types(pa.schema([pf.schema_arrow.field(c) for c in columns]), uri)
    offset = 0
    batches = pf.iter_batches(batch_size=chunk_rows, columns=list(columns), use_threads=False)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise DataFormatError(uri, f"corrupt Parquet data after row {offset}: {_first_line(exc)}") from None
        table = pa.Table.from_batches([batch])
        table = pa.Table.from_arrays(
            [_decode_dictionary(table.column(i)) for i in range(table.num_columns)], names=table.column_names
        )
        yield _Chunk(table, np.arange(offset, offset + batch.num_rows, dtype=np.int64))
        offset += batch.num_rows


def _decode_dictionary(col: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(col.type):
        return col.cast(col.type.value_type)
    return col


def _check_utf8_file(path: Path, uri: str) -> None:
    """Fail with the byte offset of the first byte that is not valid UTF-8."""
    carry = b""
    base = 0  # file offset of carry[0]
    with path.open("rb") as fh:
        while True:
            block = fh.read(1 << 22)
            buf = carry + block
            try:
                buf.decode("utf-8")
                carry = b""
            except UnicodeDecodeError as exc:
                if block and exc.reason == "unexpected end of data" and len(buf) - exc.start < 4:
                    carry = buf[exc.start :]  # a character split across blocks
                else:
                    _raise_utf8(uri, base + exc.start, buf[exc.start])
            if not block:
                return
            base += len(buf) - len(carry)


def _raise_utf8(uri: str, offset: int, byte: int) -> None:
    raise DataFormatError(uri, f"not valid UTF-8 text: byte 0x{byte:02x} at byte offset {offset}")


class _RowMapper:
    """Source rows of the valid rows of a CSV, given the (increasing) source rows of skipped rows.

    Valid row with ordinal ``o`` sits at source row ``o + #{skipped j : valid rows before j <= o}``.
    Skipped rows that lie before every future ordinal are folded into a counter, so memory stays flat.
    """

    def __init__(self) -> None:
        self.pending: list[int] = []
        self.consumed = 0

    def map(self, first: int, n: int) -> _I64:
        ords = np.arange(first, first + n, dtype=np.int64)
        if not n:
            return ords
        skipped = np.asarray(self.pending, dtype=np.int64)
        before = skipped - (self.consumed + np.arange(skipped.shape[0], dtype=np.int64))
        src = ords + self.consumed + np.searchsorted(before, ords, side="right")
        done = int(np.searchsorted(before, ords[-1], side="right"))
        self.consumed += done
        del self.pending[:done]
        return src


def _csv_header(path: Path, uri: str) -> list[str]:
    with path.open("rb") as fh:
        first = fh.readline(1 << 20)
    text = first.removeprefix(_UTF8_BOM).decode("utf-8").rstrip("\r\n")
    if not text.strip():
        raise DataFormatError(uri, "no CSV header line")
    return next(csv.reader([text]))


def _unquote(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Strip the double quotes around a whole value (``"a""b"`` -> ``a"b``): the reader keeps them."""
    quoted = pc.match_substring_regex(col, r'^".*"$')
    if not pc.any(quoted).as_py():
        return col
    inner = pc.replace_substring(pc.utf8_slice_codeunits(col, 1, -1), '""', '"')
    return pc.if_else(quoted, inner, col)


def _iter_csv(path: Path, uri: str, columns: Sequence[str], chunk_rows: int) -> Iterator[_Chunk]:
    """CSV with one record per line.

    The reader runs with quoting off, so a stray quote can only spoil its own line (with quoting on, an
    unbalanced quote swallows the rest of the file or desynchronises the block reader). Quotes around a
    whole value are stripped afterwards; a quoted value holding a comma or a newline, which no valid
    value of the contract does, becomes a ``malformed_row``.
    """
    _check_utf8_file(path, uri)
    names = _csv_header(path, uri)
    _check_columns(names, columns, uri)
    mapper = _RowMapper()
    rejects: list[tuple[int, str, str, dict[str, str | None]]] = []
    located = True

    def on_invalid(row: pacsv.InvalidRow) -> str:
        nonlocal located
        if row.number is None or row.number < 2:
            located = False
            return "skip"
        src = int(row.number) - 2  # line numbers are 1-based and count the header
        mapper.pending.append(src)
        rejects.append((src, "malformed_row", row.text[:_MAX_RAW], {}))
        return "skip"

    block = int(min(1 << 26, max(1 << 20, chunk_rows * 96)))
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False, block_size=block, skip_rows=1, column_names=names),
            parse_options=pacsv.ParseOptions(
                quote_char=False, newlines_in_values=False, ignore_empty_lines=False, invalid_row_handler=on_invalid
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False
            ),
        )
    except (pa.ArrowException, OSError) as exc:
        raise DataFormatError(uri, f"unreadable CSV: {_first_line(exc)}") from None
    valid = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except (pa.ArrowException, OSError) as exc:
            raise DataFormatError(uri, f"unreadable CSV after data line {valid}: {_first_line(exc)}") from None
        if not located:
            raise DataFormatError(uri, "malformed CSV line whose position the reader could not report")
        for lo in range(0, batch.num_rows, chunk_rows):
            part = pa.Table.from_batches([batch.slice(lo, chunk_rows)])
            rows = mapper.map(valid, part.num_rows)
            valid += part.num_rows
            table = pa.Table.from_arrays([_unquote(part.column(c)) for c in columns], names=list(columns))
            # Malformed lines go out with the chunk they precede (the reader may report later ones).
            cut = next((i for i, r in enumerate(rejects) if rows.shape[0] and r[0] > rows[-1]), len(rejects))
            yield _Chunk(table, rows, rejects[:cut])
            del rejects[:cut]
    if rejects:
        yield _Chunk(_empty_text_table(columns), np.empty(0, dtype=np.int64), rejects[:])


def _empty_text_table(columns: Sequence[str]) -> pa.Table:
    return pa.table({c: pa.array([], pa.string()) for c in columns})


def _native_json_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_integer(t):
        return pa.int64()
    if pa.types.is_boolean(t):
        return pa.bool_()
    return pa.string()


def _json_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _iter_jsonl(path: Path, uri: str, columns: Sequence[str], chunk_rows: int, contract: pa.Schema) -> Iterator[_Chunk]:
    fast_schema = pa.schema([(c, _native_json_type(contract.field(c).type)) for c in columns])
    known = set(columns)
    header_checked = False
    line_no = 0
    offset = 0
    with path.open("rb") as fh:
        while True:
            lines = list(itertools.islice(fh, chunk_rows))
            if not lines:
                return
            blob = b"".join(lines)
            if line_no == 0 and blob.startswith(_UTF8_BOM):
                lines[0] = lines[0][len(_UTF8_BOM) :]
                blob, offset = blob[len(_UTF8_BOM) :], len(_UTF8_BOM)
            try:
                blob.decode("utf-8")
            except UnicodeDecodeError as exc:
                _raise_utf8(uri, offset + exc.start, blob[exc.start])
            numbered = [(line_no + i, ln) for i, ln in enumerate(lines) if ln.strip()]
            line_no += len(lines)
            offset += len(blob)
            if not header_checked:
                header_checked = _check_json_header(numbered, columns, uri)
            yield _jsonl_chunk(numbered, columns, known, fast_schema)


def _check_json_header(numbered: list[tuple[int, bytes]], columns: Sequence[str], uri: str) -> bool:
    """The first line that is a JSON object plays the header: its keys must be the contract columns."""
    for _, raw in numbered:
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict):
            _check_columns(list(obj), columns, uri)
            return True
    return False


def _jsonl_chunk(
    numbered: list[tuple[int, bytes]], columns: Sequence[str], known: set[str], fast_schema: pa.Schema
) -> _Chunk:
    rows = np.fromiter((n for n, _ in numbered), dtype=np.int64, count=len(numbered))
    if not numbered:
        return _Chunk(_empty_text_table(columns), rows)
    # Fast path: Arrow's JSON reader, when every line is a well-typed object of contract keys. Any
    # deviation makes it fail for the whole chunk, and the exact per-line path below decides.
    data = b"".join(raw if raw.endswith(b"\n") else raw + b"\n" for _, raw in numbered)
    try:
        table = pajson.read_json(
            pa.BufferReader(data),
            read_options=pajson.ReadOptions(use_threads=False, block_size=max(len(data) + 1, 1 << 16)),
            parse_options=pajson.ParseOptions(explicit_schema=fast_schema, unexpected_field_behavior="error"),
        )
        if table.num_rows == len(numbered):
            return _Chunk(table.select(list(columns)), rows)
    except pa.ArrowException:
        pass
    values: dict[str, list[str | None]] = {c: [] for c in columns}
    kept: list[int] = []
    rejects: list[tuple[int, str, str, dict[str, str | None]]] = []
    for n, raw in numbered:
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        text = raw.decode("utf-8").rstrip("\r\n")[:_MAX_RAW]
        if not isinstance(obj, dict):
            rejects.append((n, "malformed_json", text, {}))
            continue
        cells = {c: _json_text(obj.get(c)) for c in columns}
        if not known.issuperset(obj):
            rejects.append((n, "malformed_row", text, cells))
            continue
        kept.append(n)
        for c in columns:
            values[c].append(cells[c])
    table = pa.table({c: pa.array(values[c], pa.string()) for c in columns})
    return _Chunk(table, np.asarray(kept, dtype=np.int64), rejects)


def _iter_chunks(
    path: Path, fmt: FileFormat, uri: str, columns: Sequence[str], chunk_rows: int, contract: pa.Schema
) -> Iterator[_Chunk]:
    if fmt == "parquet":
        return _iter_parquet(path, uri, columns, chunk_rows)
    if fmt == "csv":
        return _iter_csv(path, uri, columns, chunk_rows)
    return _iter_jsonl(path, uri, columns, chunk_rows, contract)


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
    rules.append(("unknown_context", ~pl.col("context").is_in(list(CONTEXTS))))
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


# ------------------------------------------------------------------------------------------ outputs


class _AtomicParquet:
    """A Parquet file written beside its target and renamed into place by :meth:`commit` only."""

    def __init__(self, target: Path, schema: pa.Schema, row_group_rows: int) -> None:
        self.target = target
        self.schema = schema
        self.tmp = target.parent / f".{target.name}.{os.getpid()}.{id(self):x}.tmp"
        self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.row_group_rows = row_group_rows
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self.buffer.append(table)
        self.buffered += table.num_rows
        self.rows += table.num_rows
        if self.buffered >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if self.buffer:
            self.writer.write_table(pa.concat_tables(self.buffer), row_group_size=max(self.buffered, 1))
            self.buffer.clear()
            self.buffered = 0

    def close(self) -> None:
        self._flush()
        self.writer.close()
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def commit(self) -> None:
        os.replace(self.tmp, self.target)
        _fsync_dir(self.target.parent)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        self.tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Buckets:
    """Hash buckets of ``(event_id, _source_row)`` on disk, written in input order."""

    def __init__(self, root: Path, n: int) -> None:
        self.root = root
        self.n = n
        self.writers: dict[int, tuple[pa.NativeFile, ipc.RecordBatchStreamWriter]] = {}

    def path(self, b: int) -> Path:
        return self.root / f"bucket-{b:04d}.arrows"

    def add(self, ids: pa.Array | pa.ChunkedArray, rows: pa.Array | pa.ChunkedArray) -> None:
        if not len(ids):
            return
        if self.n == 1:
            self._append(0, pa.Table.from_arrays([ids, rows], schema=_BUCKET_SCHEMA))
            return
        ids_series = pl.Series(ids)
        bucket = (ids_series.hash(seed=17) % self.n).to_numpy().astype(np.int64)
        order = np.argsort(bucket, kind="stable")
        counts = np.bincount(bucket, minlength=self.n)
        table = pa.Table.from_arrays([ids, rows], schema=_BUCKET_SCHEMA).take(pa.array(order))
        start = 0
        for b in np.flatnonzero(counts):
            n = int(counts[b])
            self._append(int(b), table.slice(start, n))
            start += n

    def _append(self, b: int, table: pa.Table) -> None:
        if b not in self.writers:
            sink = pa.OSFile(str(self.path(b)), "wb")
            self.writers[b] = (sink, ipc.new_stream(sink, _BUCKET_SCHEMA))
        self.writers[b][1].write_table(table)

    def close(self) -> None:
        for sink, writer in self.writers.values():
            writer.close()
            sink.close()

    def duplicates(self) -> tuple[_I64, int]:
        """Source rows of every occurrence after the first of an id (sorted), and the number of such ids."""
        found: list[_I64] = []
        ids = 0
        for b in sorted(self.writers):
            with pa.OSFile(str(self.path(b)), "rb") as src:
                table = ipc.open_stream(src).read_all()
            frame = pl.from_arrow(table)
            assert isinstance(frame, pl.DataFrame)
            # Rows are in input order within a bucket, so the first distinct is the smallest source row.
            later = frame.filter(~pl.col("event_id").is_first_distinct())
            if later.height:
                found.append(later["_source_row"].to_numpy().astype(np.int64))
                ids += later["event_id"].n_unique()
            self.path(b).unlink()
        rows = np.sort(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)
        return rows, ids


def _bucket_count(path: Path, fmt: FileFormat, chunk_rows: int) -> int:
    if fmt == "parquet":
        try:
            estimate = pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowException, OSError):
            estimate = 0
    else:
        estimate = path.stat().st_size // _MIN_BYTES_PER_ROW
    per_bucket = max(4 * chunk_rows, 65_536)
    return int(min(_MAX_BUCKETS, max(1, -(-estimate // per_bucket))))


# --------------------------------------------------------------------------------------- the ingest


def ingest_events(
    source: Path,
    catalog: Path,
    good_out: Path,
    quarantine_out: Path,
    *,
    now: datetime,
    chunk_rows: int = 65_536,
    fmt: Literal["auto", "parquet", "csv", "jsonl"] = "auto",
    source_uri: str | None = None,
) -> IngestReport:
    """Validate listening events chunk by chunk; write good rows and a quarantine file.

    Args:
        source: Events file (Parquet, CSV with a header, or JSON Lines).
        catalog: Track catalog (any of the same formats), read fully and validated strictly.
        good_out: Parquet file for the good rows (schema ``EVENTS_SCHEMA``), replaced atomically.
        quarantine_out: Parquet file for the quarantined rows (:data:`QUARANTINE_SCHEMA`), replaced
            atomically.
        now: Reference time (timezone-aware); rows later than ``now + FUTURE_TOLERANCE_S`` are future.
        chunk_rows: Rows per chunk; bounds the memory.
        fmt: Format of ``source``, or ``auto`` to detect it from the content.
        source_uri: Name of the source in errors and reports (default: the path).

    Returns:
        The counts; ``input_rows == good_rows + quarantined_rows``.

    Raises:
        InvalidInputError: ``now`` is naive, ``chunk_rows < 1`` or the outputs collide.
        DataFormatError: The events file or the catalog is not what it claims (see the module docs).
    """
    issues = []
    if now.tzinfo is None or now.utcoffset() is None:
        issues.append(FieldIssue("now", "must be timezone-aware"))
    if chunk_rows < 1:
        issues.append(FieldIssue("chunk_rows", "must be >= 1"))
    if fmt not in ("auto", "parquet", "csv", "jsonl"):
        issues.append(FieldIssue("fmt", f"must be auto, parquet, csv or jsonl, got {fmt!r}"))
    if good_out.resolve() == quarantine_out.resolve():
        issues.append(FieldIssue("quarantine_out", "must differ from good_out"))
    if issues:
        raise InvalidInputError(_TASK, issues)
    uri = source_uri or str(source)
    tracks = read_catalog(catalog, now=now)
    track_ids = pl.Series("track_id", tracks.column("track_id").combine_chunks(), dtype=pl.String)
    kind = detect_format(source, fmt, uri)
    limit = now.astimezone(UTC) + timedelta(seconds=FUTURE_TOLERANCE_S)

    for out in (good_out, quarantine_out):
        out.parent.mkdir(parents=True, exist_ok=True)
    spill_dir = Path(tempfile.mkdtemp(prefix=".ingest-spill-", dir=good_out.parent))
    writers: list[_AtomicParquet] = []
    try:
        writers.append(_AtomicParquet(good_out, EVENTS_SCHEMA, chunk_rows))
        writers.append(_AtomicParquet(quarantine_out, QUARANTINE_SCHEMA, chunk_rows))
        good, quarantine = writers
        input_rows, chunks, reasons, dup_ids = _run(
            source, kind, uri, chunk_rows, track_ids, limit, spill_dir, good, quarantine
        )
        assert input_rows == good.rows + quarantine.rows, "ingest lost or invented rows"
        for w in writers:
            w.close()
        for w in writers:
            w.commit()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)

    ordered = {r: reasons[r] for r in QUARANTINE_REASONS if reasons.get(r)}
    return IngestReport(
        source_format=kind,
        input_rows=input_rows,
        good_rows=good.rows,
        quarantined_rows=quarantine.rows,
        reasons=ordered,
        duplicate_event_ids=dup_ids,
        chunks=chunks,
        catalog_tracks=tracks.num_rows,
        contract_version=CONTRACT_VERSION,
    )


def _run(
    source: Path,
    kind: FileFormat,
    uri: str,
    chunk_rows: int,
    track_ids: pl.Series,
    limit: datetime,
    spill_dir: Path,
    good: _AtomicParquet,
    quarantine: _AtomicParquet,
) -> tuple[int, int, dict[str, int], int]:
    reasons: dict[str, int] = {}
    input_rows = chunks = 0
    buckets = _Buckets(spill_dir, _bucket_count(source, kind, chunk_rows))
    spill_path = spill_dir / "candidates.arrows"
    # Pass 1: validate, quarantine the bad rows, spill the candidates in order and into buckets.
    with pa.OSFile(str(spill_path), "wb") as sink, ipc.new_stream(sink, _SPILL_SCHEMA) as spill:
        try:
            for chunk in _iter_chunks(source, kind, uri, EVENT_COLUMNS, chunk_rows, EVENTS_SCHEMA):
                chunks += 1
                input_rows += chunk.table.num_rows + len(chunk.rejects)
                checked = _validate_chunk(chunk, track_ids, limit)
                quarantine.write(checked.bad)
                for reason, n in _value_counts(checked.bad.column("_reason")).items():
                    reasons[reason] = reasons.get(reason, 0) + n
                if checked.good.num_rows:
                    spill.write_table(checked.good)
                    buckets.add(checked.good.column("event_id"), checked.good.column("_source_row"))
        finally:
            buckets.close()
    # Pass 2: duplicates, one bucket at a time.
    dup_rows, dup_ids = buckets.duplicates()
    # Pass 3: the candidates in input order; duplicates go to the quarantine.
    with pa.OSFile(str(spill_path), "rb") as src:
        for batch in ipc.open_stream(src):
            is_dup = _member(batch.column("_source_row").to_numpy(), dup_rows)
            table = pa.Table.from_batches([batch])
            dup_mask = pa.array(is_dup, pa.bool_())
            good.write(_good_table(table.filter(pc.invert(dup_mask))))
            if is_dup.any():
                dups = _duplicates_table(table.filter(dup_mask))
                quarantine.write(dups)
                reasons["duplicate_event_id"] = reasons.get("duplicate_event_id", 0) + dups.num_rows
    return input_rows, chunks, reasons, dup_ids


def _member(values: _I64, sorted_set: _I64) -> npt.NDArray[np.bool_]:
    """``values[i] in sorted_set`` for every i, by binary search."""
    if not sorted_set.shape[0]:
        return np.zeros(values.shape[0], dtype=np.bool_)
    pos = np.minimum(np.searchsorted(sorted_set, values), sorted_set.shape[0] - 1)
    return np.asarray(sorted_set[pos] == values)


def _value_counts(col: pa.ChunkedArray) -> dict[str, int]:
    if not len(col):
        return {}
    counts = pc.value_counts(col)
    return {str(v.as_py()): int(n.as_py()) for v, n in zip(counts.field("values"), counts.field("counts"), strict=True)}


def _good_table(spilled: pa.Table) -> pa.Table:
    return pa.Table.from_arrays([spilled.column(f.name) for f in EVENTS_SCHEMA], schema=EVENTS_SCHEMA)


def _duplicates_table(spilled: pa.Table) -> pa.Table:
    cols = []
    for c in EVENT_COLUMNS:
        if c in _PARSED:
            raw = spilled.column(_RAW_PREFIX + c)
            cols.append(pc.coalesce(raw, _as_text(spilled.column(c))))
        else:
            cols.append(spilled.column(c))
    n = spilled.num_rows
    return pa.Table.from_arrays(
        [
            *cols,
            spilled.column("_source_row"),
            pa.array(["duplicate_event_id"] * n, pa.string()),
            pa.nulls(n, pa.string()),
        ],
        schema=QUARANTINE_SCHEMA,
    )


# ------------------------------------------------------------------------------------------ catalog


def read_catalog(
    path: Path,
    *,
    now: datetime | None = None,
    fmt: Literal["auto", "parquet", "csv", "jsonl"] = "auto",
    uri: str | None = None,
) -> pa.Table:
    """Read and validate a track catalog; return it with exactly ``TRACKS_SCHEMA``.

    Rules: every value present; ``track_id`` and ``artist_id`` match ``ID_PATTERN``; ``track_id``
    unique; ``genre`` in ``GENRES``; ``duration_ms`` in ``[1, MAX_DURATION_MS]``; ``release_year`` in
    ``[MIN_RELEASE_YEAR, now.year + 1]`` (no upper bound without ``now``); ``explicit`` a boolean; at
    least one track.

    Args:
        path: Catalog file (Parquet, CSV or JSON Lines).
        now: Reference time for the release-year bound.
        fmt: Format, or ``auto`` to detect it from the content.
        uri: Name of the file in error messages (default: the path).

    Returns:
        The catalog as one Arrow table.

    Raises:
        DataFormatError: The file is unreadable or any row breaks a rule (the message names the
            rule, the number of rows and the first one).
    """
    name = uri or str(path)
    kind = detect_format(path, fmt, name)
    parts: list[pa.Table] = []
    for chunk in _iter_chunks(path, kind, name, TRACK_COLUMNS, 1 << 20, TRACKS_SCHEMA):
        if chunk.rejects:
            row, reason, _, _ = chunk.rejects[0]
            raise DataFormatError(name, f"catalog: {reason.replace('_', ' ')} at row {row}")
        parts.append(_validate_catalog_chunk(chunk, now, name))
    table = pa.concat_tables(parts) if parts else TRACKS_SCHEMA.empty_table()
    if table.num_rows == 0:
        raise DataFormatError(name, "catalog has no tracks")
    ids = pl.Series(table.column("track_id").combine_chunks())
    dup = ids.filter(ids.is_duplicated())
    if dup.len():
        raise DataFormatError(
            name, f"catalog: duplicate track_id {dup[0]!r} ({dup.n_unique()} ids appear more than once)"
        )
    return table.combine_chunks()


def _validate_catalog_chunk(chunk: _Chunk, now: datetime | None, name: str) -> pa.Table:
    max_year = (now.astimezone(UTC).year + 1) if now is not None else 2**31 - 1
    dur, year = pl.col("duration_ms"), pl.col("release_year")
    rules: list[tuple[str, pl.Expr]] = [(f"missing value in {c}", _breaks(c, "missing")) for c in TRACK_COLUMNS]
    rules += [(f"bad type in {c}", _breaks(c, "bad_type")) for c in ("duration_ms", "release_year", "explicit")]
    rules += [(f"{c} breaks the id rule", ~pl.col(c).str.contains(ID_PATTERN)) for c in ("track_id", "artist_id")]
    rules += [
        ("genre not one of GENRES", ~pl.col("genre").is_in(list(GENRES))),
        (
            f"duration_ms outside [1, {MAX_DURATION_MS}]",
            _breaks("duration_ms", "overflow") | (dur < 1) | (dur > MAX_DURATION_MS),
        ),
        (
            f"release_year outside [{MIN_RELEASE_YEAR}, {max_year}]",
            _breaks("release_year", "overflow") | (year < MIN_RELEASE_YEAR) | (year > max_year),
        ),
    ]
    parsed = _parse_frame(chunk.table, _TRACK_KINDS).with_columns(
        _reason_expr(rules).alias("_reason"), pl.Series("_row", chunk.rows)
    )
    bad = parsed.filter(pl.col("_reason").is_not_null())
    if bad.height:
        first = bad.row(0, named=True)
        raise DataFormatError(name, f"catalog: {bad.height} bad rows; first at row {first['_row']}: {first['_reason']}")
    return pa.Table.from_arrays([parsed[f.name].to_arrow().cast(f.type) for f in TRACKS_SCHEMA], schema=TRACKS_SCHEMA)
