"""Real crafted audio files, good and bad, for the decode / catalog / pipeline tests.

Each bad kind is a real file on disk made the way it happens in a catalog: a zero-byte upload, a
transfer cut in half (FLAC, WAV, MP3 with and without a Xing/Info header, Ogg Vorbis inside a page
and at a page boundary), random bytes or a text file under an audio extension, a header that claims
more audio than there is, a float WAV holding NaN, a 5.1 master under a name with a space, sample
rates outside 8-192 kHz, a file holding only an ID3 tag, digital silence, a clipped master, and a
link that points out of the catalog. MP3s come from libsndfile's LAME encoder; one without the
Xing/Info header (as ``lame -t`` and streaming encoders write) is made by dropping that frame.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 44100


def music(seconds: float, *, seed: int, sr: int = SR, gain: float = 0.3) -> np.ndarray:
    """A few seconds of a short melody with harmonics and a click pulse (mono float32)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    y = np.zeros(n, np.float64)
    note_len = int(0.25 * sr)
    for start in range(0, n, note_len):
        f0 = 220.0 * 2 ** (rng.integers(0, 12) / 12)
        seg = slice(start, min(n, start + note_len))
        tt = t[seg] - t[start]
        env = np.exp(-3 * tt)
        for h in range(1, 5):
            y[seg] += env * np.sin(2 * np.pi * f0 * h * tt) / h
    y[:: int(0.5 * sr)] += 0.8
    y += 0.01 * rng.standard_normal(n)
    return (gain * y / np.max(np.abs(y))).astype(np.float32)


def write(path: Path, y: np.ndarray, sr: int = SR, **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), y, sr, **kw)  # type: ignore[arg-type]
    return path


def good_files(root: Path, seconds: float = 12.0) -> dict[str, Path]:
    """One clean track per supported format (and a 48 kHz stereo one)."""
    out = {
        "good_wav": write(root / "good" / "good_wav.wav", music(seconds, seed=1)),
        "good_flac": write(root / "good" / "good_flac.flac", music(seconds, seed=2)),
        "good_ogg": write(root / "good" / "good_ogg.ogg", music(seconds, seed=3)),
        "good_mp3": write(root / "good" / "good_mp3.mp3", music(seconds, seed=4)),
    }
    stereo = np.stack([music(seconds, seed=5, sr=48000), music(seconds, seed=6, sr=48000)], axis=1)
    out["good_stereo"] = write(root / "good" / "good_stereo.flac", stereo, 48000)
    return out


def mp3_bytes(y: np.ndarray, sr: int = SR, *, kbps_level: float = 0.9, vbr: bool = False, info: bool = True) -> bytes:
    """An MP3 from LAME (through libsndfile): CBR (``kbps_level`` 0.9: 48 kbit/s at 44.1 kHz) or VBR.

    ``info=False`` drops the Xing/Info header frame, leaving a stream with no stored length.
    """
    import io

    from aitasks.audio_analysis.streams import mpeg_frame

    buf = io.BytesIO()
    mode = "VARIABLE" if vbr else "CONSTANT"
    sf.write(buf, y, sr, format="MP3", bitrate_mode=mode, compression_level=kbps_level)
    data = buf.getvalue()
    if not info:
        first = mpeg_frame(data, 0)
        assert first is not None and data[: first.length].find(b"Info") > 0, "expected an Info header frame"
        data = data[first.length :]
    return data


def mp3_frame_starts(data: bytes) -> list[int]:
    """Byte offsets of the MPEG frames of an MP3 without ID3 tags (walked header to header)."""
    from aitasks.audio_analysis.streams import mpeg_frame

    out, pos = [], 0
    while (frame := mpeg_frame(data, pos)) is not None and pos + frame.length <= len(data):
        out.append(pos)
        pos += frame.length
    return out


def ogg_bytes(y: np.ndarray, sr: int = SR) -> bytes:
    """Ogg Vorbis written in one-second blocks (libsndfile crashes on one long Vorbis write)."""
    import io

    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", sr, 1 if y.ndim == 1 else y.shape[1], format="OGG") as fh:
        for start in range(0, len(y), sr):
            fh.write(y[start : start + sr])
    return buf.getvalue()


def ogg_page_starts(data: bytes) -> list[int]:
    """Byte offsets of the Ogg pages."""
    out, pos = [], data.find(b"OggS")
    while pos != -1:
        out.append(pos)
        pos = data.find(b"OggS", pos + 1)
    return out


