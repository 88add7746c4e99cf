"""Chunked ingest: every quarantine reason, reconciliation, cross-chunk duplicates, atomic outputs,
clear errors for files that are not what they claim, and flat memory."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aitasks.data_processing.contract import (
    EVENT_COLUMNS,
    EVENTS_SCHEMA,
    MAX_MS_PLAYED,
    QUARANTINE_EXTRA_COLUMNS,
    QUARANTINE_REASONS,
    TRACK_COLUMNS,
)
from aitasks.data_processing.etl import QUARANTINE_SCHEMA, IngestReport, detect_format, ingest_events, read_catalog
from aitasks.data_processing.etl import ingest as etl_ingest
from aitasks.data_processing.generator import generate_dataset
from aitasks.runtime.errors import DataFormatError, InvalidInputError

NOW = datetime(2026, 11, 1, tzinfo=UTC)
TRACKS = ("t1", "t2", "t3", "t4", "t5")
GOOD: dict[str, str] = {
    "event_id": "e0",
    "user_id": "u1",
    "track_id": "t1",
    "ts": "2026-10-01T08:00:00Z",
    "ms_played": "1000",
    "context": "radio",
    "skipped": "false",
}
Row = Mapping[str, Any] | str  # a str is a raw line, written as is


# ---------------------------------------------------------------------------------------- helpers


def _catalog_rows() -> list[dict[str, Any]]:
    return [
        {
            "track_id": t,
            "artist_id": f"a{i}",
            "genre": "pop",
            "duration_ms": 200_000,
            "release_year": 2020,
            "explicit": False,
        }
        for i, t in enumerate(TRACKS)
    ]


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "tracks.csv"
    lines = [",".join(TRACK_COLUMNS)]
    lines += [
        ",".join(str(r[c]).lower() if c == "explicit" else str(r[c]) for c in TRACK_COLUMNS) for r in _catalog_rows()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def row(i: int = 0, **over: Any) -> dict[str, Any]:
    return {**GOOD, "event_id": f"e{i}", **over}


def _json_value(col: str, value: Any) -> Any:
    """JSON as a producer would write it: numbers and booleans unquoted when they are valid."""
    if not isinstance(value, str) or value == "":
        return value
    if col == "ms_played" and value.lstrip("-").isdigit():
        return int(value)
    if col == "skipped" and value in ("true", "false"):
        return value == "true"
    return value


def write_events(path: Path, rows: Sequence[Row], fmt: str) -> Path:
    if fmt == "csv":
        lines = [",".join(EVENT_COLUMNS)]
        lines += [r if isinstance(r, str) else ",".join(str(r[c]) for c in EVENT_COLUMNS) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif fmt == "jsonl":
        lines = [r if isinstance(r, str) else json.dumps({k: _json_value(k, v) for k, v in r.items()}) for r in rows]
        path.write_text("".join(line + "\n" for line in lines))
    else:
        assert all(not isinstance(r, str) for r in rows), "parquet has no raw lines"
        table = pa.table(
            {c: pa.array([None if r[c] == "" else str(r[c]) for r in rows], pa.string()) for c in EVENT_COLUMNS}
        )  # type: ignore[index]
        pq.write_table(table, path)
    return path


def ingest(tmp_path: Path, source: Path, catalog: Path, **kw: Any) -> tuple[IngestReport, pl.DataFrame, pl.DataFrame]:
    good, quarantine = tmp_path / "out" / "good.parquet", tmp_path / "out" / "quarantine.parquet"
    report = ingest_events(source, catalog, good, quarantine, now=kw.pop("now", NOW), **kw)
    assert pq.read_schema(good).equals(EVENTS_SCHEMA)
    assert pq.read_schema(quarantine).equals(QUARANTINE_SCHEMA)
    assert report.input_rows == report.good_rows + report.quarantined_rows
    assert sum(report.reasons.values()) == report.quarantined_rows
    return report, pl.read_parquet(good), pl.read_parquet(quarantine)


def reasons_by_row(quarantine: pl.DataFrame) -> dict[int, str]:
    return dict(zip(quarantine["_source_row"], quarantine["_reason"], strict=True))


# ----------------------------------------------------------------------------------- reason codes

SINGLE_RULES: list[tuple[dict[str, str], str]] = [
    *(({c: ""}, f"missing_column_value:{c}") for c in EVENT_COLUMNS),
    ({"ts": "yesterday"}, "bad_type:ts"),
    ({"ts": "2026-02-30T08:00:00Z"}, "bad_type:ts"),
    ({"ms_played": "12.5"}, "bad_type:ms_played"),
    ({"skipped": "maybe"}, "bad_type:skipped"),
    ({"ts": "2026-10-01T08:00:00"}, "naive_timestamp"),
    ({"ts": "2026-10-01 08:00:00.250"}, "naive_timestamp"),
    ({"event_id": "e 1"}, "bad_id:event_id"),
    ({"user_id": "u/1"}, "bad_id:user_id"),
    ({"track_id": "t1;drop"}, "bad_id:track_id"),
    ({"track_id": "t" * 65}, "bad_id:track_id"),
    ({"ms_played": "-1"}, "out_of_range:ms_played"),
    ({"ms_played": str(MAX_MS_PLAYED + 1)}, "out_of_range:ms_played"),
    ({"ms_played": "9" * 30}, "out_of_range:ms_played"),
    ({"context": "--"}, "bad_context"),  # no letter or digit
    ({"context": "c" * 65}, "bad_context"),  # longer than MAX_CONTEXT_CHARS
    ({"track_id": "t999"}, "unknown_track_id"),
    ({"ts": "2026-11-01T00:05:01Z"}, "future_timestamp"),
    ({"ts": "2026-11-01T02:05:01+02:00"}, "future_timestamp"),
]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize(
    ("bad", "reason"), SINGLE_RULES, ids=[f"{r}-{next(iter(b.values()))[:12]}" for b, r in SINGLE_RULES]
)
def test_each_rule_quarantines_with_its_reason(
    tmp_path: Path, catalog: Path, fmt: str, bad: dict[str, str], reason: str
) -> None:
    src = write_events(tmp_path / f"events.{fmt}", [row(0), row(1, **bad), row(2)], fmt)
    report, good, quarantine = ingest(tmp_path, src, catalog)
    assert report.reasons == {reason: 1}
    assert good["event_id"].to_list() == ["e0", "e2"]
    assert reasons_by_row(quarantine) == {1: reason}
    # The quarantine keeps what was read, as text.
    for col, value in bad.items():
        assert quarantine[col][0] == (None if value == "" and fmt == "parquet" else value)


def test_values_on_the_edges_are_good(tmp_path: Path, catalog: Path) -> None:
    rows = [
        row(0, ms_played="0"),
        row(1, ms_played=str(MAX_MS_PLAYED)),
        row(2, ts="2026-11-01T00:05:00Z"),  # exactly now + tolerance
        row(3, ts="2026-10-01T10:00:00.123456+02:00", skipped="TRUE"),
        row(4, ts="2026-10-01 08:00:00Z", skipped="1"),
        row(5, event_id="A-b_9" * 12 + "abcd"),  # 64 characters
    ]
    report, good, _ = ingest(tmp_path, write_events(tmp_path / "e.csv", rows, "csv"), catalog)
    assert report.good_rows == 6
    assert good["ts"][3] == datetime(2026, 10, 1, 8, 0, 0, 123456, tzinfo=UTC)  # converted to UTC
    assert good["skipped"].to_list() == [False, False, False, True, True, False]


def test_precedence_first_failing_rule_wins(tmp_path: Path, catalog: Path) -> None:
    rows = [
        row(0, user_id="", ts="junk"),  # missing beats bad type
        row(1, ts="junk", event_id="bad id"),  # bad type beats bad id
        row(2, ts="2026-10-01T08:00:00", ms_played="-4"),  # naive beats out of range
        row(3, event_id="x y", ms_played="-4"),  # bad id beats out of range
        row(4, context="?!", track_id="t999"),  # bad context beats unknown track
        row(5, track_id="t999", ts="2030-01-01T00:00:00Z"),  # unknown track beats future
        row(6, ms_played="abc", skipped="maybe"),  # column order among bad types
    ]
    _, _, quarantine = ingest(tmp_path, write_events(tmp_path / "e.csv", rows, "csv"), catalog)
    assert reasons_by_row(quarantine) == {
        0: "missing_column_value:user_id",
        1: "bad_type:ts",
        2: "naive_timestamp",
        3: "bad_id:event_id",
        4: "bad_context",
        5: "unknown_track_id",
        6: "bad_type:ms_played",
    }


def test_every_reason_code_can_occur(tmp_path: Path, catalog: Path) -> None:
    rows: list[Row] = [row(0), "{not json", json.dumps({**row(1), "extra": 1})]
    rows += [row(10 + i, **bad) for i, (bad, _) in enumerate(SINGLE_RULES)]
    rows.append(row(0, skipped="true"))  # duplicate of the first row
    report, _, _ = ingest(tmp_path, write_events(tmp_path / "e.jsonl", rows, "jsonl"), catalog)
    assert set(report.reasons) == set(QUARANTINE_REASONS)
    assert list(report.reasons) == [r for r in QUARANTINE_REASONS if r in report.reasons]  # precedence order


def test_csv_malformed_lines_are_quarantined_with_their_line(tmp_path: Path, catalog: Path) -> None:
    src = tmp_path / "e.csv"
    header = ",".join(EVENT_COLUMNS)
    good = [",".join(row(i).values()) for i in range(4)]
    # Row 1 has a field too many, row 3 too few; the file ends in a truncated line without newline.
    text = "\n".join([header, good[0], good[1] + ",extra", good[2], "e9,u1,t1", good[3], "e7,u1,t1,2026-10-01T08:0"])
    src.write_text(text)
    report, out, quarantine = ingest(tmp_path, src, catalog, chunk_rows=2)
    assert report.input_rows == 6
    assert out["event_id"].to_list() == ["e0", "e2", "e3"]
    assert reasons_by_row(quarantine) == {1: "malformed_row", 3: "malformed_row", 5: "malformed_row"}
    assert quarantine.filter(pl.col("_source_row") == 5)["_raw"][0] == "e7,u1,t1,2026-10-01T08:0"
    assert quarantine["_source_row"].is_sorted()


def test_csv_quotes_crlf_bom_and_one_record_per_line(tmp_path: Path, catalog: Path) -> None:
    src = tmp_path / "e.csv"
    header = ",".join(f'"{c}"' for c in EVENT_COLUMNS)
    lines = [
        header,
        '"e0","u1","t1","2026-10-01T08:00:00Z","1000","radio","false"',
        '"e1","u1","t1","2026-10-01T08:00:00Z","1000","radio","fal\nse"',  # a quoted line break: two lines
        '"e2","u1","t1","2026-10-01T08:00:00Z","1000","radio","true"',
        '"e3","u""1","t1","2026-10-01T08:00:00Z","1000","radio","true"',  # escaped quote, kept as read
    ]
    src.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    report, good, quarantine = ingest(tmp_path, src, catalog)
    assert good["event_id"].to_list() == ["e0", "e2"]
    assert reasons_by_row(quarantine) == {1: "bad_type:skipped", 2: "malformed_row", 4: "bad_id:user_id"}
    assert quarantine.filter(pl.col("_source_row") == 4)["user_id"][0] == 'u"1'
    assert report.source_format == "csv"


def test_a_stray_quote_spoils_only_its_own_line(tmp_path: Path, catalog: Path) -> None:
    rows: list[Row] = [row(i) for i in range(2_000)]
    rows[10] = ",".join(row(10, context='"-').values())
    rows[11] = ",".join(row(11, user_id='"u1,x').values())
    report, _, quarantine = ingest(tmp_path, write_events(tmp_path / "e.csv", rows, "csv"), catalog, chunk_rows=64)
    assert report.good_rows == 1_998
    assert reasons_by_row(quarantine) == {10: "bad_context", 11: "malformed_row"}


def test_header_only_csv_is_an_empty_input(tmp_path: Path, catalog: Path) -> None:
    src = tmp_path / "e.csv"
    src.write_text(",".join(EVENT_COLUMNS) + "\n")
    report, good, quarantine = ingest(tmp_path, src, catalog)
    assert (report.input_rows, good.height, quarantine.height) == (0, 0, 0)


def test_jsonl_malformed_lines_and_blank_lines(tmp_path: Path, catalog: Path) -> None:
    rows: list[Row] = [row(0), "", "{not json", "[1, 2]", "42", json.dumps({**row(5), "extra": 1}), row(6)]
    report, good, quarantine = ingest(tmp_path, write_events(tmp_path / "e.jsonl", rows, "jsonl"), catalog)
    assert report.input_rows == 6  # the blank line is no row, but keeps its number
    assert good["event_id"].to_list() == ["e0", "e6"]
    assert reasons_by_row(quarantine) == {
        2: "malformed_json",
        3: "malformed_json",
        4: "malformed_json",
        5: "malformed_row",
    }
    assert quarantine.filter(pl.col("_source_row") == 2)["_raw"][0] == "{not json"
    assert quarantine.filter(pl.col("_source_row") == 5)["event_id"][0] == "e5"


def test_jsonl_accepts_numbers_as_text_and_missing_keys_are_missing_values(tmp_path: Path, catalog: Path) -> None:
    no_skip = {k: v for k, v in row(1).items() if k != "skipped"}
    rows: list[Row] = [
        json.dumps(row(0)),
        json.dumps(no_skip),
        json.dumps({**row(2), "ms_played": 10, "skipped": True}),
    ]
    _, good, quarantine = ingest(tmp_path, write_events(tmp_path / "e.jsonl", rows, "jsonl"), catalog)
    assert good["event_id"].to_list() == ["e0", "e2"]
    assert reasons_by_row(quarantine) == {1: "missing_column_value:skipped"}


def test_parquet_types_are_checked_and_converted(tmp_path: Path, catalog: Path) -> None:
    paris = ZoneInfo("Europe/Paris")
    ts = [datetime(2026, 10, 1, 10, 0, tzinfo=paris), datetime(2026, 10, 1, 11, 0, tzinfo=paris)]
    base = {
        "event_id": pa.array(["e0", "e1"]).dictionary_encode(),
        "user_id": pa.array(["u1", "u2"]),
        "track_id": pa.array(["t1", "t2"]),
        "ms_played": pa.array([5, 6], pa.int32()),
        "context": pa.array(["radio", "album"]),
        "skipped": pa.array([True, None]),
    }
    zoned = pa.table({**base, "ts": pa.array(ts, pa.timestamp("ms", tz="Europe/Paris"))})
    pq.write_table(zoned, tmp_path / "zoned.parquet")
    _, good, quarantine = ingest(tmp_path, tmp_path / "zoned.parquet", catalog)
    assert good["ts"].to_list() == [datetime(2026, 10, 1, 8, 0, tzinfo=UTC)]
    assert reasons_by_row(quarantine) == {1: "missing_column_value:skipped"}
    naive = pa.table({**base, "ts": pa.array([t.replace(tzinfo=None) for t in ts], pa.timestamp("us"))})
    pq.write_table(naive, tmp_path / "naive.parquet")
    report, _, _ = ingest(tmp_path, tmp_path / "naive.parquet", catalog)
    assert report.reasons == {"missing_column_value:skipped": 1, "naive_timestamp": 1}
    nested = pa.table({**base, "ts": pa.array([[1], [2]])})
    pq.write_table(nested, tmp_path / "nested.parquet")
    with pytest.raises(DataFormatError, match="column ts has unsupported type"):
        ingest(tmp_path, tmp_path / "nested.parquet", catalog)


# ------------------------------------------------------------------------------------- duplicates


@pytest.mark.parametrize("buckets", [1, 7])
def test_duplicates_across_chunks_keep_the_first_occurrence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, buckets: int
) -> None:
    monkeypatch.setattr(etl_ingest, "_bucket_count", lambda *_: buckets)
    ds = generate_dataset(
        tmp_path / "d", seed=4, users=300, tracks=500, events=6_000, start=NOW - timedelta(days=10), days=7
    )
    events = pq.read_table(ds.events_path)
    ids = events.column("event_id").to_pylist()
    # Copies of rows 5 (twice), 2_500 and 5_999 at the end, with other values; and one inside a chunk.
    copies = events.take([5, 2_500, 5_999, 5, 10]).set_column(
        4, EVENTS_SCHEMA.field("ms_played"), pa.array([1, 2, 3, 4, 5], pa.int64())
    )
    source = pa.concat_tables([events, copies])
    pq.write_table(source, tmp_path / "dups.parquet", row_group_size=1_000)
    report, good, quarantine = ingest(tmp_path, tmp_path / "dups.parquet", ds.tracks_path, chunk_rows=250)
    assert report.reasons == {"duplicate_event_id": 5}
    assert report.duplicate_event_ids == 4
    assert report.chunks == 25
    assert good["event_id"].to_list() == ids  # first occurrences, in input order
    assert good.equals(pl.from_arrow(events))  # type: ignore[arg-type]
    assert sorted(quarantine["_source_row"]) == [6_000, 6_001, 6_002, 6_003, 6_004]
    assert quarantine["ms_played"].to_list() == ["1", "2", "3", "4", "5"]  # the duplicates' own values


def test_a_duplicate_of_a_bad_row_is_not_a_duplicate(tmp_path: Path, catalog: Path) -> None:
    rows = [row(0, context="..."), row(0), row(0), row(1)]
    _, good, quarantine = ingest(tmp_path, write_events(tmp_path / "e.csv", rows, "csv"), catalog, chunk_rows=1)
    assert good["event_id"].to_list() == ["e0", "e1"]
    assert reasons_by_row(quarantine) == {0: "bad_context", 2: "duplicate_event_id"}


def test_no_good_row_is_lost(tmp_path: Path) -> None:
    ds = generate_dataset(
        tmp_path / "d", seed=8, users=300, tracks=500, events=5_000, start=NOW - timedelta(days=9), days=7, fmt="csv"
    )
    lines = ds.events_path.read_text().splitlines()
    broken = {17: "future", 1_000: "context", 3_333: "short"}
    ids_broken = set()
    for i, kind in broken.items():
        fields = lines[i + 1].split(",")
        ids_broken.add(fields[0])
        if kind == "future":
            fields[3] = "2031-01-01T00:00:00.000Z"
        elif kind == "context":
            fields[5] = "*"
        else:
            fields = fields[:3]
        lines[i + 1] = ",".join(fields)
    ds.events_path.write_text("\n".join(lines) + "\n")
    report, good, quarantine = ingest(tmp_path, ds.events_path, ds.tracks_path, chunk_rows=700)
    all_ids = {ln.split(",")[0] for ln in lines[1:]}
    assert set(good["event_id"]) == all_ids - ids_broken
    assert good.height == len(all_ids) - 3
    assert sorted(quarantine["_source_row"]) == sorted(broken)
    assert report.reasons == {"malformed_row": 1, "bad_context": 1, "future_timestamp": 1}


# --------------------------------------------------------------------------------- cross-format


def test_csv_jsonl_and_parquet_give_identical_good_outputs(tmp_path: Path) -> None:
    outputs = {}
    for fmt in ("parquet", "csv", "jsonl"):
        ds = generate_dataset(
            tmp_path / fmt,
            seed=21,
            users=400,
            tracks=600,
            events=12_000,
            start=NOW - timedelta(days=8),
            days=7,
            fmt=fmt,  # type: ignore[arg-type]
        )
        report, good, quarantine = ingest(tmp_path / f"o-{fmt}", ds.events_path, ds.tracks_path, chunk_rows=5_000)
        assert (report.good_rows, quarantine.height, report.source_format) == (12_000, 0, fmt)
        outputs[fmt] = good
    assert outputs["parquet"].equals(outputs["csv"])
    assert outputs["parquet"].equals(outputs["jsonl"])
    original = pl.read_parquet(tmp_path / "parquet" / "events.parquet")
    assert outputs["parquet"].equals(original)


# ---------------------------------------------------------------------------------- file errors


@pytest.fixture
def good_csv(tmp_path: Path) -> Path:
    return write_events(tmp_path / "events.csv", [row(0), row(1)], "csv")


def test_empty_file_is_an_error(tmp_path: Path, catalog: Path) -> None:
    (tmp_path / "e.csv").write_bytes(b"")
    with pytest.raises(DataFormatError, match=r"empty file \(0 bytes\)"):
        ingest(tmp_path, tmp_path / "e.csv", catalog)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_missing_columns_are_named_unknown_ones_placed(tmp_path: Path, catalog: Path, fmt: str) -> None:
    """Missing columns by name (from the contract), unknown ones by position: never the file's own text."""
    rows = [{**{k: v for k, v in row(0).items() if k not in ("ts", "skipped")}, "when": "x"}]
    if fmt == "csv":
        (tmp_path / "e.csv").write_text("event_id,user_id,track_id,ms_played,context,when\ne0,u1,t1,1,radio,x\n")
    elif fmt == "jsonl":
        (tmp_path / "e.jsonl").write_text(json.dumps(rows[0]) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "e.parquet")
    with pytest.raises(DataFormatError) as err:
        ingest(tmp_path, tmp_path / f"e.{fmt}", catalog)
    where = {"csv": "header line 1", "jsonl": "the object on line 1", "parquet": "the schema"}[fmt]
    assert err.value.problem == f"missing columns: ts, skipped; unknown columns at positions 6 of {where}"
    assert err.value.uri == str(tmp_path / f"e.{fmt}")


