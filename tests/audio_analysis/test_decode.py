"""Decoding: every bad-file kind gets its reason from a real crafted file; good files decode exactly."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from aitasks.audio_analysis.catalog import key_track_id, list_catalog, resolve_in_root, shard
from aitasks.audio_analysis.decode import REASONS, AudioDecodeError, DecodeConfig, decode_file, sniff_format
from aitasks.audio_analysis.parallel import run_pool
from aitasks.runtime.errors import UnsafePathError
from tests.audio_analysis import crafted


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path], dict[str, tuple[Path, str]]]:
    root = tmp_path_factory.mktemp("audio")
    cat = root / "catalog"
    good = crafted.good_files(cat)
    bad = crafted.bad_files(cat, root / "outside")
    return cat, good, bad


def test_good_files_decode_to_mono_at_target_rate(catalog) -> None:
    _, good, _ = catalog
    for name, path in good.items():
        audio = decode_file(path)
        assert audio.sample_rate == 22050, name
        assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1, name
        assert abs(audio.duration_s - 12.0) < 0.01, name
        assert abs(len(audio.samples) - 12 * 22050) <= 1, name
        assert np.isfinite(audio.samples).all(), name
        assert audio.format == {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}[path.suffix]
    assert decode_file(good["good_stereo"]).channels == 2


def test_lossless_decode_and_resample_preserve_the_signal(tmp_path: Path) -> None:
    y = crafted.music(5, seed=30)
    path = crafted.write(tmp_path / "x.flac", y, subtype="PCM_24")
    audio = decode_file(path, DecodeConfig(sample_rate=44100))
    np.testing.assert_allclose(audio.samples, y, atol=2e-7)  # 24-bit quantisation only
    # Resampling with soxr keeps a 1 kHz tone's energy and frequency.
    t = np.arange(44100 * 2) / 44100
    sine = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    tone = crafted.write(tmp_path / "tone.wav", sine, subtype="FLOAT")
    out = decode_file(tone).samples
    spec = np.abs(np.fft.rfft(out[2048:-2048]))
    freq = np.fft.rfftfreq(len(out) - 4096, 1 / 22050)[np.argmax(spec)]
    assert abs(freq - 1000) < 1
    assert abs(np.sqrt(np.mean(out[2048:-2048] ** 2)) - 0.5 / np.sqrt(2)) < 1e-3


@pytest.mark.parametrize(
    "kind",
    [
        "zero_bytes",
        "truncated_flac",
        "truncated_wav",
        "random_bytes",
        "text_as_wav",
        "lying_header",
        "nan_samples",
        "six_channels",
        "rate_6k",
        "rate_384k",
        "format_mismatch",
        "truncated_mp3",
        "truncated_bare_mp3",
        "truncated_ogg",
        "ogg_without_end",
        "id3_only",
    ],
)
def test_each_bad_kind_is_refused_with_its_reason(catalog, kind: str) -> None:
    _, _, bad = catalog
    path, reason = bad[kind]
    start = time.monotonic()
    with pytest.raises(AudioDecodeError) as info:
        decode_file(path)
    assert time.monotonic() - start < 30  # no hang
    assert info.value.reason == reason
    assert info.value.reason in REASONS
    assert str(path) in str(info.value)  # names the file
    assert info.value.detail  # and says what is wrong


def test_reasons_name_the_measured_value_and_the_limit(catalog) -> None:
    _, _, bad = catalog
    messages = {}
    for kind in ("six_channels", "rate_6k", "text_as_wav", "truncated_wav", "nan_samples"):
        with pytest.raises(AudioDecodeError) as info:
            decode_file(bad[kind][0])
        messages[kind] = info.value.detail
    assert "6 channels" in messages["six_channels"] and "2" in messages["six_channels"]
    assert "6000 Hz" in messages["rate_6k"] and "8000" in messages["rate_6k"]
    assert "text" in messages["text_as_wav"] and ".wav" in messages["text_as_wav"]
    assert "declares" in messages["truncated_wav"]
    assert "NaN" in messages["nan_samples"]


def test_limits_come_from_the_config(tmp_path: Path) -> None:
    path = crafted.write(tmp_path / "long.wav", crafted.music(12, seed=31))
    with pytest.raises(AudioDecodeError) as info:
        decode_file(path, DecodeConfig(max_duration_s=10))
    assert info.value.reason == "too_long"
    with pytest.raises(AudioDecodeError) as info:
        decode_file(path, DecodeConfig(max_bytes=1000))
    assert info.value.reason == "too_large"
    six = crafted.write(tmp_path / "six.wav", np.zeros((44100, 6), np.float32))
    assert decode_file(six, DecodeConfig(max_channels=6)).channels == 6
    assert decode_file(path, DecodeConfig(sample_rate=44100)).samples.shape == (12 * 44100,)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    with pytest.raises(AudioDecodeError) as info:
        decode_file(fifo)
    assert info.value.reason == "not_regular_file"


def test_extension_mismatch_can_be_allowed(catalog) -> None:
    _, _, bad = catalog
    audio = decode_file(bad["format_mismatch"][0], DecodeConfig(allow_extension_mismatch=True))
    assert audio.format == "FLAC"


@given(st.binary(max_size=64))
@settings(max_examples=300, deadline=None)
def test_sniffer_never_crashes_and_only_names_known_containers(head: bytes) -> None:
    assert sniff_format(head) in (None, "WAV", "FLAC", "OGG", "MP3")


def test_random_files_under_audio_names_never_crash(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(40):
        # Random bodies behind real magic numbers: the decoder must refuse, not crash or hang.
        magic = [b"RIFF\x00\x00\x00\x00WAVEfmt ", b"fLaC", b"OggS", b"ID3\x03\x00", b""][i % 5]
        ext = [".wav", ".flac", ".ogg", ".mp3", ".wav"][i % 5]
        p = tmp_path / f"r{i}{ext}"
        p.write_bytes(magic + rng.bytes(int(rng.integers(0, 4000))))
        try:
            decode_file(p)
        except AudioDecodeError as exc:
            assert exc.reason in REASONS


# ------------------------------------------------------------------------------------ catalog


def test_catalog_lists_audio_refuses_escapes_and_skips_other_files(catalog) -> None:
    cat, good, _ = catalog
    (cat / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    listing = list_catalog(str(cat))
    ids = {e.track_id for e in listing.entries}
    assert set(good) <= ids
    assert "escape_link" not in ids
    assert [r.reason for r in listing.refused] == ["unsafe_path"]
    assert listing.skipped_non_audio == 1
    assert [e.key for e in listing.entries] == sorted(e.key for e in listing.entries)


def test_links_inside_the_root_are_followed_and_dir_links_out_refused(tmp_path: Path) -> None:
    cat = tmp_path / "cat"
    crafted.write(cat / "a" / "t1.wav", crafted.music(1, seed=1))
    (cat / "t2.wav").symlink_to(cat / "a" / "t1.wav")
    (tmp_path / "out").mkdir()
    (cat / "elsewhere").symlink_to(tmp_path / "out", target_is_directory=True)
    listing = list_catalog(str(cat))
    assert {e.track_id for e in listing.entries} == {"t1", "t2"}
    assert [r.reason for r in listing.refused] == ["unsafe_path"]


def test_duplicate_track_ids_are_refused_and_other_names_normalised(tmp_path: Path) -> None:
    cat = tmp_path / "cat"
    for key in ("a/t1.wav", "b/t1.flac", "bad id.wav", "ok.wav"):
        crafted.write(cat / key, crafted.music(1, seed=2))
    listing = list_catalog(str(cat))
    assert [e.track_id for e in listing.entries] == [key_track_id("bad id.wav"), "ok"]
    assert sorted(r.reason for r in listing.refused) == ["duplicate_track_id", "duplicate_track_id"]


@pytest.mark.parametrize("key", ["../x.wav", "/etc/passwd", "a/../../x.wav", "a\\..\\x.wav", "a\x00.wav", ""])
def test_manifest_keys_that_escape_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(UnsafePathError):
        resolve_in_root(tmp_path, key)


def test_manifest_key_through_a_link_out_is_refused(catalog) -> None:
    cat, _, _ = catalog
    with pytest.raises(UnsafePathError):
        resolve_in_root(cat, "bad/escape_link.wav")
    assert resolve_in_root(cat, "good/good_wav.wav").is_file()


@given(st.integers(0, 50), st.integers(1, 12))
def test_shards_partition_the_catalog(n: int, k: int) -> None:
    from aitasks.audio_analysis.catalog import CatalogEntry

    entries = [CatalogEntry(track_id=f"t{i}", key=f"t{i}.wav", uri=f"/c/t{i}.wav", size=1) for i in range(n)]
    parts = shard(entries, k)
    assert [e for p in parts for e in p] == entries
    assert all(parts) and len(parts) == min(n, k)
    if parts:
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


# ----------------------------------------------------------------------------- process pool


def _slow_square(x: int) -> int:
    if x == 3:
        time.sleep(60)
    if x == 5:
        os._exit(7)  # a native crash: the worker dies without a word
    if x == 6:
        raise ValueError("bad item")
    return x * x


def test_pool_kills_hung_items_survives_crashes_and_keeps_order() -> None:
    start = time.monotonic()
    out = run_pool(
        _slow_square,
        list(range(9)),
        workers=2,
        timeout_s=3.0,
        on_timeout=lambda x: f"timeout:{x}",
        on_crash=lambda x, why: f"crash:{x}:{why}",
    )
    assert time.monotonic() - start < 45
    assert out[:3] == [0, 1, 4] and out[4] == 16 and out[7:] == [49, 64]
    assert out[3] == "timeout:3"
    assert out[5].startswith("crash:5:worker process died (exit code 7)")
    assert out[6] == "crash:6:ValueError: bad item"


def test_decode_of_good_file_after_bad_is_unaffected(catalog) -> None:
    _, good, bad = catalog
    with pytest.raises(AudioDecodeError):
        decode_file(bad["truncated_flac"][0])
    ref, _ = sf.read(str(good["good_flac"]), dtype="float32")
    audio = decode_file(good["good_flac"], DecodeConfig(sample_rate=44100))
    np.testing.assert_array_equal(audio.samples, ref)


def test_manifest_lists_only_its_keys_and_refuses_escapes(catalog) -> None:
    from aitasks.audio_analysis.catalog import list_manifest

    cat, _, _ = catalog
    manifest = "\n".join(
        [
            "# tonight's uploads",
            "good/good_wav.wav",
            "good/good_mp3.mp3",
            "good/good_wav.wav",  # repeated: counted once
            "../outside/secret.wav",
            "/etc/passwd.wav",
            "bad/escape_link.wav",
            "good/missing.flac",
            "good/cover.jpg",
            "",
        ]
    )
    listing = list_manifest(str(cat), manifest)
    assert [e.track_id for e in listing.entries] == ["good_wav", "good_mp3"]
    reasons = sorted((r.reason, Path(r.uri).name) for r in listing.refused)
    assert reasons == [
        ("not_audio", "cover.jpg"),
        ("not_found", "missing.flac"),
        ("unsafe_path", "escape_link.wav"),
        ("unsafe_path", "passwd.wav"),
        ("unsafe_path", "secret.wav"),
    ]
    assert listing.skipped_non_audio == 0


def test_list_task_reads_a_manifest_and_its_content_joins_the_key(catalog, tmp_path) -> None:
    from aitasks.audio_analysis.tasks import list_catalog_task
    from tests.conftest import CapturedRuntime

    cat, _, _ = catalog
    captured = CapturedRuntime(tmp_path, inputs=(cat,))  # the session's catalog is an allowed input root
    manifest = captured.root / "tonight.txt"
    manifest.write_text("good/good_flac.flac\n")
    one = list_catalog_task({"catalog_root": str(cat), "manifest_uri": str(manifest)}, runtime=captured.rt)
    assert one.tracks == 1
    manifest.write_text("good/good_flac.flac\ngood/good_ogg.ogg\n")
    two = list_catalog_task({"catalog_root": str(cat), "manifest_uri": str(manifest)}, runtime=captured.rt)
    assert two.tracks == 2 and two.listing_uri != one.listing_uri
