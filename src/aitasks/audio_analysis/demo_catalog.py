"""A synthetic audio catalog for the demo and tests: real files, realistic mess, known answers.

Data contract (what :func:`write_demo_catalog` writes under ``root``):

- ``<xx>/<track_id>.<ext>``: one file per track, ``track_id`` = ``t_`` + 6 digits (the events
  contract's ids, so the audio features join the recommender's catalog), ``xx`` = its last two
  digits. Formats cycle through OGG Vorbis, FLAC, MP3 and WAV; rates 44.1 and 48 kHz; a third of
  the tracks are stereo. Each track is a procedural clip of one class of
  :data:`aitasks.audio_analysis.synthetic.LABELS` (20-40 s), recorded in ``truth.json``.
- Planted problems (``truth.json`` ``planted``: track id -> expected quarantine reason or flag):
  a near-duplicate (another track re-encoded to MP3, -4 dB, trimmed by 0.7 s), digital silence,
  a clipped master, a zero-byte upload, a transfer cut in half, a playlist saved as ``.wav`` and a
  float WAV with NaN samples.
- ``<root>-labelled/<label>/<label>-<i>.<ext>`` + ``labels.csv`` (a sibling folder): the classifier's labelled
  training folder (:func:`aitasks.audio_analysis.synthetic.write_labelled_folder`), other seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

EXTS = ("ogg", "flac", "mp3", "wav")


def _write(path: Path, y: np.ndarray, sr: int, **kw: object) -> None:
    import soundfile as sf

    from aitasks.platform.files import atomic_path

    with atomic_path(path) as tmp:
        sf.write(str(tmp), y, sr, format=path.suffix[1:].upper(), **kw)  # type: ignore[arg-type]


def _mastered(y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Scale a clip to a released track's loudness (-16 to -9 LUFS), peaks kept under -0.5 dBFS."""
    from aitasks.audio_analysis.features import integrated_loudness

    gain = 10 ** ((float(rng.uniform(-16, -9)) - integrated_loudness(y, sr)) / 20)
    out = y * gain
    peak = float(np.max(np.abs(out)))
    return (out * min(1.0, 0.94 / peak) if peak > 0 else out).astype(np.float32)


def track_path(root: Path, track_id: str, ext: str) -> Path:
    """``root/<last two digits>/<track_id>.<ext>``."""
    return root / track_id[-2:] / f"{track_id}.{ext}"


def write_demo_catalog(
    root: Path,
    *,
    tracks: int = 48,
    seed: int = 0,
    planted: bool = True,
    labelled_per_class: int = 24,
    seconds: tuple[float, float] = (20.0, 40.0),
) -> dict[str, object]:
    """Write the demo catalog and its labelled training folder; returns the truth (also in truth.json).

    Args:
        root: Target directory (created).
        tracks: Number of good tracks.
        seed: Seed of everything.
        planted: Add the planted problems.
        labelled_per_class: Clips per class of the labelled folder (0: none).
        seconds: Range of track durations.
    """
    import soxr

    from aitasks.audio_analysis.synthetic import LABELS, synth_clip, write_labelled_folder

    rng = np.random.default_rng(seed)
    labels: dict[str, str] = {}
    first: tuple[str, np.ndarray, int] | None = None
    for i in range(tracks):
        tid = f"t_{i:06d}"
        label = LABELS[i % len(LABELS)]
        sr = 44100 if i % 5 else 48000
        y = _mastered(
            synth_clip(label, seed=seed * 100_003 + i, sr=sr, duration_s=float(rng.uniform(*seconds))), sr, rng
        )
        if i % 3 == 0:
            # Stereo: the second channel slightly delayed and attenuated.
            y = np.stack([y, np.roll(y, 30) * 0.8], axis=1)
        _write(track_path(root, tid, EXTS[i % len(EXTS)]), y, sr)
        labels[tid] = label
        if first is None:
            first = (tid, y if y.ndim == 1 else y.mean(axis=1), sr)
    plant: dict[str, str] = {}
    if planted and first is not None:
        src_id, y0, sr0 = first
        n = tracks
        dup = f"t_{n:06d}"
        trimmed = y0[int(0.7 * sr0) :] * 10 ** (-4 / 20)
        _write(track_path(root, dup, "mp3"), soxr.resample(trimmed, sr0, 48000).astype(np.float32), 48000)
        plant[dup] = f"duplicate:{src_id}"
        _write(track_path(root, f"t_{n + 1:06d}", "flac"), np.zeros(int(seconds[0] * 44100), np.float32), 44100)
        plant[f"t_{n + 1:06d}"] = "silence"
        hot = synth_clip("drums", seed=seed + 7, sr=44100, duration_s=seconds[0])
        loud = np.clip(hot / np.max(np.abs(hot)) * 4.0, -1.0, 1.0)
        _write(track_path(root, f"t_{n + 2:06d}", "wav"), loud, 44100)
        plant[f"t_{n + 2:06d}"] = "clipping"
        p = track_path(root, f"t_{n + 3:06d}", "mp3")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
        plant[f"t_{n + 3:06d}"] = "empty"
        full = track_path(root, f"t_{n + 4:06d}", "flac")
        _write(full, synth_clip("drums", seed=seed + 9, sr=44100, duration_s=20), 44100)
        data = full.read_bytes()
        full.write_bytes(data[: len(data) // 2])
        plant[f"t_{n + 4:06d}"] = "truncated"
        p = track_path(root, f"t_{n + 5:06d}", "wav")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("#EXTM3U\nsong1.mp3\nsong2.mp3\n")
        plant[f"t_{n + 5:06d}"] = "unknown_format"
        nan = synth_clip("noise", seed=seed + 11, sr=44100, duration_s=20)
        nan[5000:5050] = np.nan
        _write(track_path(root, f"t_{n + 6:06d}", "wav"), nan, 44100, subtype="FLOAT")
        plant[f"t_{n + 6:06d}"] = "non_finite"
    if labelled_per_class:
        write_labelled_folder(root.parent / f"{root.name}-labelled", per_class=labelled_per_class, seed=seed + 1)
    truth: dict[str, object] = {"labels": labels, "planted": plant}
    (root / "truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True), "utf-8")
    return truth