def test_not_utf8_csv_names_the_byte_offset(tmp_path: Path, catalog: Path) -> None:
    src = write_events(tmp_path / "e.csv", [row(0), row(1)], "csv")
    data = src.read_bytes()
    offset = data.index(b"u1", data.index(b"\n") + 1)
    src.write_bytes(data[:offset] + b"\xe9" + data[offset + 1 :])
    with pytest.raises(DataFormatError, match=rf"not valid UTF-8 text: byte 0xe9 at byte offset {offset}$"):
        ingest(tmp_path, src, catalog, source_uri="gs://bucket/e.csv")


def test_utf16_is_refused(tmp_path: Path, catalog: Path) -> None:
    src = tmp_path / "e.csv"
    src.write_text(",".join(EVENT_COLUMNS) + "\n", encoding="utf-16")
    with pytest.raises(DataFormatError, match="UTF-16"):
        ingest(tmp_path, src, catalog)


def test_truncated_parquet_is_an_error(tmp_path: Path, catalog: Path) -> None:
    full = write_events(tmp_path / "full.parquet", [row(0)], "parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(full[: len(full) // 2])
    with pytest.raises(DataFormatError, match="truncated Parquet file: footer missing"):
        ingest(tmp_path, tmp_path / "cut.parquet", catalog)


def test_parquet_named_csv_is_detected_by_its_magic(tmp_path: Path, catalog: Path) -> None:
    src = write_events(tmp_path / "events.csv", [row(0), row(1)], "parquet")
    report, good, _ = ingest(tmp_path, src, catalog)
    assert report.source_format == "parquet"
    assert good.height == 2
    with pytest.raises(DataFormatError, match="is a Parquet file \\(PAR1 magic\\), not CSV"):
        ingest(tmp_path, src, catalog, fmt="csv")


@pytest.mark.parametrize(
    ("content", "fmt", "problem"),
    [
        (b"event_id,user_id\n", "parquet", "not a Parquet file"),
        (gzip.compress(b"event_id\n", mtime=0), "auto", "gzip-compressed"),
        (b'[{"event_id": "e0"}]\n', "auto", "a JSON array document, not JSON Lines"),
        (b'{"event_id": "e0"}\n', "csv", "looks like JSON Lines"),
    ],
)
def test_files_that_are_not_what_they_claim(
    tmp_path: Path, catalog: Path, content: bytes, fmt: str, problem: str
) -> None:
    (tmp_path / "e.json").write_bytes(content)
    with pytest.raises(DataFormatError, match=problem):
        ingest(tmp_path, tmp_path / "e.json", catalog, fmt=fmt)


def test_detect_format_reads_content_not_names(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text('  {"event_id": 1}\n')
    (tmp_path / "b.jsonl").write_text("event_id\n")
    (tmp_path / "c.data").write_text("event_id\n")
    assert detect_format(tmp_path / "a.txt") == "jsonl"
    assert detect_format(tmp_path / "b.jsonl") == "jsonl"
    assert detect_format(tmp_path / "c.data") == "csv"
    with pytest.raises(DataFormatError, match="file not found"):
        detect_format(tmp_path / "nope.csv")


# ------------------------------------------------------------------------------------- catalog


def _write_catalog(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda rs: rs.append(dict(rs[0])), "duplicate track_id 't1'"),
        (lambda rs: rs[2].update(genre=" - / "), "first at row 2: genre has no letter or digit .*: ' - / '"),
        (lambda rs: rs[2].update(genre="x" * 129), "first at row 2: genre longer than 128 characters: 'xxx"),
        (lambda rs: rs[1].update(duration_ms=0), "duration_ms outside"),
        (lambda rs: rs[1].update(release_year=1850), "release_year outside"),
        (lambda rs: rs[3].update(artist_id="a b"), "artist_id breaks the id rule"),
        (lambda rs: rs[0].update(track_id=None), "missing value in track_id"),
        (lambda rs: [r.pop("explicit") for r in rs], "missing columns: explicit"),
        (lambda rs: rs.clear(), "catalog has no tracks"),
    ],
)
def test_a_bad_catalog_is_an_error(tmp_path: Path, good_csv: Path, change: Any, problem: str) -> None:
    rows = _catalog_rows()
    change(rows)
    if rows:
        cat = _write_catalog(tmp_path / "tracks.parquet", rows)
    else:
        cat = tmp_path / "tracks.csv"
        cat.write_text(",".join(TRACK_COLUMNS) + "\n")
    with pytest.raises(DataFormatError, match=problem.replace("(", r"\(")):
        ingest(tmp_path, good_csv, cat)


