"""One-STFT feature extraction against librosa references computed on the same synthetic signal.

Tolerances, and why:

* The reference spectrogram is ``np.abs(librosa.stft(y))``: librosa windows in float64 and stores complex64,
  our STFT runs in float32. Bins therefore differ by float32 rounding relative to the frame's largest bin
  (~1e-7 of the peak), which is what every tolerance below is sized from.
* log-mel: atol 0.01 dB (observed < 1e-3; a 1e-7 relative power change is 4e-7 dB, quiet bands see more).
* MFCC: atol 0.02: the orthonormal DCT bounds each coefficient's error by the L2 norm of the log-mel error
  (sqrt(128) * 1e-3 dB).
* onset strength: atol 0.005 (mean of positive differences of two log-mel frames: twice the log-mel error).
* chroma (in [0, 1]): atol 1e-5; rms, centroid, bandwidth: rtol 1e-5 (float32 sums of 1025 bins).
* flatness: rtol 1e-3: the geometric mean is dominated by the quietest bins, where the float32 rounding is
  largest relative to the value.
* contrast: atol 0.1 dB end to end: a valley (the quietest 2 % of a band's bins, down to a single bin) can lie
  60-80 dB below the frame's peak, where float32 rounding of ~1e-7 of the peak is ~1 % of the value. On the
  same spectrogram the vectorised contrast equals librosa's to 1e-3 dB (its float32 means, summed in
  another order).
* rolloff: exact in almost every frame; a rounding tie may move one frame by one bin (sr / n_fft Hz).
* zero-crossing rate: exact (integer counts over identical frames).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import numpy.typing as npt
import pydantic
import pytest
import scipy.fft

from aitasks.audio_analysis import features as feat
from aitasks.audio_analysis.features import (
    FeatureConfig,
    TrackFeatures,
    extract_features,
    feature_names,
    integrated_loudness,
)
from aitasks.runtime.errors import DataFormatError

SR = 22050
N_FFT = 2048
HOP = 512


def synthetic_signal(seconds: float = 8.0, sr: int = SR, bpm: float = 120.0, seed: int = 0) -> npt.NDArray[np.float32]:
    """Harmonic tones with vibrato, percussive noise clicks at ``bpm``, two noise bursts and a low noise floor."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    y = np.zeros_like(t)
    for f0, amp in ((220.0, 0.3), (330.0, 0.15), (523.25, 0.1)):
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.01 * np.sin(2 * np.pi * 5.0 * t))) / sr
        for h in range(1, 5):
            y += amp / h * np.sin(h * phase)
    env = np.zeros_like(t)
    n = int(0.08 * sr)
    for start in np.arange(0.25, seconds, 60.0 / bpm):
        i = int(start * sr)
        m = min(n, t.size - i)
        env[i : i + m] += np.exp(-np.arange(m) / (0.01 * sr))
    y += 0.4 * env * rng.standard_normal(t.size)
    for s0, s1 in ((2.0, 2.6), (5.1, 5.5)):
        i0, i1 = min(int(s0 * sr), t.size), min(int(s1 * sr), t.size)
        y[i0:i1] += 0.2 * rng.standard_normal(i1 - i0)
    y += 1e-3 * rng.standard_normal(t.size)
    return np.asarray(0.5 * y / np.abs(y).max(), dtype=np.float32)


def click_track(bpm: float, seconds: float = 10.0, sr: int = SR) -> npt.NDArray[np.float32]:
    """Decaying 10 ms noise bursts every beat."""
    rng = np.random.default_rng(1)
    y = np.zeros(int(seconds * sr), np.float32)
    n = int(0.01 * sr)
    burst = (rng.standard_normal(n) * np.exp(-np.arange(n) / (0.002 * sr))).astype(np.float32)
    for t0 in np.arange(0.1, seconds - 0.02, 60.0 / bpm):
        i = round(t0 * sr)
        y[i : i + n] += burst[: y.size - i]
    return np.asarray(0.5 * y / np.abs(y).max(), dtype=np.float32)


