"""The ingest: :func:`ingest_events` validates and spills, finds duplicates, writes, and reports the counts."""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import ipc
from pydantic import BaseModel, ConfigDict, Field

from aitasks.data_processing.contract import (
    CONTRACT_VERSION,
    EVENT_COLUMNS,
    EVENTS_SCHEMA,
    FUTURE_TOLERANCE_S,
    QUARANTINE_REASONS,
)
from aitasks.data_processing.etl.catalog import read_catalog
from aitasks.data_processing.etl.outputs import _AtomicParquet, _bucket_count, _Buckets
from aitasks.data_processing.etl.read import _I64, FileFormat, _iter_chunks, detect_format
from aitasks.data_processing.etl.validate import (
    _PARSED,
    _RAW_PREFIX,
    _SPILL_SCHEMA,
    QUARANTINE_SCHEMA,
    _as_text,
    _validate_chunk,
)
from aitasks.runtime.errors import FieldIssue, InvalidInputError

_TASK: Final = "data.ingest"


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
    catalog_out: Path | None = None,
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
        catalog_out: Where to write the validated catalog as Parquet (``TRACKS_SCHEMA``), replaced
            atomically: later steps read this one format whatever the catalog came in.

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
    if catalog_out is not None:
        import pyarrow.parquet as pq

        from aitasks.platform.files import atomic_path

        with atomic_path(catalog_out) as tmp:
            pq.write_table(tracks, tmp)
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