def id3_only(title: str = "Track 1", padding: int = 2048) -> bytes:
    """An ID3v2.3 tag (a title frame plus zero padding) and nothing else: an upload that lost its audio."""
    body = b"TIT2" + (len(title) + 1).to_bytes(4, "big") + b"\x00\x00" + b"\x00" + title.encode("latin-1")
    body += b"\x00" * padding
    n = len(body)
    size = bytes([(n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F])
    return b"ID3\x03\x00\x00" + size + body


def bad_files(root: Path, outside: Path) -> dict[str, tuple[Path, str]]:
    """Every bad kind of the issue: name -> (path, expected quarantine reason or anomaly flag code)."""
    bad = root / "bad"
    bad.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, str]] = {}

    (bad / "zero_bytes.wav").write_bytes(b"")
    out["zero_bytes"] = (bad / "zero_bytes.wav", "empty")

    full = write(bad / "tmp_full.flac", music(8, seed=7)).read_bytes()
    (bad / "tmp_full.flac").unlink()
    (bad / "truncated_flac.flac").write_bytes(full[: len(full) // 2])
    out["truncated_flac"] = (bad / "truncated_flac.flac", "truncated")

    wav = write(bad / "tmp_full.wav", music(8, seed=8)).read_bytes()
    (bad / "tmp_full.wav").unlink()
    (bad / "truncated_wav.wav").write_bytes(wav[: len(wav) // 3])
    out["truncated_wav"] = (bad / "truncated_wav.wav", "truncated")

    (bad / "random_bytes.mp3").write_bytes(np.random.default_rng(9).bytes(50_000).replace(b"\xff", b"\x00"))
    out["random_bytes"] = (bad / "random_bytes.mp3", "unknown_format")

    (bad / "text_file.wav").write_text("This is not audio, it is a playlist.\nsong1.mp3\nsong2.mp3\n")
    out["text_as_wav"] = (bad / "text_file.wav", "unknown_format")

    # A FLAC whose STREAMINFO claims twice the samples it holds: a header that lies about its length.
    flac = bytearray(write(bad / "tmp_lie.flac", music(8, seed=10)).read_bytes())
    (bad / "tmp_lie.flac").unlink()
    # STREAMINFO starts at byte 8; total samples are the low 36 bits of bytes 21..25 (after 4+4 bytes).
    total = int.from_bytes(flac[21:26], "big") & ((1 << 36) - 1)
    packed = (int.from_bytes(flac[21:26], "big") & ~((1 << 36) - 1)) | (total * 2)
    flac[21:26] = packed.to_bytes(5, "big")
    (bad / "lying_header.flac").write_bytes(bytes(flac))
    out["lying_header"] = (bad / "lying_header.flac", "truncated")

    y = music(12, seed=11)
    y[1000:1100] = np.nan
    write(bad / "nan_samples.wav", y, subtype="FLOAT")
    out["nan_samples"] = (bad / "nan_samples.wav", "non_finite")

    # A name that is no track id (a space): the listing normalises it, so the file's real problem shows.
    six = np.stack([music(12, seed=20 + c) for c in range(6)], axis=1)
    write(bad / "six channels.wav", six)
    out["six_channels"] = (bad / "six channels.wav", "too_many_channels")

    write(bad / "rate_6k.wav", music(12, seed=12, sr=6000), 6000)
    out["rate_6k"] = (bad / "rate_6k.wav", "sample_rate_out_of_range")
    write(bad / "rate_384k.wav", music(1, seed=13, sr=384000), 384000)
    out["rate_384k"] = (bad / "rate_384k.wav", "sample_rate_out_of_range")

    # MP3 cut at a frame boundary: only the Info header's frame count shows it.
    mp3 = mp3_bytes(music(8, seed=21), kbps_level=0.5)
    (bad / "truncated_mp3.mp3").write_bytes(mp3[: mp3_frame_starts(mp3)[100]])
    out["truncated_mp3"] = (bad / "truncated_mp3.mp3", "truncated")
    # MP3 with no stored length, cut inside a frame: its last frame is incomplete.
    bare = mp3_bytes(music(8, seed=22), info=False)
    (bad / "truncated_bare_mp3.mp3").write_bytes(bare[: len(bare) * 2 // 3 + 7])
    out["truncated_bare_mp3"] = (bad / "truncated_bare_mp3.mp3", "truncated")
    # Ogg Vorbis cut inside a page, and cut at a page boundary (no end-of-stream page).
    ogg = ogg_bytes(music(8, seed=23))
    pages = ogg_page_starts(ogg)
    (bad / "truncated_ogg.ogg").write_bytes(ogg[: pages[len(pages) // 2] + 100])
    out["truncated_ogg"] = (bad / "truncated_ogg.ogg", "truncated")
    (bad / "ogg_without_end.ogg").write_bytes(ogg[: pages[len(pages) // 2]])
    out["ogg_without_end"] = (bad / "ogg_without_end.ogg", "truncated")

    (bad / "id3_only.mp3").write_bytes(id3_only())
    out["id3_only"] = (bad / "id3_only.mp3", "no_audio")

    # A FLAC under a .mp3 name: a real format that contradicts the extension.
    write(bad / "tmp_mis.flac", music(12, seed=14))
    os.replace(bad / "tmp_mis.flac", bad / "flac_named_mp3.mp3")
    out["format_mismatch"] = (bad / "flac_named_mp3.mp3", "format_mismatch")

    outside.mkdir(parents=True, exist_ok=True)
    target = write(outside / "secret.wav", music(12, seed=15))
    (bad / "escape_link.wav").symlink_to(target)
    out["symlink_escape"] = (bad / "escape_link.wav", "unsafe_path")
    return out


def flagged_files(root: Path) -> dict[str, tuple[Path, str]]:
    """Files that decode but must be flagged by the signal rules."""
    d = root / "flagged"
    out = {}
    out["silence"] = (write(d / "silence.wav", np.zeros(12 * SR, np.float32)), "silence")
    y = music(12, seed=16, gain=1.0) * 3.0
    out["clipping"] = (write(d / "clipping.wav", np.clip(y, -1.0, 1.0)), "clipping")
    out["too_short"] = (write(d / "too_short.flac", music(3, seed=17)), "too_short")
    out["dc_offset"] = (write(d / "dc_offset.wav", music(12, seed=18) * 0.5 + 0.3), "dc_offset")
    return out