def sine(freq: float, seconds: float, sr: int, amp: float = 1.0) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


@pytest.fixture(scope="module")
def signal() -> np.ndarray:
    return synthetic_signal()


@pytest.fixture(scope="module")
def result(signal: np.ndarray) -> TrackFeatures:
    return extract_features(signal, SR, frames=True)


@pytest.fixture(scope="module")
def reference(signal: np.ndarray) -> dict[str, np.ndarray]:
    """librosa's features of the same signal, from librosa's own STFT."""
    mag = np.abs(librosa.stft(signal, n_fft=N_FFT, hop_length=HOP))
    power = mag**2
    log_mel = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=SR))
    return {
        "log_mel": log_mel,
        "mfcc": librosa.feature.mfcc(S=log_mel, n_mfcc=20),
        "chroma": librosa.feature.chroma_stft(S=power, sr=SR, tuning=0.0),
        "contrast": librosa.feature.spectral_contrast(S=mag, sr=SR),
        "centroid": librosa.feature.spectral_centroid(S=mag, sr=SR)[0],
        "bandwidth": librosa.feature.spectral_bandwidth(S=mag, sr=SR)[0],
        "rolloff": librosa.feature.spectral_rolloff(S=mag, sr=SR)[0],
        "flatness": librosa.feature.spectral_flatness(S=mag)[0],
        "rms": librosa.feature.rms(S=mag, frame_length=N_FFT)[0],
        "zcr": librosa.feature.zero_crossing_rate(signal, frame_length=N_FFT, hop_length=HOP)[0],
        "onset_strength": librosa.onset.onset_strength(y=signal, sr=SR),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Frame-level features against librosa


def test_log_mel_matches_librosa(result: TrackFeatures, reference: dict[str, np.ndarray]) -> None:
    assert result.log_mel is not None
    assert result.log_mel.dtype == np.float32
    assert result.log_mel.shape == reference["log_mel"].shape
    np.testing.assert_allclose(result.log_mel, reference["log_mel"], rtol=0, atol=0.01)


@pytest.mark.parametrize(
    ("name", "rtol", "atol"),
    [
        ("mfcc", 0, 0.02),
        ("chroma", 0, 1e-5),
        ("contrast", 0, 0.1),
        ("centroid", 1e-5, 1e-3),
        ("bandwidth", 1e-5, 1e-3),
        ("flatness", 1e-3, 1e-9),
        ("rms", 1e-5, 1e-9),
        ("onset_strength", 0, 0.005),
    ],
)
def test_frame_feature_matches_librosa(
    result: TrackFeatures, reference: dict[str, np.ndarray], name: str, rtol: float, atol: float
) -> None:
    assert result.frames is not None
    ours = result.frames[name]
    assert ours.dtype == np.float32
    assert ours.shape == reference[name].shape
    np.testing.assert_allclose(ours, reference[name], rtol=rtol, atol=atol)


@pytest.mark.parametrize(("sr", "n_fft", "n_bands", "fmin"), [(SR, N_FFT, 6, 200.0), (16000, 1024, 5, 150.0)])
def test_vectorised_contrast_equals_librosa_on_the_same_spectrogram(
    signal: np.ndarray, sr: int, n_fft: int, n_bands: int, fmin: float
) -> None:
    mag, _, _ = feat._stft(signal, n_fft, n_fft // 4)
    bands = feat._contrast_bands(sr, n_fft, fmin, n_bands, 0.02)
    ours = feat._contrast(mag, bands)
    ref = librosa.feature.spectral_contrast(S=mag.T, sr=sr, n_fft=n_fft, n_bands=n_bands, fmin=fmin)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-3)


def test_bandwidth_of_a_pure_tone_does_not_cancel() -> None:
    """A narrow 5 kHz line: E[f^2] - centroid^2 would lose the bandwidth to float32 cancellation."""
    mag, _, _ = feat._stft(sine(5000.0, 1.0, SR, amp=0.5), N_FFT, HOP)
    centroid, bandwidth = feat._centroid_bandwidth(mag, SR, N_FFT)
    ref_centroid = librosa.feature.spectral_centroid(S=mag.T, sr=SR)[0]
    ref_bandwidth = librosa.feature.spectral_bandwidth(S=mag.T, sr=SR)[0]
    assert np.median(ref_bandwidth) < 100.0  # narrow indeed, at a centroid of 5 kHz
    np.testing.assert_allclose(centroid, ref_centroid, rtol=1e-5)
    np.testing.assert_allclose(bandwidth, ref_bandwidth, rtol=1e-4)


def test_zero_crossing_rate_is_exact(result: TrackFeatures, reference: dict[str, np.ndarray]) -> None:
    assert result.frames is not None
    np.testing.assert_array_equal(result.frames["zcr"], reference["zcr"].astype(np.float32))


def test_rolloff_matches_librosa_to_the_bin(result: TrackFeatures, reference: dict[str, np.ndarray]) -> None:
    assert result.frames is not None
    ours, ref = result.frames["rolloff"], reference["rolloff"]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=SR / N_FFT * 1.01)
    assert np.mean(np.isclose(ours, ref, rtol=1e-6)) >= 0.99


