"""Catalogs made elsewhere: names that are no track ids, shared stems, manifests, hi-res and voice rates,
MP3s from a standard encoder, cut Vorbis and MP3 streams, tag-only files (issue 13, finding 8)."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from aitasks.audio_analysis import tasks as T
from aitasks.audio_analysis.analyze import AnalysisConfig, analyze_entries, quarantine_reasons, write_shard
from aitasks.audio_analysis.catalog import (
    TRACK_ID_RE,
    key_track_id,
    list_catalog,
    list_manifest,
    manifest_format,
    parse_manifest,
    track_id_for,
)
from aitasks.audio_analysis.decode import AudioDecodeError, DecodeConfig, decode_file
from aitasks.audio_analysis.streams import MAX_ENCODER_GAP, scan_mp3, scan_ogg
from aitasks.audio_analysis.tasks.analysis import AnalyzeAudioParams
from aitasks.runtime.errors import DataFormatError
from tests.audio_analysis import crafted
from tests.conftest import CapturedRuntime

# ------------------------------------------------------------------------------------ track ids


def test_names_that_are_no_track_ids_get_stable_normalised_ids_and_keep_their_name(tmp_path: Path) -> None:
    cat = tmp_path / "cat"
    names = ["Café del Mar (1999).flac", "song.v2.wav", "曲.wav", "t_000001.wav"]
    for name in names:
        crafted.write(cat / "in" / name, crafted.music(1, seed=3))
    listing = list_catalog(str(cat))
    assert listing.refused == []
    ids = {e.key: e.track_id for e in listing.entries}
    assert ids["in/t_000001.wav"] == "t_000001"  # a valid stem stays the id (joins the recommender)
    assert ids["in/Café del Mar (1999).flac"].startswith("Cafe_del_Mar_1999-")
    assert ids["in/song.v2.wav"].startswith("song_v2-")
    assert ids["in/曲.wav"].startswith("track-")
    assert all(TRACK_ID_RE.match(t) for t in ids.values())
    # Stable across runs: another file arriving changes no existing id.
    crafted.write(cat / "later" / "Café del Mar (1999).flac", crafted.music(1, seed=4))
    again = {e.key: e.track_id for e in list_catalog(str(cat)).entries}
    assert {k: again[k] for k in ids} == ids
    assert again["later/Café del Mar (1999).flac"] != ids["in/Café del Mar (1999).flac"]


def test_a_name_refused_for_its_characters_before_now_reports_its_real_problem(tmp_path: Path) -> None:
    """A 6-channel file named ``six channels.wav`` was refused as ``bad_track_id``; its 6 channels now show."""
    cat = tmp_path / "cat"
    crafted.write(cat / "six channels.wav", np.zeros((44100, 6), np.float32))
    crafted.write(cat / "ok.wav", crafted.music(11, seed=1))
    listing = list_catalog(str(cat))
    assert listing.refused == []
    results = analyze_entries(listing.entries, AnalysisConfig(), workers=0, timeout_s=60)
    write_shard(results, tmp_path, AnalysisConfig(), refusals=listing.refused)
    quarantine = pq.read_table(tmp_path / "quarantine.parquet").to_pylist()
    assert [(q["key"], q["reason"]) for q in quarantine] == [("six channels.wav", "too_many_channels")]
    assert quarantine[0]["track_id"] == key_track_id("six channels.wav")
    features = pq.read_table(tmp_path / "features.parquet", columns=["track_id", "key"]).to_pylist()
    assert features == [{"track_id": "ok", "key": "ok.wav"}]  # the original name travels with the id


def test_same_stem_in_two_folders_gets_two_ids_by_key_and_a_named_refusal_by_stem(tmp_path: Path) -> None:
    cat = tmp_path / "cat"
    for album in ("Album A", "Album B"):
        crafted.write(cat / album / "01.wav", crafted.music(1, seed=5))
    by_key = list_catalog(str(cat), track_ids="key")
    assert by_key.refused == [] and len({e.track_id for e in by_key.entries}) == 2
    assert [e.track_id for e in by_key.entries] == [key_track_id("Album A/01.wav"), key_track_id("Album B/01.wav")]
    assert by_key.entries == list_catalog(str(cat), track_ids="key").entries  # same ids on every run

    by_stem = list_catalog(str(cat))
    assert by_stem.entries == []
    assert {r.reason for r in by_stem.refused} == {"duplicate_track_id"}
    detail = by_stem.refused[0].detail
    assert "'Album A/01.wav'" in detail and "'Album B/01.wav'" in detail and "track_ids='key'" in detail


@given(st.text(min_size=1, max_size=200))
@settings(max_examples=300, deadline=None)
def test_key_track_ids_are_valid_deterministic_and_unicode_form_independent(name: str) -> None:
    key = f"dir/{name}.mp3"
    tid = key_track_id(key)
    assert TRACK_ID_RE.match(tid), tid
    assert tid == key_track_id(key)
    assert tid == key_track_id(unicodedata.normalize("NFD", key)) == key_track_id(unicodedata.normalize("NFC", key))
    assert tid != key_track_id(f"other/{name}.mp3")
    assert TRACK_ID_RE.match(track_id_for(key, "stem"))


# ----------------------------------------------------------------------------------- manifests


@pytest.fixture
def small_catalog(tmp_path: Path) -> Path:
    cat = tmp_path / "cat"
    for key in ("a/x.wav", "b/x.wav", "c/Song One.flac", "d/y.wav"):
        crafted.write(cat / key, crafted.music(1, seed=6))
    return cat


def test_every_manifest_row_gets_an_outcome_with_a_reason(small_catalog: Path) -> None:
    manifest = "\n".join(
        ["# uploads", "a/x.wav", "../../etc/passwd", "notes.txt", "gone.wav", "a/x.wav", "c/Song One.flac", "d/y.wav"]
    )
    listing = list_manifest(str(small_catalog), manifest, limit=2)
    rows = {(r.line, r.key): (r.status, r.reason) for r in listing.manifest_rows}
    assert rows == {
        (2, "a/x.wav"): ("listed", ""),
        (3, "../../etc/passwd"): ("refused", "unsafe_path"),
        (4, "notes.txt"): ("refused", "not_audio"),
        (5, "gone.wav"): ("refused", "not_found"),
        (6, "a/x.wav"): ("repeated", "repeated_key"),
        (7, "c/Song One.flac"): ("listed", ""),
        (8, "d/y.wav"): ("over_limit", "limit"),
    }
    assert all(r.detail for r in listing.manifest_rows if r.status != "listed")
    assert [e.key for e in listing.entries] == ["a/x.wav", "c/Song One.flac"]
    assert {r.reason for r in listing.refused} == {"unsafe_path", "not_audio", "not_found"}
    assert set(quarantine_reasons()) >= {"not_audio", "missing_key", "duplicate_key", "no_audio"}


def test_a_csv_manifest_names_track_ids_and_bad_rows_get_reasons(small_catalog: Path) -> None:
    manifest = (
        "path,track_id,genre\n"
        "a/x.wav,t_000101,rock\n"
        "b/x.wav,,rock\n"  # no id given: derived from the key
        "c/Song One.flac,not an id,pop\n"
        "d/y.wav,t_000101,jazz\n"  # the same id as line 2
        ",t_000104,jazz\n"
        "a/x.wav,t_999999,rock\n"  # the same path with another id
    )
    listing = list_manifest(str(small_catalog), manifest, fmt=manifest_format("uploads.csv"))
    rows = {r.line: (r.status, r.reason, r.track_id) for r in listing.manifest_rows}
    assert rows == {
        2: ("refused", "duplicate_track_id", ""),
        3: ("listed", "", "x"),
        4: ("refused", "bad_track_id", ""),
        5: ("refused", "duplicate_track_id", ""),
        6: ("refused", "missing_key", ""),
        7: ("refused", "duplicate_key", ""),
    }
    fixed = manifest.replace("d/y.wav,t_000101", "d/y.wav,t_000102").replace("not an id", "t_000103")
    listing = list_manifest(str(small_catalog), fixed, fmt="csv")
    assert {e.key: e.track_id for e in listing.entries} == {
        "a/x.wav": "t_000101",
        "b/x.wav": "x",
        "c/Song One.flac": "t_000103",
        "d/y.wav": "t_000102",
    }


def test_jsonl_and_tsv_manifests_read_like_csv(small_catalog: Path) -> None:
    jsonl = '{"path": "a/x.wav", "track_id": "t1"}\n\n{"key": "d/y.wav"}\n'
    assert [(e.key, e.track_id) for e in list_manifest(str(small_catalog), jsonl, fmt="jsonl").entries] == [
        ("a/x.wav", "t1"),
        ("d/y.wav", "y"),
    ]
    tsv = "track_id\tpath\nt2\tc/Song One.flac\n"
    assert [(e.key, e.track_id) for e in list_manifest(str(small_catalog), tsv, fmt="tsv").entries] == [
        ("c/Song One.flac", "t2")
    ]


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("uploads.txt", b"path,genre\na/x.wav,rock\nd/y.wav,jazz\n", "looks like a CSV"),
        ("uploads.txt", b'{"path": "a/x.wav"}\n', "looks like JSON"),
        ("uploads.csv", b"file,genre\na/x.wav,rock\n", "no 'path' column"),
        ("uploads.csv", b"path,key\na/x.wav,a/x.wav\n", "both a 'path' and a 'key'"),
        ("uploads.jsonl", b"a/x.wav\n", "not JSON"),
        ("uploads.jsonl", b'["a/x.wav"]\n', "not an object"),
        ("uploads.jsonl", b'{"path": 3}\n', "must be strings"),
        ("uploads.txt", b"PAR1\x00\x00binary", "Parquet"),
        ("uploads.txt", "a/é.wav\n".encode("latin-1"), "not UTF-8"),
        ("uploads.json", b'["a/x.wav"]', "cannot be .json"),
    ],
)
def test_a_manifest_in_the_wrong_format_is_a_clear_error(
    small_catalog: Path, name: str, data: bytes, says: str
) -> None:
    with pytest.raises(DataFormatError, match=says) as info:
        list_manifest(str(small_catalog), data, fmt=manifest_format(name), name=name)
    assert name in str(info.value) and "'path'" in str(info.value)  # names the file and the expected format


def test_the_list_task_reads_a_csv_manifest_and_refuses_a_misnamed_one(
    small_catalog: Path, captured: CapturedRuntime
) -> None:
    good = captured.root / "tonight.csv"
    good.write_text("path,track_id\na/x.wav,t_000001\n../../etc/passwd,\n", "utf-8-sig")  # with a BOM, as Excel writes
    res = T.list_catalog_task({"catalog_root": str(small_catalog), "manifest_uri": str(good)}, runtime=captured.rt)
    assert res.tracks == 1 and res.refused == 1 and res.refusal_reasons == {"unsafe_path": 1}
    listing = json.loads(Path(res.listing_uri).read_text("utf-8"))["listing"]
    assert [(r["line"], r["status"], r["reason"]) for r in listing["manifest_rows"]] == [
        (2, "listed", ""),
        (3, "refused", "unsafe_path"),
    ]
    assert listing["entries"][0]["track_id"] == "t_000001"
    wrong = captured.root / "tonight.txt"
    wrong.write_text("path,track_id\na/x.wav,t_000001\n")
    with pytest.raises(DataFormatError, match="looks like a CSV"):
        T.list_catalog_task({"catalog_root": str(small_catalog), "manifest_uri": str(wrong)}, runtime=captured.rt)


def test_the_list_task_can_name_tracks_by_key(small_catalog: Path, captured: CapturedRuntime) -> None:
    stem = T.list_catalog_task({"catalog_root": str(small_catalog)}, runtime=captured.rt)
    assert stem.tracks == 2 and stem.refusal_reasons == {"duplicate_track_id": 2}
    key = T.list_catalog_task({"catalog_root": str(small_catalog), "track_ids": "key"}, runtime=captured.rt)
    assert key.tracks == 4 and key.refused == 0


def test_manifest_rows_parse_with_their_line_numbers() -> None:
    items = parse_manifest('path\n"a, b.wav"\n\n"multi\nline.wav"\nc.wav\n', "csv")
    assert [(i.line, i.key) for i in items] == [(2, "a, b.wav"), (4, "multi\nline.wav"), (6, "c.wav")]


# ------------------------------------------------------------------------------- sample rates


def test_voice_and_hi_res_rates_decode_by_default_and_limits_still_hold(tmp_path: Path) -> None:
    voice = crafted.write(tmp_path / "voice.wav", crafted.music(3, seed=7, sr=8000), 8000)
    master = crafted.write(tmp_path / "master.flac", crafted.music(3, seed=8, sr=192000), 192000, subtype="PCM_24")
    assert decode_file(voice).source_rate == 8000
    assert decode_file(master).source_rate == 192000
    assert (DecodeConfig().min_source_rate, DecodeConfig().max_source_rate) == (8000, 192000)
    params = AnalyzeAudioParams(listing_uri="x")
    assert (params.min_source_rate, params.max_source_rate) == (8000, 192000)
    with pytest.raises(AudioDecodeError, match=r"192000 Hz outside \[16000, 96000\] Hz"):
        decode_file(master, DecodeConfig(min_source_rate=16000, max_source_rate=96000))


# ------------------------------------------------------------------------------------------ MP3


def test_a_cbr_mp3_without_a_length_header_decodes_despite_the_estimate(tmp_path: Path) -> None:
    """48 kbit/s CBR at 44.1 kHz without a Xing/Info frame: libsndfile's length is 0.47% off, the file is fine."""
    y = crafted.music(12, seed=9)
    path = tmp_path / "cbr48.mp3"
    path.write_bytes(crafted.mp3_bytes(y, kbps_level=0.9, info=False))
    info = sf.info(str(path))
    decoded = sf.read(str(path))[0].shape[0]
    assert abs(info.frames - decoded) / decoded > 0.004  # the estimate the 0.2% check used to refuse
    audio = decode_file(path)
    assert abs(audio.duration_s - 12.0) < 0.1
    stream = scan_mp3(path.read_bytes())
    assert stream is not None and stream.header == "" and stream.declared_frames is None
    assert 0 <= stream.samples - len(y) <= MAX_ENCODER_GAP  # the frames hold the audio plus delay/padding


