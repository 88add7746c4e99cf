"""Signal rules, fingerprints / near-duplicates and feature outliers on crafted signals."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from aitasks.audio_analysis.anomaly import (
    FP_BYTES_PER_MINUTE,
    Z_CAP,
    DuplicatePair,
    Flag,
    OutlierScore,
    RuleConfig,
    SignalStats,
    apply_rules,
    duplicate_flags,
    feature_outliers,
    fingerprint,
    fingerprint_similarity,
    near_duplicates,
    outlier_flags,
    quarantine_flag,
    robust_z,
    signal_stats,
)
from aitasks.runtime.errors import DataFormatError, InvalidInputError

SR = 22050
RATE = 44100
CFG = RuleConfig()


# ------------------------------------------------------------------------------ signal rules


def tone_mix(seconds: float, rate: int = RATE, amp: float = 0.3, seed: int = 0) -> np.ndarray:
    """A clean chord with a little noise: no rule should fire on it."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    y = sum(np.sin(2 * np.pi * f * t + p) for f, p in ((220.0, 0.0), (277.2, 1.0), (329.6, 2.0))) / 3
    return (amp * y + 0.001 * rng.standard_normal(t.size)).astype(np.float32)


def codes(flags: list[Flag]) -> list[str]:
    return [f.code for f in flags]


def rules_for(x: np.ndarray, rate: int = RATE, lufs: float = -14.0, cfg: RuleConfig = CFG) -> list[Flag]:
    return apply_rules(signal_stats(x, rate, loudness_lufs=lufs), cfg)


def test_clean_tone_mix_has_no_flags() -> None:
    x = tone_mix(30.0)
    stats = signal_stats(x, RATE, loudness_lufs=-14.0)
    assert stats.duration_s == pytest.approx(30.0)
    assert stats.clip_fraction == 0.0
    assert stats.silence_fraction == 0.0
    assert abs(stats.dc_offset) < 1e-3
    assert -25 < stats.rms_dbfs < -10
    assert apply_rules(stats, CFG) == []


def test_silence_is_an_error_and_partial_silence_a_warning() -> None:
    flags = rules_for(np.zeros(30 * RATE, np.float32), lufs=-math.inf)
    assert codes(flags) == ["silence"]  # no loudness flag on top: -inf LUFS of silence says nothing new
    assert flags[0].severity == "error"
    assert "entirely silent" in flags[0].reason and "-60 dBFS" in flags[0].reason

    x = tone_mix(30.0)
    x[: int(18 * RATE)] = 0.0  # 60 % silent
    stats = signal_stats(x, RATE, loudness_lufs=-14.0)
    assert stats.silence_fraction == pytest.approx(0.6, abs=0.01)
    (flag,) = apply_rules(stats, CFG)
    assert flag.code == "silence" and flag.severity == "warning"
    assert "60.0%" in flag.reason and "50.0%" in flag.reason
    assert 0 < flag.score < 1


def clipped_sine(fraction: float, seconds: float = 30.0) -> np.ndarray:
    # |A sin| >= 1 for a share 1 - (2/pi) asin(1/A) of the time: solve for A.
    amp = 0.999 / math.sin((1.0 - fraction) * math.pi / 2)
    t = np.arange(int(seconds * RATE)) / RATE
    return np.clip(amp * np.sin(2 * np.pi * 100.0 * t), -1.0, 1.0).astype(np.float32)


def test_clipping_is_measured_in_runs_and_named_with_value_and_limit() -> None:
    x = clipped_sine(0.05)
    stats = signal_stats(x, RATE, loudness_lufs=-6.0)
    assert stats.clip_fraction == pytest.approx(0.05, abs=0.003)
    flags = apply_rules(stats, CFG)
    assert codes(flags) == ["clipping"]
    assert f"{stats.clip_fraction:.3%}" in flags[0].reason and "0.100%" in flags[0].reason
    # More clipping, higher score: scores compare within a code.
    worse = apply_rules(signal_stats(clipped_sine(0.2), RATE, loudness_lufs=-6.0), CFG)
    assert worse[0].score > flags[0].score > 0

    # Isolated full-scale samples (runs shorter than 3) are legal peaks, not clipping.
    y = tone_mix(30.0)
    y[::1000] = 1.0
    y[1::1000] = -1.0
    assert signal_stats(y, RATE, loudness_lufs=-14.0).clip_fraction == 0.0