def test_frame_count_and_layout(result: TrackFeatures, signal: np.ndarray) -> None:
    assert result.frames is not None
    n_frames = 1 + signal.size // HOP
    assert result.frames["mfcc"].shape == (20, n_frames)
    assert result.frames["chroma"].shape == (12, n_frames)
    assert result.frames["contrast"].shape == (7, n_frames)
    for name in ("centroid", "bandwidth", "rolloff", "flatness", "zcr", "rms", "onset_strength"):
        assert result.frames[name].shape == (n_frames,)


def test_non_default_config_matches_librosa() -> None:
    """Odd sizes: 16 kHz, n_fft 1024, hop 256, 64 mels, fmin/fmax set, 5 contrast bands from 150 Hz."""
    sr, cfg = 16000, FeatureConfig(n_fft=1024, hop_length=256, n_mels=64, n_mfcc=13, fmin=30.0, fmax=7000.0)
    cfg = cfg.model_copy(update={"contrast_bands": 5, "contrast_fmin": 150.0, "percentiles": (25, 75)})
    y = synthetic_signal(seconds=3.0, sr=sr, seed=3)
    out = extract_features(y, sr, cfg, frames=True)
    assert out.frames is not None and out.log_mel is not None
    mag = np.abs(librosa.stft(y, n_fft=1024, hop_length=256))
    log_mel = librosa.power_to_db(librosa.feature.melspectrogram(S=mag**2, sr=sr, n_mels=64, fmin=30.0, fmax=7000.0))
    np.testing.assert_allclose(out.log_mel, log_mel, atol=0.01)
    np.testing.assert_allclose(out.frames["mfcc"], librosa.feature.mfcc(S=log_mel, n_mfcc=13), atol=0.02)
    contrast = librosa.feature.spectral_contrast(S=mag, sr=sr, n_bands=5, fmin=150.0)
    np.testing.assert_allclose(out.frames["contrast"], contrast, atol=0.1)
    onset = librosa.onset.onset_strength(S=log_mel, sr=sr, n_fft=1024, hop_length=256)
    np.testing.assert_allclose(out.frames["onset_strength"], onset, atol=0.005)
    zcr = librosa.feature.zero_crossing_rate(y, frame_length=1024, hop_length=256)[0]
    np.testing.assert_array_equal(out.frames["zcr"], zcr.astype(np.float32))
    assert out.values.shape == (len(feature_names(cfg)),)
    assert "mfcc_12_p75" in out.names and "mfcc_13_mean" not in out.names


