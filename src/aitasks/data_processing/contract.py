"""The data contract for listening events and the track catalog.

This module is the single source of truth for column names, types and ranges. The human-readable
version lives in ``docs/{en,fr,de}/data-contract.md``; a test keeps both in step.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

CONTRACT_VERSION: Final = "2.0.0"

# Genres and contexts are open vocabularies: the contract fixes their shape, the data their values
# (see :mod:`aitasks.data_processing.vocabulary`). The built-in lists live with the synthetic generator.

#: A genre is at most this long (characters) and must hold a letter or a digit.
MAX_GENRE_CHARS: Final = 128
#: A context is at most this long (characters) and must hold a letter or a digit.
MAX_CONTEXT_CHARS: Final = 64
#: At most this many genres (and contexts) get their own id; the rest share ``other``.
MAX_VOCABULARY: Final = 1000
#: Width of the user genre affinity: the top ``GENRE_SLOTS`` genres of the vocabulary have a column
#: each (``user_genre_affinity_00`` = the genre with the most catalog tracks), the rest share
#: ``user_genre_affinity_other``.
GENRE_SLOTS: Final = 16

#: Identifier rule for user, track, artist and event ids: 1-64 chars of ``[A-Za-z0-9_-]``.
ID_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}$"

#: A single play cannot last longer than this (a day); longer values are corrupt.
MAX_MS_PLAYED: Final = 24 * 3600 * 1000
#: Track durations must lie in (0, 3 h].
MAX_DURATION_MS: Final = 3 * 3600 * 1000
MIN_RELEASE_YEAR: Final = 1900
#: Events stamped further than this into the future (clock skew allowance) are quarantined.
FUTURE_TOLERANCE_S: Final = 300

EVENT_COLUMNS: Final[tuple[str, ...]] = (
    "event_id",
    "user_id",
    "track_id",
    "ts",
    "ms_played",
    "context",
    "skipped",
)
TRACK_COLUMNS: Final[tuple[str, ...]] = (
    "track_id",
    "artist_id",
    "genre",
    "duration_ms",
    "release_year",
    "explicit",
)

EVENTS_SCHEMA: Final = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("ms_played", pa.int64(), nullable=False),
        pa.field("context", pa.string(), nullable=False),
        pa.field("skipped", pa.bool_(), nullable=False),
    ]
)

TRACKS_SCHEMA: Final = pa.schema(
    [
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("artist_id", pa.string(), nullable=False),
        pa.field("genre", pa.string(), nullable=False),
        pa.field("duration_ms", pa.int64(), nullable=False),
        pa.field("release_year", pa.int32(), nullable=False),
        pa.field("explicit", pa.bool_(), nullable=False),
    ]
)

#: Columns that hold identifiers and must match :data:`ID_PATTERN`.
EVENT_ID_COLUMNS: Final[tuple[str, ...]] = ("event_id", "user_id", "track_id")

#: Accepted spellings of a boolean in text files (compared case-insensitively).
TRUE_TEXTS: Final[tuple[str, ...]] = ("true", "1")
FALSE_TEXTS: Final[tuple[str, ...]] = ("false", "0")

#: Quarantine files carry every input column as text (what was read, unchanged) plus these:
#: ``_source_row`` (0-based row or line of the input), ``_reason`` (one of :data:`QUARANTINE_REASONS`)
#: and ``_raw`` (the raw text of a line that could not be split into columns, else null).
QUARANTINE_EXTRA_COLUMNS: Final[tuple[str, ...]] = ("_source_row", "_reason", "_raw")

#: Reason codes of the quarantine, in precedence order: a bad row gets the first rule it breaks.
QUARANTINE_REASONS: Final[tuple[str, ...]] = (
    "malformed_json",
    "malformed_row",
    *(f"missing_column_value:{c}" for c in EVENT_COLUMNS),
    "bad_type:ts",
    "bad_type:ms_played",
    "bad_type:skipped",
    "naive_timestamp",
    *(f"bad_id:{c}" for c in EVENT_ID_COLUMNS),
    "out_of_range:ms_played",
    "bad_context",
    "unknown_track_id",
    "future_timestamp",
    "duplicate_event_id",
)


def genre_affinity_column(slot: int | None) -> str:
    """Name of the user feature holding the recency-weighted affinity share of genre rank ``slot``.

    ``slot`` is a rank in the run's genre vocabulary (0 = the most tracks), below :data:`GENRE_SLOTS`;
    None names the share of every other genre.
    """
    if slot is None:
        return "user_genre_affinity_other"
    if not 0 <= slot < GENRE_SLOTS:
        raise ValueError(f"genre slot {slot} outside [0, {GENRE_SLOTS})")
    return f"user_genre_affinity_{slot:02d}"


#: The user genre affinity columns, in order: one per slot, then ``other``.
GENRE_AFFINITY_COLUMNS: Final[tuple[str, ...]] = (
    *(genre_affinity_column(i) for i in range(GENRE_SLOTS)),
    genre_affinity_column(None),
)