def test_any_genre_with_a_letter_or_digit_is_a_genre(tmp_path: Path, good_csv: Path) -> None:
    """Genres are an open vocabulary: new names, spelling variants and non-ASCII letters all pass, as given."""
    rows = _catalog_rows()
    genres = ["Polka", "hip hop", "Hip-Hop", "Música Popular Brasileira", "8-bit", "ジャズ"][: len(rows)]
    for r, g in zip(rows, genres, strict=False):
        r["genre"] = g
    cat = _write_catalog(tmp_path / "tracks.parquet", rows)
    assert read_catalog(cat, now=NOW).column("genre").to_pylist()[: len(genres)] == genres


def test_read_catalog_returns_the_contract_schema(catalog: Path) -> None:
    table = read_catalog(catalog, now=NOW)
    assert table.column_names == list(TRACK_COLUMNS)
    assert table.num_rows == len(TRACKS)
    assert table.column("explicit").to_pylist() == [False] * len(TRACKS)


# ------------------------------------------------------------------------------------ atomicity


def _listing(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()}


def test_a_failure_midway_leaves_no_output(tmp_path: Path, catalog: Path) -> None:
    rows = [json.dumps(row(i)) for i in range(100)]
    src = tmp_path / "e.jsonl"
    src.write_bytes("\n".join(rows).encode() + b'\n{"event_id": "\xff"}\n')
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataFormatError, match="not valid UTF-8 text: byte 0xff at byte offset"):
        ingest_events(src, catalog, out / "good.parquet", out / "q.parquet", now=NOW, chunk_rows=10)
    assert _listing(out) == set()  # no output, no temp file, no spill