@pytest.mark.parametrize(("sr", "n_fft", "hop", "amp"), [(SR, 1000, 300, 0.5), (8000, 4096, 1024, 1e6)])
def test_spectral_statistics_at_odd_sizes_and_extreme_levels_match_librosa(
    sr: int, n_fft: int, hop: int, amp: float
) -> None:
    """n_fft 1000: 501 bins, not whole rolloff groups (a 21-bin last group) nor a power of two; a peak of 1e6 at
    n_fft 4096 puts bins above 1e9, where the flatness takes products of fewer bins."""
    cfg = FeatureConfig(n_fft=n_fft, hop_length=hop, contrast_bands=3, contrast_fmin=300.0)
    y = synthetic_signal(seconds=3.0, sr=sr, seed=5) * np.float32(amp)
    out = extract_features(y, sr, cfg, frames=True)
    assert out.frames is not None
    mag = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop))
    np.testing.assert_allclose(out.frames["centroid"], librosa.feature.spectral_centroid(S=mag, sr=sr)[0], rtol=1e-5)
    np.testing.assert_allclose(out.frames["bandwidth"], librosa.feature.spectral_bandwidth(S=mag, sr=sr)[0], rtol=1e-5)
    np.testing.assert_allclose(out.frames["flatness"], librosa.feature.spectral_flatness(S=mag)[0], rtol=1e-3)
    rolloff = librosa.feature.spectral_rolloff(S=mag, sr=sr)[0]
    np.testing.assert_allclose(out.frames["rolloff"], rolloff, rtol=0, atol=sr / n_fft * 1.01)
    assert np.mean(np.isclose(out.frames["rolloff"], rolloff, rtol=1e-6)) >= 0.99


