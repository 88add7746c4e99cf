"""Audio analysis throughput: our one-STFT pipeline against a naive librosa pipeline, same files, same run.

Data: ``N_TRACKS`` procedural tracks of 30 s (the four classes of ``aitasks.audio_analysis.synthetic``)
written as OGG Vorbis, MP3, FLAC and WAV in turn, 44.1 kHz, every other one stereo: the mix of a
real catalog's formats.

* **ours**: :func:`aitasks.audio_analysis.analyze.analyze_file` per file: the checks, libsndfile
  decode at the native rate, mono mixdown, one soxr resample to 22,050 Hz, one STFT for every
  spectral feature plus BS.1770 loudness, the signal rules and the fingerprint: the whole per-file
  work of a pipeline shard;
* **naive librosa**: ``librosa.load(path)`` (its default: resample to 22,050 Hz with soxr_hq) and
  then each feature from the signal, each computing its own STFT: melspectrogram, mfcc, chroma_stft,
  spectral centroid, bandwidth, rolloff, flatness, contrast, zero-crossing rate, RMS, onset strength
  and tempo, summarised with mean/std/percentiles. It computes less than ours (no loudness, rules or
  fingerprint).

Both run in this process with BLAS/OpenMP pinned to one thread (``threadpool_limits(1)``), after a
warm-up file (numba JIT, filter caches), best of ``REPEATS`` passes. ×realtime per core = seconds of
audio / seconds of one core. A third figure runs the real process pool (one worker per core, hard
per-file timeout) over the same files, start-up included.

Run ``python -m bench.audio``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import record

N_TRACKS = 12
SECONDS = 30.0
SR = 44100
REPEATS = 3
TARGET_X_REALTIME = 600.0
TARGET_RATIO = 3.0
POOL_PASSES = 8


def write_tracks(root: Path, n: int = N_TRACKS) -> list[Path]:
    """``n`` 30 s tracks in OGG/MP3/FLAC/WAV, alternately mono and stereo."""
    import soundfile as sf

    from aitasks.audio_analysis.synthetic import LABELS, synth_clip

    paths = []
    for i in range(n):
        y = synth_clip(LABELS[i % len(LABELS)], seed=1000 + i, sr=SR, duration_s=SECONDS)
        if i % 2:
            y = np.stack([y, np.roll(y, 20)], axis=1)
        p = root / f"b{i:03d}.{('ogg', 'mp3', 'flac', 'wav')[i % 4]}"
        sf.write(str(p), y, SR)
        paths.append(p)
    return paths


def naive_librosa(path: Path) -> np.ndarray:
    """The naive pipeline: librosa.load, then every feature from the signal with its own STFT."""
    import librosa

    y, sr = librosa.load(str(path))
    frames = [
        librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr)),
        librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20),
        librosa.feature.chroma_stft(y=y, sr=sr),
        librosa.feature.spectral_centroid(y=y, sr=sr),
        librosa.feature.spectral_bandwidth(y=y, sr=sr),
        librosa.feature.spectral_rolloff(y=y, sr=sr),
        librosa.feature.spectral_flatness(y=y),
        librosa.feature.spectral_contrast(y=y, sr=sr),
        librosa.feature.zero_crossing_rate(y),
        librosa.feature.rms(y=y),
        librosa.onset.onset_strength(y=y, sr=sr)[None, :],
    ]
    tempo = librosa.feature.tempo(y=y, sr=sr)
    stats = [np.concatenate([f.mean(1), f.std(1), *np.percentile(f, (10, 50, 90), axis=1)]) for f in frames]
    return np.concatenate([*stats, np.atleast_1d(tempo)])


def _ours(paths: list[Path]) -> Any:
    from aitasks.audio_analysis.analyze import AnalysisConfig, analyze_file
    from aitasks.audio_analysis.catalog import CatalogEntry

    cfg = AnalysisConfig()
    out = []
    for p in paths:
        r = analyze_file(p, CatalogEntry(track_id=p.stem, key=p.name, uri=str(p), size=1), cfg)
        assert r.ok, r.detail
        out.append(r)
    return out


def _best(fn: Any, arg: Any) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_audio(n_tracks: int = N_TRACKS) -> list[dict[str, Any]]:
    from threadpoolctl import threadpool_limits

    from aitasks.audio_analysis.analyze import AnalysisConfig, analyze_entries
    from aitasks.audio_analysis.catalog import list_catalog
    from aitasks.platform.compute import usable_cpus

    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="aitasks-bench-audio-") as tmp:
        paths = write_tracks(Path(tmp), n_tracks)
        audio_s = n_tracks * SECONDS
        params = {
            "tracks": n_tracks,
            "seconds_per_track": SECONDS,
            "formats": "ogg/mp3/flac/wav",
            "source_rate": SR,
            "analysis_rate": 22050,
            "threads": 1,
            "repeats": REPEATS,
        }
        with threadpool_limits(limits=1):
            _ours(paths[:1])  # warm-up: filter caches
            naive_librosa(paths[0])  # warm-up: numba JIT
            ours = _best(_ours, paths)
            naive = _best(lambda ps: [naive_librosa(p) for p in ps], paths)
        ours_x, naive_x = audio_s / ours, audio_s / naive
        records.append(
            record(
                "audio.analysis",
                "x_realtime_per_core",
                ours_x,
                "x realtime",
                "naive librosa pipeline (load + one STFT per feature)",
                naive_x,
                {**params, "target_ratio": TARGET_RATIO},
                higher_is_better=True,
            )
        )
        records.append(
            record(
                "audio.analysis",
                "x_realtime_per_core_vs_target",
                ours_x,
                "x realtime",
                f"issue target {TARGET_X_REALTIME:.0f}x realtime per core (decode included)",
                TARGET_X_REALTIME,
                params,
                higher_is_better=True,
            )
        )
        workers = usable_cpus()
        # Each file 8 times: enough work that the one-off worker start-up is a fair share, not all of it.
        entries = list_catalog(tmp).entries * POOL_PASSES
        # The start-up alone: the fork server importing numpy/scipy/librosa once (it then serves every later
        # pool of this process), then one short file per worker.
        short = Path(tmp) / "short" / "s.wav"
        short.parent.mkdir()
        import soundfile as sf

        sf.write(str(short), np.zeros(SR, np.float32), SR)
        [one] = list_catalog(str(short.parent)).entries
        t0 = time.perf_counter()
        analyze_entries([one] * workers, AnalysisConfig(), workers=workers, timeout_s=120)
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = analyze_entries(entries, AnalysisConfig(), workers=workers, timeout_s=120)
        wall = time.perf_counter() - t0
        assert all(r.ok for r in results)
        records.append(
            record(
                "audio.analysis_pool",
                "x_realtime_per_core",
                POOL_PASSES * audio_s / ((startup + wall) * workers),
                "x realtime",
                "same files, one process (above)",
                ours_x,
                {
                    **params,
                    "workers": workers,
                    "files": len(entries),
                    "includes": "worker start-up (fork server preload)",
                },
                higher_is_better=True,
            )
        )
        records.append(
            record(
                "audio.analysis_pool",
                "x_realtime_per_core_steady",
                POOL_PASSES * audio_s / (wall * workers),
                "x realtime",
                "same files, one process (above)",
                ours_x,
                {**params, "workers": workers, "files": len(entries), "startup_s": round(startup, 3)},
                higher_is_better=True,
            )
        )
    return records


if __name__ == "__main__":
    import json

    print(json.dumps(bench_audio(), indent=2))