def test_a_crash_midway_keeps_the_previous_outputs(
    tmp_path: Path, catalog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_events(tmp_path / "e.csv", [row(i) for i in range(50)], "csv")
    out = tmp_path / "out"
    out.mkdir()
    (out / "good.parquet").write_bytes(b"old good")
    (out / "q.parquet").write_bytes(b"old quarantine")
    calls = []
    real = etl_ingest._validate_chunk

    def failing(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(*args)

    monkeypatch.setattr(etl_ingest, "_validate_chunk", failing)
    with pytest.raises(RuntimeError, match="killed"):
        ingest_events(src, catalog, out / "good.parquet", out / "q.parquet", now=NOW, chunk_rows=10)
    assert (out / "good.parquet").read_bytes() == b"old good"
    assert (out / "q.parquet").read_bytes() == b"old quarantine"
    assert _listing(out) == {"good.parquet", "q.parquet"}


# ------------------------------------------------------------------------------- inputs & report


def test_bad_arguments_are_invalid_input(tmp_path: Path, good_csv: Path, catalog: Path) -> None:
    with pytest.raises(InvalidInputError) as err:
        ingest_events(
            good_csv,
            catalog,
            tmp_path / "a.parquet",
            tmp_path / "a.parquet",
            now=NOW.replace(tzinfo=None),
            chunk_rows=0,
        )
    assert set(err.value.fields) == {"now", "chunk_rows", "quarantine_out"}


def test_report_is_frozen_and_strict(tmp_path: Path, good_csv: Path, catalog: Path) -> None:
    report, _, _ = ingest(tmp_path, good_csv, catalog)
    assert report.contract_version
    assert report.catalog_tracks == len(TRACKS)
    with pytest.raises(Exception):
        report.good_rows = 5  # type: ignore[misc]
    with pytest.raises(Exception):
        IngestReport(**report.model_dump(), surprise=1)


def test_quarantine_schema_follows_the_contract() -> None:
    assert QUARANTINE_SCHEMA.names == [*EVENT_COLUMNS, *QUARANTINE_EXTRA_COLUMNS]


# ------------------------------------------------------------------------------------- property

CORRUPTIONS: dict[str, tuple[dict[str, str], str]] = {
    "missing_user": ({"user_id": ""}, "missing_column_value:user_id"),
    "bad_ts": ({"ts": "01/10/2026"}, "bad_type:ts"),
    "bad_ms": ({"ms_played": "1e3"}, "bad_type:ms_played"),
    "bad_skip": ({"skipped": "yes"}, "bad_type:skipped"),
    "naive": ({"ts": "2026-10-02T00:00:00"}, "naive_timestamp"),
    "bad_id": ({"user_id": "ü"}, "bad_id:user_id"),
    "negative": ({"ms_played": "-7"}, "out_of_range:ms_played"),
    "context": ({"context": "-"}, "bad_context"),
    "track": ({"track_id": "t0"}, "unknown_track_id"),
    "future": ({"ts": "2027-01-01T00:00:00+00:00"}, "future_timestamp"),
}


@st.composite
def event_files(draw: st.DrawFn) -> tuple[str, list[tuple[int, str | None]], int]:
    fmt = draw(st.sampled_from(["csv", "jsonl", "parquet"]))
    kinds = [None, *CORRUPTIONS] + ([] if fmt == "parquet" else ["malformed"])
    rows = draw(st.lists(st.tuples(st.integers(0, 12), st.sampled_from(kinds)), max_size=40))
    return fmt, rows, draw(st.integers(1, 16))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=event_files())
def test_property_rows_are_partitioned_exactly(
    catalog: Path, case: tuple[str, list[tuple[int, str | None]], int]
) -> None:
    fmt, spec, chunk_rows = case
    rows: list[Row] = []
    expected: dict[int, str | None] = {}
    seen_good: set[int] = set()
    for i, (eid, kind) in enumerate(spec):
        if kind == "malformed":
            rows.append("{broken" if fmt == "jsonl" else "a,b")
            expected[i] = "malformed_json" if fmt == "jsonl" else "malformed_row"
        elif kind is None:
            rows.append(row(eid, ts=f"2026-10-01T08:00:{i % 60:02d}Z", track_id=TRACKS[i % len(TRACKS)]))
            expected[i] = "duplicate_event_id" if eid in seen_good else None
            seen_good.add(eid)
        else:
            over, reason = CORRUPTIONS[kind]
            rows.append(row(eid, **over))
            expected[i] = reason
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if not rows and fmt == "jsonl":
            return  # an empty JSONL file is 0 bytes: a format error, tested elsewhere
        src = write_events(tmp_path / f"e.{fmt}", rows, fmt) if rows or fmt != "parquet" else None
        if src is None:
            pq.write_table(pa.table({c: pa.array([], pa.string()) for c in EVENT_COLUMNS}), tmp_path / "e.parquet")
            src = tmp_path / "e.parquet"
        report, good, quarantine = ingest(tmp_path, src, catalog, chunk_rows=chunk_rows)
    assert report.input_rows == len(spec)
    good_rows = {i for i, r in expected.items() if r is None}
    assert report.good_rows == len(good_rows)
    assert good["event_id"].n_unique() == good.height
    assert reasons_by_row(quarantine) == {i: r for i, r in expected.items() if r is not None}
    assert sorted([*good_rows, *quarantine["_source_row"]]) == list(range(len(spec)))


# --------------------------------------------------------------------------------------- memory

_MEASURE = """
import sys
from datetime import datetime, timezone
from pathlib import Path
from aitasks.data_processing.etl import ingest_events

def peak_kib():
    # VmHWM is the peak RSS of this process image. ru_maxrss would do on a fresh process, but Linux carries
    # it over fork + exec, so under pytest it would report the (larger) parent's peak.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

src, cat, out = map(Path, sys.argv[1:4])
before = peak_kib()
report = ingest_events(src, cat, out / "g.parquet", out / "q.parquet", now=datetime(2027, 1, 1, tzinfo=timezone.utc),
                       chunk_rows=8192)
print(before, peak_kib(), report.input_rows)
"""


def _peak_increment_kib(src: Path, cat: Path, out: Path) -> tuple[int, int]:
    out.mkdir()
    res = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(src), str(cat), str(out)], capture_output=True, text=True, check=True
    )
    before, after, rows = map(int, res.stdout.split())
    return after - before, rows


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_memory_stays_flat_when_the_input_grows_tenfold(tmp_path: Path, fmt: str) -> None:
    increments = []
    for n in (50_000, 500_000):
        ds = generate_dataset(
            tmp_path / f"d{n}",
            seed=3,
            users=3_000,
            tracks=4_000,
            events=n,
            start=NOW - timedelta(days=20),
            days=14,
            fmt=fmt,
        )  # type: ignore[arg-type]
        inc, rows = _peak_increment_kib(ds.events_path, ds.tracks_path, tmp_path / f"o{n}")
        assert rows == n
        increments.append(inc)
    small, large = increments
    print(f"peak RSS increment {fmt}: {small / 1024:.0f} MiB for 50k rows, {large / 1024:.0f} MiB for 500k rows")
    assert large < 2 * small, increments