def test_dc_offset() -> None:
    flags = rules_for(tone_mix(30.0) + np.float32(0.2))
    assert codes(flags) == ["dc_offset"]
    assert "+0.2000" in flags[0].reason and "0.0500" in flags[0].reason
    assert flags[0].score == pytest.approx(0.2 / 0.05 - 1, rel=0.01)


def test_durations() -> None:
    (short,) = rules_for(tone_mix(3.0))
    assert short.code == "too_short"
    assert "3.00 s" in short.reason and "10.00 s" in short.reason
    (long_,) = rules_for(tone_mix(30.0), cfg=RuleConfig(max_duration_s=20.0))
    assert long_.code == "too_long" and "30.0 s" in long_.reason and "20.0 s" in long_.reason


def test_loudness() -> None:
    quiet = tone_mix(30.0, amp=0.004)
    (low,) = rules_for(quiet, lufs=-50.0)
    assert low.code == "loudness_low"
    assert "-50.0 LUFS" in low.reason and "-35.0 LUFS" in low.reason
    assert low.score == pytest.approx(15.0)
    (high,) = rules_for(tone_mix(30.0), lufs=-2.0)
    assert high.code == "loudness_high" and "-5.0 LUFS" in high.reason


def test_sample_rate() -> None:
    (flag,) = rules_for(tone_mix(30.0, rate=8000), rate=8000)
    assert flag.code == "sample_rate"
    assert "8000 Hz" in flag.reason and "44100" in flag.reason and "48000" in flag.reason
    assert flag.score == pytest.approx(math.log2(44100 / 8000))
    assert rules_for(tone_mix(30.0, rate=48000), rate=48000) == []


def test_non_finite_and_quarantine_flags() -> None:
    x = tone_mix(30.0)
    x[100] = np.nan
    (flag,) = rules_for(x)
    assert flag.code == "nan" and flag.severity == "error"
    assert quarantine_flag("non_finite", "samples contain NaN").code == "nan"
    undecodable = quarantine_flag("truncated", "stream ends at 10 of 20 s")
    assert undecodable.code == "undecodable" and undecodable.severity == "error"
    assert "truncated" in undecodable.reason and "10 of 20 s" in undecodable.reason


def test_empty_signal_and_bad_input() -> None:
    stats = signal_stats(np.zeros(0, np.float32), RATE, loudness_lufs=-math.inf)
    assert stats.duration_s == 0.0 and stats.silence_fraction == 1.0
    assert set(codes(apply_rules(stats, CFG))) == {"silence", "too_short"}
    with pytest.raises(InvalidInputError):
        signal_stats(np.zeros((2, 10), np.float32), RATE, loudness_lufs=-20.0)
    with pytest.raises(InvalidInputError):
        signal_stats(np.zeros(10, np.float32), 0, loudness_lufs=-20.0)
    assert isinstance(stats, SignalStats)


# ------------------------------------------------------------------------------ fingerprints


def synth_song(seed: int, seconds: float = 20.0) -> np.ndarray:
    """A synthetic song: a random melody with harmonics, a bass line and kick/snare/hi-hat drums."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    y = np.zeros(n)
    beat = 60.0 / rng.uniform(80, 160)
    root = int(rng.integers(40, 60))
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])

    def note(start: float, length: float, midi: int, gain: float, decay: float, harmonics: int) -> None:
        i0, i1 = int(start * SR), min(n, int((start + length) * SR))
        t = np.arange(i1 - i0) / SR
        f = 440.0 * 2 ** ((midi - 69) / 12)
        y[i0:i1] += (
            gain * np.exp(-t * decay) * sum(0.5**h * np.sin(2 * np.pi * f * (h + 1) * t) for h in range(harmonics))
        )

    start = 0.0
    while start < seconds:
        length = beat / 2 * rng.choice([1, 1, 2, 3])
        note(start, length, root + 12 + int(rng.choice(scale)), 0.3, rng.uniform(2, 6), 4)
        start += length
    for b in np.arange(0, seconds, 2 * beat):
        note(b, 2 * beat, root + int(rng.choice(scale[:5])), 0.25, 1.5, 1)
    pattern = rng.integers(0, 2, size=(3, 8))
    pattern[0, 0] = 1
    for k, b in enumerate(np.arange(0, seconds, beat / 2)):
        i0 = int(b * SR)
        for row, (dur, gain, decay) in enumerate(((0.25, 0.6, 20), (0.15, 0.3, 30), (0.05, 0.1, 80))):
            if not pattern[row, k % 8]:
                continue
            m = min(n - i0, int(dur * SR))
            t = np.arange(m) / SR
            hit = np.sin(2 * np.pi * (50 + 80 * np.exp(-t * 30)) * t) if row == 0 else rng.standard_normal(m)
            y[i0 : i0 + m] += gain * np.exp(-t * decay) * hit
    return np.asarray(y / (1.1 * np.max(np.abs(y))), dtype=np.float32)


def log_mel(y: np.ndarray) -> np.ndarray:
    import librosa

    mel = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=2048, hop_length=512, n_mels=128)
    return np.asarray(librosa.power_to_db(mel))


def reencoded(y: np.ndarray, *, trim_s: float, gain_db: float) -> np.ndarray:
    """Through OGG Vorbis and back, then a gain change and a trim of the start."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, y, SR, format="OGG", subtype="VORBIS")
    buf.seek(0)
    z, _ = sf.read(buf, dtype="float32")
    return np.asarray(z[int(trim_s * SR) :] * 10 ** (gain_db / 20), dtype=np.float32)


