"""Events and catalog files in chunks: format detection and the Parquet, CSV and JSON Lines readers."""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from aitasks.runtime.errors import DataFormatError

FileFormat = Literal["parquet", "csv", "jsonl"]
_MAX_RAW: Final = 65_536
_UTF8_BOM: Final = b"\xef\xbb\xbf"
_JSON_SUFFIXES: Final = (".jsonl", ".ndjson", ".json")

_I64 = npt.NDArray[np.int64]


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


def _positions(indices: Sequence[int]) -> str:
    shown = ", ".join(str(i + 1) for i in indices[:10])
    return shown + (f" and {len(indices) - 10} more" if len(indices) > 10 else "")


def _check_columns(found: Sequence[str], expected: Sequence[str], uri: str, where: str) -> None:
    """Refuse a header that is not the contract's columns.

    Missing columns are named (the names come from the contract); duplicate and unknown ones are given
    by position in ``where`` (``header line 1``, ``the schema``, ``the object on line 3``) and never by
    name: a file that is not what it claims (a password file, a key) must not have its first line
    echoed into logs, errors and the audit.
    """
    found = list(found)
    dupes = [i for i, c in enumerate(found) if found.index(c) != i]
    missing = [c for c in expected if c not in found]
    unknown = [i for i, c in enumerate(found) if c not in expected and found.index(c) == i]
    problems = []
    if dupes:
        problems.append(f"duplicate columns at positions {_positions(dupes)} of {where}")
    if missing:
        problems.append("missing columns: " + ", ".join(missing))
    if unknown:
        problems.append(f"unknown columns at positions {_positions(unknown)} of {where}")
    if problems:
        raise DataFormatError(uri, "; ".join(problems))


#: Reader error texts worth keeping, rebuilt from their numbers only (the rest of a reader's message may
#: quote the file, e.g. Arrow's "Expected 6 columns, got 1: <the line>").
_SAFE_REASONS: Final = (
    (re.compile(r"Expected (\d+) columns, got (\d+)"), "expected {} columns, got {}"),
    (re.compile(r"Parquet magic bytes not found"), "Parquet magic bytes not found"),
    (re.compile(r"[Dd]eserializ\w* thrift"), "unreadable Parquet metadata"),
)


def _first_line(err: BaseException) -> str:
    """A content-free reason for a reader error: a known message rebuilt from its numbers, else its type."""
    text = str(err)
    for pattern, template in _SAFE_REASONS:
        if m := pattern.search(text):
            return template.format(*m.groups())
    return type(err).__name__


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
    _check_columns(pf.schema_arrow.names, columns, uri, "the schema")
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
    _check_columns(names, columns, uri, "header line 1")
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
    for n, raw in numbered:
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict):
            _check_columns(list(obj), columns, uri, f"the object on line {n + 1}")
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
