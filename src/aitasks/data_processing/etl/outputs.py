"""Ingest outputs: Parquet files renamed into place on commit, and the on-disk hash buckets of event ids."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Final

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import ipc

from aitasks.data_processing.etl.read import _I64, FileFormat
from aitasks.platform.files import fsync_path, publish, temp_path

_BUCKET_SCHEMA: Final = pa.schema([pa.field("event_id", pa.string()), pa.field("_source_row", pa.int64())])
_MAX_BUCKETS: Final = 256
_MIN_BYTES_PER_ROW: Final = 32  # a conservative text row size, to size the buckets from the file size


# ------------------------------------------------------------------------------------------ outputs


class _AtomicParquet:
    """A Parquet file written beside its target and renamed into place by :meth:`commit` only."""

    def __init__(self, target: Path, schema: pa.Schema, row_group_rows: int) -> None:
        self.target = target
        self.schema = schema
        self.tmp = temp_path(target)
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
        fsync_path(self.tmp)

    def commit(self) -> None:
        publish(self.tmp, self.target, fsync=False)  # fsynced by close

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        self.tmp.unlink(missing_ok=True)


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