@pytest.fixture(scope="module")
def song_fps() -> dict[str, np.ndarray]:
    original = synth_song(1)
    return {
        "original": fingerprint(log_mel(original)),
        "copy": fingerprint(log_mel(reencoded(original, trim_s=0.5, gain_db=-6.0))),
        "other": fingerprint(log_mel(synth_song(2))),
        "gain": fingerprint(log_mel(original) + 12.0),
    }


def test_fingerprint_is_compact(song_fps: dict[str, np.ndarray]) -> None:
    fp = song_fps["original"]
    assert fp.dtype == np.uint32 and fp.ndim == 1
    bytes_per_minute = fp.nbytes / 20.0 * 60
    assert bytes_per_minute == pytest.approx(FP_BYTES_PER_MINUTE, rel=0.05)
    assert bytes_per_minute < 6000


def test_fingerprint_survives_reencoding_gain_and_trim(song_fps: dict[str, np.ndarray]) -> None:
    same = fingerprint_similarity(song_fps["original"], song_fps["copy"])
    different = fingerprint_similarity(song_fps["original"], song_fps["other"])
    assert same >= 0.8
    assert same > different + 0.2
    assert different < 0.65
    # A gain change is a constant in dB: the bits do not move at all.
    assert fingerprint_similarity(song_fps["original"], song_fps["gain"]) == pytest.approx(1.0)
    assert fingerprint_similarity(song_fps["original"], song_fps["copy"]) == pytest.approx(
        fingerprint_similarity(song_fps["copy"], song_fps["original"])
    )


def test_fingerprint_survives_resampling() -> None:
    import soxr

    y = synth_song(3, seconds=10.0)
    round_trip = soxr.resample(soxr.resample(y, SR, 44100), 44100, SR)
    assert fingerprint_similarity(fingerprint(log_mel(y)), fingerprint(log_mel(round_trip))) >= 0.9


def test_fingerprint_edge_cases() -> None:
    assert fingerprint(np.zeros((128, 5))).size == 0
    assert fingerprint_similarity(np.zeros(0, np.uint32), np.zeros(0, np.uint32)) == 0.0
    # Silence is sub-fingerprint 0 and never makes two tracks alike.
    silent = fingerprint(np.full((128, 400), -80.0))
    assert not silent.any()
    assert fingerprint_similarity(silent, silent) == 0.0
    with pytest.raises(InvalidInputError):
        fingerprint(np.zeros((20, 100)))


def test_near_duplicates_finds_exactly_the_planted_pairs() -> None:
    ids = [f"t{i:03d}" for i in range(30)]
    fps = [fingerprint(log_mel(synth_song(100 + i, seconds=15.0))) for i in range(27)]
    planted = {(3, 27, 0.5, -6.0), (10, 28, 1.0, 3.0), (20, 29, 0.25, -12.0)}
    for src, dst, trim, gain in sorted(planted):
        fps.append(fingerprint(log_mel(reencoded(synth_song(100 + src, seconds=15.0), trim_s=trim, gain_db=gain))))
        assert len(fps) == dst + 1
    pairs = near_duplicates(ids, fps)
    assert {(p.a, p.b) for p in pairs} == {(ids[s], ids[d]) for s, d, _, _ in planted}
    assert all(p.similarity >= 0.8 for p in pairs)

    flags = duplicate_flags(pairs)
    assert {t for t, _ in flags} == {"t027", "t028", "t029"}
    assert all(f.code == "duplicate" and "near-duplicate of t0" in f.reason for _, f in flags)

    with pytest.raises(InvalidInputError):
        near_duplicates(ids[:2], fps[:3])
    with pytest.raises(InvalidInputError):
        near_duplicates(["a", "a"], fps[:2])
    assert near_duplicates([], []) == []
    assert isinstance(DuplicatePair(a="x", b="y", similarity=0.9), DuplicatePair)