@pytest.mark.parametrize(("n_fft", "hop"), [(2048, 512), (1024, 256), (1024, 512), (2048, 300), (16, 16)])
@pytest.mark.parametrize("size", [1, 511, 512, 513, 2047, 2048, 2049, 22050])
def test_zero_crossing_rate_is_exact_at_every_edge(n_fft: int, hop: int, size: int) -> None:
    """Whole hops (counted per hop) and other hops (counted per crossing) both equal librosa's framing."""
    rng = np.random.default_rng(size)
    y = (rng.standard_normal(size) * (rng.random(size) > 0.3)).astype(np.float32)
    y[: size // 5] = 0.0
    ours = feat._zero_crossing_rate(y, 1 + size // hop, n_fft, hop)
    ref = librosa.feature.zero_crossing_rate(y, frame_length=n_fft, hop_length=hop)[0]
    np.testing.assert_array_equal(ours.astype(np.float32), ref.astype(np.float32))


@pytest.mark.parametrize(
    ("sr", "n_fft", "n_mels", "fmin", "fmax", "n_chroma"),
    [(SR, 2048, 128, 0.0, None, 12), (16000, 1024, 40, 50.0, 7000.0, 24), (44100, 4096, 64, 20.0, None, 36)],
)
def test_filter_banks_and_windows_equal_librosa_and_scipy(
    sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None, n_chroma: int
) -> None:
    """Built with numpy alone (a worker imports neither librosa nor scipy.signal for them), bit for bit."""
    import scipy.signal

    mel = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    np.testing.assert_array_equal(feat._mel_basis(sr, n_fft, n_mels, fmin, fmax), mel)
    chroma = librosa.filters.chroma(sr=sr, n_fft=n_fft, n_chroma=n_chroma, tuning=0.0)
    np.testing.assert_array_equal(feat._chroma_basis(sr, n_fft, n_chroma), chroma)
    np.testing.assert_array_equal(feat._fft_frequencies(sr, n_fft), librosa.fft_frequencies(sr=sr, n_fft=n_fft))
    for length in (n_fft, 344, 1000):
        np.testing.assert_array_equal(feat._hann(length), scipy.signal.get_window("hann", length, fftbins=True))


def test_cached_banks_are_read_only() -> None:
    bank = feat._power_bank(SR, N_FFT, 12)
    with pytest.raises(ValueError, match="read-only"):
        bank[0, 0] = 1.0


def test_importing_the_extractor_loads_neither_librosa_nor_scipy_signal() -> None:
    """Worker start-up: the fork server imports the extractor; librosa (numba) and scipy.signal cost seconds."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "import aitasks.audio_analysis.analyze\n"
        "assert 'librosa' not in sys.modules and 'scipy.signal' not in sys.modules, 'imported at import'\n"
        "from aitasks.audio_analysis.features import extract_features\n"
        "extract_features(np.zeros(22050, np.float32), 22050)\n"
        "assert 'librosa' not in sys.modules, 'librosa imported by an extraction'\n"
        "assert 'scipy.signal' not in sys.modules, 'scipy.signal imported by an extraction'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def test_k_weighting_in_two_lanes_equals_one_pass() -> None:
    """The two-lane K-weighting gives the one-pass filter's step energies to float64 rounding."""
    import scipy.signal

    y = synthetic_signal(seconds=30.0, seed=6)
    step = round(0.4 * SR) // 4
    y = y[: y.size // step * step]
    sos = feat._k_weighting(SR)
    reference = scipy.signal.sosfilt(sos, y.astype(np.float64)) ** 2
    expected = reference.reshape(-1, step).sum(axis=1)
    got = feat._k_weighted_steps(y, sos, step)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize(("seconds", "sr"), [(0.3, 22050), (3.0, 11025)])
def test_k_weighting_per_sample_equals_scipy(seconds: float, sr: int) -> None:
    """``step = 1`` (short signals, uneven quarter blocks): every sample's square, one lane and two."""
    import scipy.signal

    y = synthetic_signal(seconds=seconds, seed=7)
    sos = feat._k_weighting(sr)
    expected = scipy.signal.sosfilt(sos, y.astype(np.float64)) ** 2
    np.testing.assert_allclose(feat._k_weighted_steps(y, sos, 1), expected, rtol=1e-12, atol=1e-300)


def test_k_weighting_kernel_is_compiled_once() -> None:
    """The numba kernel is built once per process (the fork server's preload builds it for every worker)."""
    assert feat._k_weighted_kernel() is feat._k_weighted_kernel()


# ---------------------------------------------------------------------------------------------------------------------
# Tempo and loudness


@pytest.mark.parametrize("bpm", [120.0, 90.0])
def test_tempo_of_click_track(bpm: float) -> None:
    assert extract_features(click_track(bpm), SR).tempo_bpm == pytest.approx(bpm, abs=2.0)


def test_tempo_agrees_with_librosa_up_to_lag_quantisation(result: TrackFeatures, signal: np.ndarray) -> None:
    """librosa reports the best integer lag; ours is refined between lags, so they agree within one lag."""
    ref_bpm = float(librosa.feature.tempo(y=signal, sr=SR, hop_length=HOP)[0])
    lag = 60.0 * SR / HOP
    assert abs(lag / result.tempo_bpm - lag / ref_bpm) <= 1.0
    assert result.values[result.names.index("tempo_bpm")] == np.float32(result.tempo_bpm)


def test_loudness_of_full_scale_997hz_sine_at_48k() -> None:
    """BS.1770-4: a 0 dBFS 997 Hz sine reads -3.01 LUFS."""
    assert integrated_loudness(sine(997.0, 5.0, 48000), 48000) == pytest.approx(-3.01, abs=0.1)


def test_loudness_at_22050_hz_uses_filters_designed_for_that_rate() -> None:
    assert integrated_loudness(sine(997.0, 5.0, SR), SR) == pytest.approx(-3.01, abs=0.3)


@pytest.mark.parametrize("sr", [48000, SR])
def test_minus_20_db_shifts_loudness_by_minus_20(sr: int) -> None:
    y = synthetic_signal(seconds=4.0, sr=sr, seed=2)
    shift = integrated_loudness(y * np.float32(0.1), sr) - integrated_loudness(y, sr)
    assert shift == pytest.approx(-20.0, abs=0.05)


def test_loudness_gates_silence_and_floors_at_minus_70() -> None:
    y = sine(997.0, 10.0, 48000)
    y[5 * 48000 :] = 0.0  # half silence: absolutely gated, so loudness stays near the tone's
    assert integrated_loudness(y, 48000) == pytest.approx(-3.01, abs=0.2)
    assert integrated_loudness(np.zeros(48000, np.float32), 48000) == -70.0
    assert integrated_loudness(sine(997.0, 2.0, 48000, amp=1e-5), 48000) == -70.0  # ~ -103 LUFS: below the gate
    assert extract_features(np.zeros(SR, np.float32), SR).loudness_lufs == -70.0


# ---------------------------------------------------------------------------------------------------------------------
# The summary vector


def test_vector_names_and_values(result: TrackFeatures, signal: np.ndarray) -> None:
    names = feature_names()
    assert result.names == names
    assert len(names) == len(set(names)) == result.values.shape[0] < 250
    assert result.values.dtype == np.float32
    assert np.isfinite(result.values).all()
    for name in ("mfcc_03_mean", "chroma_07_p90", "contrast_06_p10", "centroid_std", "onset_strength_p50"):
        assert name in names
    assert names[-3:] == ("tempo_bpm", "loudness_lufs", "duration_s")
    assert result.values[-1] == np.float32(signal.size / SR)
    assert result.values[-2] == np.float32(result.loudness_lufs)


def test_summaries_are_the_frame_statistics(result: TrackFeatures) -> None:
    assert result.frames is not None and result.log_mel is not None
    values = dict(zip(result.names, result.values.tolist(), strict=True))
    centroid = result.frames["centroid"].astype(np.float64)
    assert values["centroid_mean"] == pytest.approx(centroid.mean(), rel=1e-5)
    assert values["centroid_std"] == pytest.approx(centroid.std(), rel=1e-5)
    assert values["centroid_p90"] == pytest.approx(np.percentile(centroid, 90), rel=1e-5)
    chroma = result.frames["chroma"][7].astype(np.float64)
    assert values["chroma_07_p10"] == pytest.approx(np.percentile(chroma, 10), abs=1e-6)
    assert values["mfcc_03_p50"] == pytest.approx(np.median(result.frames["mfcc"][3]), rel=1e-5)
    assert values["logmel_00_mean"] == pytest.approx(result.log_mel[:16].mean(), rel=1e-5)


def test_deterministic_and_frames_flag(signal: np.ndarray, result: TrackFeatures) -> None:
    first = extract_features(signal, SR)
    second = extract_features(signal.copy(), SR)
    assert first.values.tobytes() == second.values.tobytes() == result.values.tobytes()
    assert first.log_mel is None and first.frames is None


def test_results_do_not_alias_the_reused_workspace(signal: np.ndarray) -> None:
    kept = extract_features(signal, SR, frames=True)
    assert kept.frames is not None and kept.log_mel is not None
    snapshot = {name: arr.copy() for name, arr in kept.frames.items()}
    log_mel, values = kept.log_mel.copy(), kept.values.copy()
    extract_features(synthetic_signal(seconds=12.0, seed=9), SR, frames=True)  # a longer track reuses the buffers
    integrated_loudness(synthetic_signal(seconds=3.0, seed=8), SR)
    np.testing.assert_array_equal(kept.values, values)
    np.testing.assert_array_equal(kept.log_mel, log_mel)
    for name, arr in snapshot.items():
        np.testing.assert_array_equal(kept.frames[name], arr)


def test_threads_get_their_own_workspace() -> None:
    signals = [synthetic_signal(seconds=3.0, seed=s) for s in range(4)]
    sequential = [extract_features(y, SR).values for y in signals]
    with ThreadPoolExecutor(max_workers=2) as pool:
        parallel = list(pool.map(lambda y: extract_features(y, SR).values, signals * 2))
    for got, want in zip(parallel, sequential * 2, strict=True):
        np.testing.assert_array_equal(got, want)


def test_names_follow_config() -> None:
    cfg = FeatureConfig(n_mfcc=13, n_chroma=24, percentiles=(5, 95), mel_summary_bands=4)
    names = feature_names(cfg)
    assert len(names) == (13 + 24 + 7 + 7) * 4 + 4 + 3
    assert names[:4] == ("mfcc_00_mean", "mfcc_00_std", "mfcc_00_p05", "mfcc_00_p95")
    assert "chroma_23_p95" in names and "logmel_03_mean" in names


def test_exactly_one_stft_per_call(monkeypatch: pytest.MonkeyPatch, signal: np.ndarray) -> None:
    """Every FFT entry point that librosa or we could use is spied: one transform of n_fft-long frames, no more."""
    calls: list[tuple[str, int, tuple[int, ...]]] = []

    def spy(lib: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(x: Any, n: int | None = None, axis: int = -1, *args: Any, **kwargs: Any) -> Any:
            shape = np.shape(x)
            calls.append((lib, n if n is not None else shape[axis], shape))
            return fn(x, n, axis, *args, **kwargs)

        return wrapper

    for module, lib in ((scipy.fft, "scipy"), (np.fft, "numpy")):
        for fn_name in ("rfft", "fft"):
            monkeypatch.setattr(module, fn_name, spy(f"{lib}.{fn_name}", getattr(module, fn_name)))
    stft_calls: list[int] = []
    real_stft = librosa.stft

    def spy_stft(*args: Any, **kwargs: Any) -> Any:
        stft_calls.append(1)
        return real_stft(*args, **kwargs)

    for module in (librosa, librosa.core, librosa.core.spectrum):
        monkeypatch.setattr(module, "stft", spy_stft)

    for obj in vars(feat).values():  # cold caches: building the filter banks must not transform anything either
        if hasattr(obj, "cache_clear"):
            obj.cache_clear()
    extract_features(signal, SR, frames=True)
    stfts = [c for c in calls if c[1] == N_FFT]
    assert len(stfts) == 1, calls
    assert stfts[0][2] == (1 + signal.size // HOP, N_FFT)  # all frames in that one transform
    assert stft_calls == []
    # The only other transform is the tempogram's autocorrelation of the onset envelope (one batched call).
    assert len(calls) <= 2, calls


# ---------------------------------------------------------------------------------------------------------------------
# Input handling


@pytest.mark.parametrize(
    ("y", "message"),
    [
        (np.zeros(0, np.float32), "empty"),
        (np.array([0.0, 0.1, np.nan, 0.2] * 100, np.float32), "non-finite"),
        (np.array([0.0, np.inf] * 100, np.float32), "non-finite"),
        (np.zeros((2, 1000), np.float32), "1-D"),
        (np.zeros(1000, np.int16), "floating-point"),
        (np.full(1000, 1e9, np.float32), "amplitude"),
    ],
)
def test_bad_signal_raises_data_format_error(y: np.ndarray, message: str) -> None:
    with pytest.raises(DataFormatError, match=message) as info:
        extract_features(y, SR)
    assert info.value.uri == "<signal>"
    with pytest.raises(DataFormatError, match=message):
        integrated_loudness(y, SR)


def test_nan_error_names_the_first_bad_index() -> None:
    y = np.zeros(1000, np.float32)
    y[[17, 400]] = np.nan
    with pytest.raises(DataFormatError, match=r"2 non-finite sample\(s\).*index 17"):
        extract_features(y, SR)


@pytest.mark.parametrize("sr", [0, -22050, 22050.0, True])
def test_bad_sample_rate(sr: Any) -> None:
    with pytest.raises(DataFormatError, match="sample rate"):
        extract_features(np.zeros(1000, np.float32), sr)


def test_sample_rate_too_low_for_contrast_bands() -> None:
    with pytest.raises(DataFormatError, match="contrast"):
        extract_features(np.zeros(8000, np.float32), 8000)
    ok = extract_features(np.zeros(8000, np.float32), 8000, FeatureConfig(contrast_bands=4))
    assert np.isfinite(ok.values).all()
    with pytest.raises(DataFormatError, match="Nyquist"):
        extract_features(np.zeros(8000, np.float32), SR, FeatureConfig(fmax=12000.0))


@pytest.mark.parametrize("seconds", [0.1, 0.05, 1 / SR])
def test_short_signals_work(seconds: float) -> None:
    y = synthetic_signal(seconds=seconds, seed=4) if seconds > 0.01 else np.array([0.5], np.float32)
    out = extract_features(y, SR, frames=True)
    assert np.isfinite(out.values).all()
    assert out.values.shape == (len(feature_names()),)
    assert out.frames is not None and out.frames["rms"].shape == (1 + y.size // HOP,)
    if y.size >= N_FFT:  # librosa warns (but agrees) below n_fft; compare where it is quiet
        mag = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP))
        np.testing.assert_allclose(
            out.frames["centroid"], librosa.feature.spectral_centroid(S=mag, sr=SR)[0], rtol=1e-5
        )


def test_digital_silence_is_finite_with_librosa_semantics() -> None:
    out = extract_features(np.zeros(2 * SR, np.float32), SR, frames=True)
    assert np.isfinite(out.values).all()
    assert out.frames is not None
    np.testing.assert_allclose(out.frames["flatness"], 1.0, rtol=1e-5)  # amin / amin, as librosa
    np.testing.assert_array_equal(out.frames["centroid"], 0.0)
    np.testing.assert_array_equal(out.frames["contrast"], 0.0)
    np.testing.assert_array_equal(out.frames["chroma"], 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = librosa.feature.spectral_flatness(y=np.zeros(2 * SR, np.float32))[0]
    np.testing.assert_allclose(out.frames["flatness"], ref, rtol=1e-5)


def test_config_validation() -> None:
    with pytest.raises(pydantic.ValidationError, match="hop_length"):
        FeatureConfig(n_fft=512, hop_length=1024)
    with pytest.raises(pydantic.ValidationError):
        FeatureConfig(n_mels=0)
    with pytest.raises(pydantic.ValidationError, match="n_mfcc"):
        FeatureConfig(n_mels=16, n_mfcc=20)
    with pytest.raises(pydantic.ValidationError, match="distinct"):
        FeatureConfig(percentiles=(50, 50))
    with pytest.raises(pydantic.ValidationError):
        FeatureConfig(percentiles=(101,))
    with pytest.raises(pydantic.ValidationError):
        FeatureConfig(unknown=1)  # type: ignore[call-arg]
    cfg = FeatureConfig()
    with pytest.raises(pydantic.ValidationError):
        cfg.n_fft = 1024  # type: ignore[misc]
    assert hash(cfg) == hash(FeatureConfig())
    assert cfg == feat.DEFAULT_CONFIG


def test_kernel_is_cached_on_disk_only_in_a_writable_numba_cache_dir(tmp_path: Path) -> None:
    """A step (no NUMBA_CACHE_DIR, or one that does not exist) writes nothing: not into its home, not into the
    package; the CLI's cache directory gets the compiled kernel, and a second process loads it."""
    import os
    import subprocess
    import sys

    package = Path(feat.__file__).parent / "__pycache__"
    before = set(package.glob("*.nb[ic]")) if package.exists() else set()
    home = tmp_path / "home"
    home.mkdir()
    code = "from aitasks.audio_analysis.features import _k_weighted_kernel; _k_weighted_kernel()"
    base = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"} | {"HOME": str(home)}
    for extra in ({}, {"NUMBA_CACHE_DIR": str(tmp_path / "missing")}):
        done = subprocess.run(
            [sys.executable, "-c", code], env=base | extra, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
    assert not any(home.rglob("*")), sorted(home.rglob("*"))
    assert not (tmp_path / "missing").exists()
    assert (set(package.glob("*.nb[ic]")) if package.exists() else set()) == before

    cache = tmp_path / "cache"
    cache.mkdir()
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", code],
            env=base | {"NUMBA_CACHE_DIR": str(cache)},
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    assert [p.suffix for p in sorted(cache.rglob("*.nb[ic]"))].count(".nbi") == 1