@pytest.mark.parametrize("vbr", [False, True])
@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_mp3s_from_the_encoder_decode_and_cut_ones_are_truncated(tmp_path: Path, vbr: bool, rate: int) -> None:
    data = crafted.mp3_bytes(crafted.music(6, seed=10, sr=rate), rate, kbps_level=0.6, vbr=vbr)
    (tmp_path / "whole.mp3").write_bytes(data)
    assert abs(decode_file(tmp_path / "whole.mp3").duration_s - 6.0) < 0.01  # the LAME tag trims delay/padding
    starts = crafted.mp3_frame_starts(data)
    for name, cut in (("boundary", starts[len(starts) // 2]), ("inside", starts[len(starts) // 2] + 5)):
        (tmp_path / f"{name}.mp3").write_bytes(data[:cut])
        with pytest.raises(AudioDecodeError) as info:
            decode_file(tmp_path / f"{name}.mp3")
        assert info.value.reason == "truncated", (name, info.value)


def test_a_bare_mp3_cut_inside_a_frame_is_truncated_and_trailing_tags_are_not_cuts(tmp_path: Path) -> None:
    bare = crafted.mp3_bytes(crafted.music(6, seed=11), info=False)
    (tmp_path / "cut.mp3").write_bytes(bare[:-50])
    with pytest.raises(AudioDecodeError, match="ends inside frame") as info:
        decode_file(tmp_path / "cut.mp3")
    assert info.value.reason == "truncated"
    id3v1 = b"TAG" + b"Title".ljust(30, b"\x00") + b"\x00" * 94 + b"\xff"
    ape = b"APETAGEX" + (2000).to_bytes(4, "little") + (32).to_bytes(4, "little") + bytes(16)
    (tmp_path / "tagged.mp3").write_bytes(crafted.id3_only("x", 10) + bare + ape + id3v1)
    assert decode_file(tmp_path / "tagged.mp3").format == "MP3"


def test_an_mp3_with_more_frames_than_it_declares_is_a_length_mismatch(tmp_path: Path) -> None:
    """Two files glued together keep the first one's Info header: half the audio would vanish silently."""
    one = crafted.mp3_bytes(crafted.music(6, seed=12), kbps_level=0.5)
    two = crafted.mp3_bytes(crafted.music(6, seed=13), kbps_level=0.5)
    (tmp_path / "glued.mp3").write_bytes(one + two[crafted.mp3_frame_starts(two)[1] :])
    with pytest.raises(AudioDecodeError) as info:
        decode_file(tmp_path / "glued.mp3")
    assert info.value.reason == "length_mismatch" and "frames hold" in info.value.detail


# ------------------------------------------------------------------------------ Vorbis and ID3


def test_a_cut_vorbis_file_is_quarantined_whether_cut_in_a_page_or_between_pages(tmp_path: Path) -> None:
    data = crafted.ogg_bytes(crafted.music(8, seed=14))
    pages = crafted.ogg_page_starts(data)
    cuts = {"inside_page": pages[-3] + 200, "between_pages": pages[-3], "last_page_missing": pages[-1]}
    for name, cut in cuts.items():
        path = tmp_path / f"{name}.ogg"
        path.write_bytes(data[:cut])
        assert sf.read(str(path))[0].shape[0] > 0  # libsndfile decodes it without a word
        with pytest.raises(AudioDecodeError) as info:
            decode_file(path)
        assert info.value.reason == "truncated", name
        assert "end-of-stream" in info.value.detail or "ends inside page" in info.value.detail
    (tmp_path / "whole.ogg").write_bytes(data)
    assert abs(decode_file(tmp_path / "whole.ogg").duration_s - 8.0) < 0.01
    assert scan_ogg(data).unfinished == ()


def test_a_file_holding_only_an_id3_tag_says_so(tmp_path: Path) -> None:
    path = tmp_path / "upload.mp3"
    path.write_bytes(crafted.id3_only())
    with pytest.raises(AudioDecodeError) as info:
        decode_file(path)
    assert info.value.reason == "no_audio"
    assert "ID3v2 tag of" in info.value.detail and "pipe" not in str(info.value)
    flac = crafted.write(tmp_path / "x.flac", crafted.music(2, seed=15)).read_bytes()
    (tmp_path / "tagged.flac").write_bytes(crafted.id3_only() + flac)
    with pytest.raises(AudioDecodeError, match="FLAC data behind an ID3v2 tag") as info:
        decode_file(tmp_path / "tagged.flac")
    assert info.value.reason == "unknown_format"
    (tmp_path / "cut_tag.mp3").write_bytes(crafted.id3_only(padding=5000)[:1000])
    with pytest.raises(AudioDecodeError, match="ends inside its ID3v2 tag"):
        decode_file(tmp_path / "cut_tag.mp3")


@given(st.binary(max_size=3000), st.sampled_from([b"", b"\xff\xfb\x90\xc4", b"ID3\x03\x00\x00\x00\x00\x00\x10"]))
@settings(max_examples=200, deadline=None)
def test_stream_walkers_never_crash(body: bytes, prefix: bytes) -> None:
    data = prefix + body
    mp3 = scan_mp3(data)
    assert mp3 is None or mp3.frames >= 0
    ogg = scan_ogg(b"OggS" + body)
    assert ogg.pages >= 0


def _with_declared_frames(data: bytes, extra: int) -> bytes:
    """The MP3 with its Info header's frame count raised by ``extra``."""
    at = data.find(b"Info") + 8  # after the name and the flags
    count = int.from_bytes(data[at : at + 4], "big") + extra
    return data[:at] + count.to_bytes(4, "big") + data[at + 4 :]


def test_a_header_frame_count_off_by_one_is_an_encoder_habit_not_a_cut(tmp_path: Path) -> None:
    data = crafted.mp3_bytes(crafted.music(4, seed=16), kbps_level=0.5)
    (tmp_path / "counts_itself.mp3").write_bytes(_with_declared_frames(data, 1))
    decode_file(tmp_path / "counts_itself.mp3")
    (tmp_path / "missing_two.mp3").write_bytes(_with_declared_frames(data, 2))
    with pytest.raises(AudioDecodeError, match="declares") as info:
        decode_file(tmp_path / "missing_two.mp3")
    assert info.value.reason == "truncated"


def test_free_format_mp3s_are_left_to_the_decoder_not_refused_as_unknown() -> None:
    from aitasks.audio_analysis.streams import free_format

    assert free_format(crafted.id3_only("x", 4) + b"\xff\xfb\x04\xc4" + bytes(400))  # bitrate index 0
    assert not free_format(b"\xff\xfb\x90\xc4" + bytes(400))
    assert scan_mp3(b"\xff\xfb\x04\xc4" + bytes(400)) is None