# ------------------------------------------------------------------------------ outliers


def gaussian_catalog(n: int = 200, d: int = 12) -> tuple[list[str], np.ndarray, list[str]]:
    rng = np.random.default_rng(7)
    matrix = rng.normal(loc=5.0, scale=2.0, size=(n, d))
    return [f"t{i:04d}" for i in range(n)], matrix, [f"feat_{j:02d}" for j in range(d)]


def test_planted_outliers_rank_top_and_are_explained() -> None:
    ids, matrix, names = gaussian_catalog()
    planted = {"odd_0": 2, "odd_1": 5, "odd_2": 8, "odd_3": 11}
    rows = []
    for k, col in enumerate(planted.values()):
        row = np.full(len(names), 5.0)
        row[col] = 5.0 + (12.0 if k % 2 == 0 else -12.0) * 2.0  # 12 sigma up or down
        rows.append(row)
    ids = ids + list(planted)
    matrix = np.vstack([matrix, rows])
    matrix[:, 0] = 1.0  # a constant column: dropped, never an explanation

    scores = feature_outliers(ids, matrix, names, contamination=0.02, seed=0)
    assert [s.id for s in scores] == ids
    top4 = sorted(scores, key=lambda s: -s.score)[:4]
    assert {s.id for s in top4} == set(planted)
    for s in top4:
        assert s.is_outlier
        name, z = s.top_features[0]
        assert name == names[planted[s.id]]
        assert abs(z) > 8
        assert len(s.top_features) == 3
    assert all(n != "feat_00" for s in scores for n, _ in s.top_features)
    assert sum(s.is_outlier for s in scores) <= 8
    again = feature_outliers(ids, matrix, names, contamination=0.02, seed=0)
    assert [s.score for s in again] == [s.score for s in scores]

    flags = outlier_flags(scores)
    assert {t for t, _ in flags} >= set(planted)
    odd = dict(flags)["odd_1"]
    assert odd.code == "outlier" and names[5] in odd.reason


def test_robust_z_of_a_near_constant_feature_does_not_explode() -> None:
    """A catalog where most tracks share one flatness and one silent track is at 1.0 (the report's z=+1620)."""
    rng = np.random.default_rng(3)
    flat = 0.001 + 1e-5 * rng.standard_normal(27)
    flat[5] = 1.0
    tempo = rng.normal(120.0, 10.0, 27)
    z, kept = robust_z(np.column_stack([flat, tempo, np.full(27, 2.0)]))
    assert list(kept) == [0, 1]  # the constant column is dropped
    assert abs(z[5, 0]) <= Z_CAP and z[5, 0] > 5  # far out, but a bounded, readable number
    assert np.all(np.abs(np.delete(z[:, 0], 5)) < 1)  # the ordinary tracks are ordinary
    gaussian = z[:, 1]
    assert 0.5 < float(np.std(gaussian)) < 1.5  # MAD scale: about one standard deviation


def test_non_finite_features_are_refused_naming_row_and_feature() -> None:
    ids, matrix, names = gaussian_catalog()
    matrix[17, 4] = np.nan
    with pytest.raises(DataFormatError) as info:
        feature_outliers(ids, matrix, names)
    assert "t0017" in str(info.value) and "feat_04" in str(info.value)
    matrix[17, 4] = np.inf
    with pytest.raises(DataFormatError, match="t0017"):
        feature_outliers(ids, matrix, names)


def test_few_rows_fit_no_model_and_say_so() -> None:
    ids, matrix, names = gaussian_catalog(n=5)
    scores = feature_outliers(ids, matrix, names)
    assert len(scores) == 5
    assert not any(s.is_outlier for s in scores)
    assert all("no outlier model" in s.note for s in scores)
    assert outlier_flags(scores) == []
    assert feature_outliers([], np.zeros((0, 3)), ["a", "b", "c"]) == []
    with pytest.raises(InvalidInputError):
        feature_outliers(ids, matrix, names[:3])
    with pytest.raises(InvalidInputError):
        feature_outliers(ids, matrix, names, contamination=0.7)
    assert isinstance(scores[0], OutlierScore)