GARBAGE = st.text(alphabet=st.sampled_from([*'ab1_-,;"{}[] \n\r\t:é0Zz+T', "\x00", "😀"]), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(["csv", "jsonl", "parquet"]),
    rows=st.lists(st.dictionaries(st.sampled_from(EVENT_COLUMNS), GARBAGE), min_size=1, max_size=25),
    chunk_rows=st.integers(1, 8),
)
def test_property_garbage_never_crashes_and_reconciles(
    catalog: Path, fmt: str, rows: list[dict[str, str]], chunk_rows: int
) -> None:
    """Arbitrary text in any column (commas, quotes, newlines, braces...) ends up good or quarantined,
    never as a crash; in CSV it may even change the number of records, but counts still reconcile."""
    full = [row(i, **garbage) for i, garbage in enumerate(rows)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if fmt == "jsonl":
            src = tmp_path / "e.jsonl"
            src.write_text("".join(json.dumps(r) + "\n" for r in full))
        else:
            src = write_events(tmp_path / f"e.{fmt}", full, fmt)
        report, good, quarantine = ingest(tmp_path, src, catalog, chunk_rows=chunk_rows)
    positions = [*quarantine["_source_row"]]
    assert len(positions) == len(set(positions))
    if fmt != "csv":
        assert report.input_rows == len(full)
        assert all(0 <= p < len(full) for p in positions)
    assert good["event_id"].n_unique() == good.height
    assert good["event_id"].str.contains(r"^[A-Za-z0-9_-]{1,64}$").all()
    # Contexts are an open vocabulary: a letter or digit, at most 64 characters (data contract 2.0.0).
    assert good["context"].str.contains(r"[A-Za-z0-9]").all() and (good["context"].str.len_chars() <= 64).all()
    assert good["ms_played"].is_between(0, MAX_MS_PLAYED).all()
    assert (good["ts"] <= NOW + timedelta(minutes=5)).all()


def test_generated_dirty_rows_are_quarantined_and_no_good_row_is_lost(tmp_path: Path) -> None:
    """The generator's dirty rows (one defect each) land in quarantine by reason; the good rows are
    exactly those of the same seed without dirty rows."""
    from datetime import UTC, datetime

    import polars as pl

    from aitasks.data_processing.generator import DIRTY_KINDS, generate_dataset

    start = datetime(2026, 10, 1, tzinfo=UTC)
    clean = generate_dataset(tmp_path / "clean", seed=5, users=80, tracks=200, events=3000, start=start, days=7)
    dirty = generate_dataset(
        tmp_path / "dirty", seed=5, users=80, tracks=200, events=3000, start=start, days=7, dirty_rows=120
    )
    assert dirty.events == 3120
    now = datetime(2026, 10, 8, tzinfo=UTC)
    rep = ingest_events(dirty.events_path, dirty.tracks_path, tmp_path / "g.parquet", tmp_path / "q.parquet", now=now)
    assert rep.good_rows == 3000 and rep.quarantined_rows == 120
    assert rep.reasons == {reason: 20 for _, reason in DIRTY_KINDS}
    good = pl.read_parquet(tmp_path / "g.parquet").sort("event_id")
    assert good.equals(pl.read_parquet(clean.events_path).sort("event_id"))
