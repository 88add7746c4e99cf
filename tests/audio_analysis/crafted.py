"""Real crafted audio files, good and bad, for the decode / catalog / pipeline tests.

Each bad kind is a real file on disk made the way it happens in a catalog: a zero-byte upload, a
transfer cut in half, random bytes or a text file under an audio extension, a header that claims
more audio than there is, a float WAV holding NaN, a 5.1 master, telephone and studio sample rates,
digital silence, a clipped master, and a link that points out of the catalog.
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

    six = np.stack([music(12, seed=20 + c) for c in range(6)], axis=1)
    write(bad / "six_channels.wav", six)
    out["six_channels"] = (bad / "six_channels.wav", "too_many_channels")

    write(bad / "rate_8k.wav", music(12, seed=12, sr=8000), 8000)
    out["rate_8k"] = (bad / "rate_8k.wav", "sample_rate_out_of_range")
    write(bad / "rate_192k.flac", music(12, seed=13, sr=192000), 192000)
    out["rate_192k"] = (bad / "rate_192k.flac", "sample_rate_out_of_range")

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
