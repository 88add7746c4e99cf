"""The track catalog: :func:`read_catalog` reads it fully and validates it strictly."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

import polars as pl
import pyarrow as pa

from aitasks.data_processing.contract import (
    ID_PATTERN,
    MAX_DURATION_MS,
    MAX_GENRE_CHARS,
    MIN_RELEASE_YEAR,
    TRACK_COLUMNS,
    TRACKS_SCHEMA,
)
from aitasks.data_processing.etl.read import _Chunk, _iter_chunks, detect_format
from aitasks.data_processing.etl.validate import _TRACK_KINDS, _breaks, _parse_frame, _reason_expr
from aitasks.data_processing.vocabulary import POLICY, fold_series
from aitasks.runtime.errors import DataFormatError

_NO_KEY: Final = f"genre has no letter or digit (its {POLICY} key is empty)"
_TOO_LONG: Final = f"genre longer than {MAX_GENRE_CHARS} characters"

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
    unique; ``genre`` holds a letter or a digit and has at most ``MAX_GENRE_CHARS`` characters (genres
    are an open vocabulary: any such value is a genre); ``duration_ms`` in ``[1, MAX_DURATION_MS]``; ``release_year`` in
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
        (_NO_KEY, pl.col("_genre_key") == ""),
        (_TOO_LONG, pl.col("genre").str.len_chars() > MAX_GENRE_CHARS),
        (
            f"duration_ms outside [1, {MAX_DURATION_MS}]",
            _breaks("duration_ms", "overflow") | (dur < 1) | (dur > MAX_DURATION_MS),
        ),
        (
            f"release_year outside [{MIN_RELEASE_YEAR}, {max_year}]",
            _breaks("release_year", "overflow") | (year < MIN_RELEASE_YEAR) | (year > max_year),
        ),
    ]
    parsed = _parse_frame(chunk.table, _TRACK_KINDS)
    parsed = parsed.with_columns(fold_series(parsed["genre"]).alias("_genre_key"))
    parsed = parsed.with_columns(_reason_expr(rules).alias("_reason"), pl.Series("_row", chunk.rows))
    bad = parsed.filter(pl.col("_reason").is_not_null())
    if bad.height:
        first = bad.row(0, named=True)
        reason = first["_reason"]
        if reason in (_NO_KEY, _TOO_LONG):
            # Name the value and the rule, and every other value of this chunk that breaks it.
            values = sorted(set(bad.filter(pl.col("_reason") == reason)["genre"].to_list()))
            reason = (
                f"{reason}: {first['genre'][:160]!r}; values breaking this rule in this chunk: "
                + ", ".join(repr(v[:160]) for v in values[:10])
                + (f" and {len(values) - 10} more" if len(values) > 10 else "")
            )
        raise DataFormatError(name, f"catalog: {bad.height} bad rows; first at row {first['_row']}: {reason}")
    return pa.Table.from_arrays([parsed[f.name].to_arrow().cast(f.type) for f in TRACKS_SCHEMA], schema=TRACKS_SCHEMA)
