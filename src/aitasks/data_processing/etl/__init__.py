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
7. ``bad_context``: no letter or digit (an empty key under the vocabulary's ``fold-v1`` policy) or
   longer than ``MAX_CONTEXT_CHARS``. Contexts are an open vocabulary: any other value is good.
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

from aitasks.data_processing.contract import QUARANTINE_REASONS
from aitasks.data_processing.etl.catalog import read_catalog
from aitasks.data_processing.etl.ingest import IngestReport, ingest_events
from aitasks.data_processing.etl.read import detect_format
from aitasks.data_processing.etl.validate import QUARANTINE_SCHEMA

__all__ = [
    "QUARANTINE_REASONS",
    "QUARANTINE_SCHEMA",
    "IngestReport",
    "detect_format",
    "ingest_events",
    "read_catalog",
]
