"""One-STFT audio feature extraction: frame-level features, their summaries, tempo and loudness.

Every spectral feature of a track is derived from a single short-time Fourier transform: the magnitude
``S = |STFT(y)|`` (centred frames, periodic Hann window, zero padding as librosa's default
``pad_mode="constant"``) and the power ``P = S**2``. The values match the corresponding librosa functions
applied to that spectrogram (``librosa.feature.melspectrogram``, ``mfcc``, ``chroma_stft`` with
``tuning=0.0``, ``spectral_centroid``, ``spectral_bandwidth``, ``spectral_rolloff``, ``spectral_flatness``,
``spectral_contrast``, ``rms(S=S)`` and ``librosa.onset.onset_strength``), but each is computed without a
Python loop over frames and without recomputing the STFT. Only the zero-crossing rate (librosa's framing,
``center=True``) and the loudness are computed in the time domain.

Conventions:

* the STFT runs in float32 (librosa windows in float64 and stores complex64): bins differ from librosa's
  by ~1e-7 of the frame's largest bin, which only shows in very quiet bins;
* the log-mel spectrogram is ``power_to_db(mel, ref=1.0, amin=1e-10, top_db=80.0)``, librosa's default
  and the input that ``librosa.feature.mfcc`` and ``librosa.onset.onset_strength`` use;
* chroma uses a fixed tuning of 0 (no per-track tuning estimation), so its filter bank can be cached;
* silence follows librosa's ``amin`` and normalisation rules (flatness 1, centroid 0, contrast 0, chroma 0),
  so every value stays finite without any NaN replacement;
* tempo follows ``librosa.feature.tempo`` (mean autocorrelation tempogram of the onset envelope, 8 s
  window, log-normal prior around 120 BPM), averaging every 4th tempogram frame (the windows overlap by
  99 %), and refines the winning lag by parabolic interpolation, so it is not quantised to
  ``60 * sr / (hop_length * lag)`` (117.45 or 123.05 BPM around 120 at the defaults);
* loudness is ITU-R BS.1770-4 integrated loudness, floored at -70 LUFS (silence); its K-weighting filter runs
  in a small numba kernel compiled on first use (once per process; see :func:`_k_weighted_kernel`);
* the large temporaries (windowed frames) live in a per-thread workspace kept between
  calls (at most 64 MiB), because faulting fresh memory in on every track costs as much as the FFT.

The summary vector holds, for every frame feature (each MFCC coefficient, chroma bin and contrast band,
then centroid, bandwidth, rolloff, flatness, zcr, rms, onset strength), the mean, the population standard
deviation and the configured percentiles (linear interpolation) over frames; then the mean log-mel energy
(dB) of ``mel_summary_bands`` contiguous groups of mel bands; then ``tempo_bpm``, ``loudness_lufs`` and
``duration_s`` (241 values at the defaults). :func:`feature_names` gives the names in the same order.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Final, TypeVar

import numpy as np
import numpy.typing as npt
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aitasks.runtime.errors import DataFormatError

__all__ = [
    "LOUDNESS_FLOOR_LUFS",
    "FeatureConfig",
    "TrackFeatures",
    "extract_features",
    "feature_names",
    "integrated_loudness",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
T = TypeVar("T", bound=np.generic)

SIGNAL_URI: Final = "<signal>"
#: Integrated loudness reported for silence (and anything that no gating block survives).
LOUDNESS_FLOOR_LUFS: Final = -70.0
#: Largest accepted absolute sample value; decoded audio is expected in [-1, 1].
MAX_ABS_AMPLITUDE: Final = 1e6

_AMIN: Final = 1e-10  # librosa's amin for power_to_db and spectral_flatness
_TOP_DB: Final = 80.0  # librosa's default dynamic range of power_to_db
_ZCR_THRESHOLD: Final = np.float32(1e-10)  # librosa.feature.zero_crossing_rate: |y| <= threshold counts as 0
_TINY32: Final = float(np.finfo(np.float32).tiny)  # librosa.util.normalize threshold for float32 input
_MEL_BLOCK: Final = 16  # mel filters per dense block of the banded mel product
_PRODUCT_LOG_MAX_POWER: Final = 1e18  # spectral flatness sums logs of products of bins up to this power
_ROLLOFF_GROUP: Final = 32  # bins per group of the rolloff's two-level search
_STATS_BLOCK: Final = 128  # frames per float64 block of the spectral moments (1 MB at n_fft 2048)

_WORKSPACE_MAX_BYTES: Final = 64 * 2**20  # per-thread scratch kept between calls (~3 min of audio at the defaults)
_LOUDNESS_WARMUP: Final = 4096  # samples a second filter lane runs before its first counted sample

# librosa.feature.tempo defaults
_TEMPO_START_BPM: Final = 120.0
_TEMPO_STD_BPM: Final = 1.0
_TEMPO_AC_SIZE_S: Final = 8.0
_TEMPO_MAX_BPM: Final = 320.0
_TEMPO_FRAME_STRIDE: Final = 4  # tempogram frames averaged: every 4th (8 s windows, so 99 % overlap)

# ITU-R BS.1770-4
_BLOCK_S: Final = 0.4
_ABSOLUTE_GATE_LUFS: Final = -70.0
_RELATIVE_GATE_LU: Final = -10.0
_LOUDNESS_OFFSET: Final = -0.691


class FeatureConfig(BaseModel):
    """Parameters of :func:`extract_features` (immutable; hashable, so usable as a cache key).

    Attributes:
        n_fft: FFT size and frame length, in samples (any size; powers of two are fastest).
        hop_length: Samples between successive frames; at most ``n_fft``.
        n_mels: Number of mel bands (Slaney mel scale and normalisation, as librosa's default).
        n_mfcc: Number of MFCC coefficients; at most ``n_mels``.
        fmin: Lowest mel band edge, in Hz.
        fmax: Highest mel band edge, in Hz; ``None`` means Nyquist.
        n_chroma: Number of chroma bins.
        contrast_bands: Number of octave bands of the spectral contrast (it yields ``contrast_bands + 1`` rows).
        contrast_fmin: Upper edge of the lowest contrast band, in Hz.
        contrast_quantile: Fraction of each band's bins averaged for its peak and valley.
        rolloff_percent: Fraction of spectral magnitude below the rolloff frequency.
        percentiles: Percentiles (0-100, distinct) summarised for every frame feature.
        mel_summary_bands: Contiguous groups of mel bands whose mean log-mel energy enters the vector.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_fft: int = Field(2048, ge=16, le=65536)
    hop_length: int = Field(512, ge=1)
    n_mels: int = Field(128, ge=1, le=1024)
    n_mfcc: int = Field(20, ge=1)
    fmin: float = Field(0.0, ge=0.0)
    fmax: float | None = Field(None, gt=0.0)
    n_chroma: int = Field(12, ge=1, le=120)
    contrast_bands: int = Field(6, ge=1, le=12)
    contrast_fmin: float = Field(200.0, gt=0.0)
    contrast_quantile: float = Field(0.02, gt=0.0, lt=1.0)
    rolloff_percent: float = Field(0.85, gt=0.0, lt=1.0)
    percentiles: tuple[Annotated[int, Field(ge=0, le=100)], ...] = (10, 50, 90)
    mel_summary_bands: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> FeatureConfig:
        if self.hop_length > self.n_fft:
            raise ValueError(f"hop_length ({self.hop_length}) must not exceed n_fft ({self.n_fft})")
        if self.n_mfcc > self.n_mels:
            raise ValueError(f"n_mfcc ({self.n_mfcc}) must not exceed n_mels ({self.n_mels})")
        if self.mel_summary_bands > self.n_mels:
            raise ValueError(f"mel_summary_bands ({self.mel_summary_bands}) must not exceed n_mels ({self.n_mels})")
        if self.fmax is not None and self.fmax <= self.fmin:
            raise ValueError(f"fmax ({self.fmax}) must be greater than fmin ({self.fmin})")
        if len(set(self.percentiles)) != len(self.percentiles):
            raise ValueError(f"percentiles must be distinct, got {self.percentiles}")
        return self


DEFAULT_CONFIG: Final = FeatureConfig()


@dataclass(frozen=True)
class TrackFeatures:
    """Features of one track.

    Attributes:
        names: Feature names, equal to ``feature_names(cfg)``.
        values: Feature values in the order of ``names``; float32, all finite.
        tempo_bpm: Estimated global tempo, in beats per minute.
        loudness_lufs: ITU-R BS.1770-4 integrated loudness; -70.0 for silence.
        duration_s: Signal duration in seconds.
        log_mel: ``(n_mels, frames)`` float32 log-mel spectrogram in dB (``power_to_db``, ref 1.0, amin 1e-10,
            top_db 80); only with ``frames=True`` or ``log_mel=True``.
        frames: Frame-level features by name, float32, librosa's layout (``(rows, frames)`` for mfcc, chroma and
            contrast, ``(frames,)`` otherwise); only with ``frames=True``.
    """

    names: tuple[str, ...]
    values: F32
    tempo_bpm: float
    loudness_lufs: float
    duration_s: float
    log_mel: F32 | None = None
    frames: dict[str, F32] | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Names


_SCALAR_FRAME_FEATURES: Final = ("centroid", "bandwidth", "rolloff", "flatness", "zcr", "rms", "onset_strength")


def _indexed(prefix: str, count: int) -> list[str]:
    width = max(2, len(str(count - 1)))
    return [f"{prefix}_{i:0{width}d}" for i in range(count)]


def _frame_rows(cfg: FeatureConfig) -> list[str]:
    return [
        *_indexed("mfcc", cfg.n_mfcc),
        *_indexed("chroma", cfg.n_chroma),
        *_indexed("contrast", cfg.contrast_bands + 1),
        *_SCALAR_FRAME_FEATURES,
    ]


@functools.lru_cache(maxsize=64)
def feature_names(cfg: FeatureConfig = DEFAULT_CONFIG) -> tuple[str, ...]:
    """Names of the summary vector for ``cfg``, in order (stable, unique).

    Args:
        cfg: Feature configuration.

    Returns:
        For each frame feature row ``<row>_mean``, ``<row>_std`` and ``<row>_pNN`` per percentile; then
        ``logmel_NN_mean`` per mel group; then ``tempo_bpm``, ``loudness_lufs`` and ``duration_s``.
    """
    stats = ["mean", "std", *(f"p{p:02d}" for p in cfg.percentiles)]
    names = [f"{row}_{stat}" for row in _frame_rows(cfg) for stat in stats]
    names += [f"{group}_mean" for group in _indexed("logmel", cfg.mel_summary_bands)]
    names += ["tempo_bpm", "loudness_lufs", "duration_s"]
    return tuple(names)


# ---------------------------------------------------------------------------------------------------------------------
# Cached filter banks and constants (keyed on plain hashables)


@functools.lru_cache(maxsize=16)
def _hann(length: int) -> F64:
    """Periodic Hann window, bit for bit as ``scipy.signal.get_window("hann", length, fftbins=True)``.

    Computed here so that no worker imports ``scipy.signal`` just for a window: scipy's general cosine
    window is ``0.5 + 0.5 * cos(linspace(-pi, pi, length + 1))`` with the last point dropped.
    """
    fac = np.linspace(-np.pi, np.pi, length + 1)[:length]
    return _read_only(0.5 + 0.5 * np.cos(fac))


@functools.lru_cache(maxsize=16)
def _window(n_fft: int) -> F32:
    return _read_only(_hann(n_fft).astype(np.float32))


@functools.lru_cache(maxsize=16)
def _fft_frequencies(sr: int, n_fft: int) -> F64:
    """``librosa.fft_frequencies``: the centre frequency of every rfft bin."""
    return _read_only(np.asarray(np.fft.rfftfreq(n=n_fft, d=1.0 / sr), dtype=np.float64))


# Slaney's mel scale (librosa.hz_to_mel / mel_to_hz with htk=False): linear below 1 kHz, logarithmic above.
_MEL_F_SP: Final = 200.0 / 3
_MEL_MIN_LOG_HZ: Final = 1000.0
_MEL_MIN_LOG_MEL: Final = _MEL_MIN_LOG_HZ / _MEL_F_SP
_MEL_LOGSTEP: Final = float(np.log(6.4) / 27.0)


def _hz_to_mel(hz: F64) -> F64:
    mels = hz / _MEL_F_SP
    log_t = hz >= _MEL_MIN_LOG_HZ
    mels[log_t] = _MEL_MIN_LOG_MEL + np.log(hz[log_t] / _MEL_MIN_LOG_HZ) / _MEL_LOGSTEP
    return mels


def _mel_to_hz(mels: F64) -> F64:
    hz = _MEL_F_SP * mels
    log_t = mels >= _MEL_MIN_LOG_MEL
    hz[log_t] = _MEL_MIN_LOG_HZ * np.exp(_MEL_LOGSTEP * (mels[log_t] - _MEL_MIN_LOG_MEL))
    return hz


def _mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> F32:
    """``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)`` (Slaney scale and norm).

    The same operations in the same order as librosa 0.11, so the float32 weights are equal to librosa's (a test
    holds them to it); computed here because importing librosa costs a worker seconds.
    """
    top = float(sr) / 2 if fmax is None else fmax
    edges = _hz_to_mel(np.array([fmin, top], dtype=np.float64))
    mel_f = _mel_to_hz(np.linspace(edges[0], edges[1], n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, _fft_frequencies(sr, n_fft))
    lower = -ramps[:n_mels] / fdiff[:n_mels, None]
    upper = ramps[2 : n_mels + 2] / fdiff[1 : n_mels + 1, None]
    weights = np.maximum(0, np.minimum(lower, upper)).astype(np.float32)
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]  # float32 *= float64: computed in float64, stored as float32, as librosa
    return weights


def _chroma_basis(sr: int, n_fft: int, n_chroma: int) -> F32:
    """``librosa.filters.chroma(sr=sr, n_fft=n_fft, n_chroma=n_chroma, tuning=0.0)`` (ctroct 5, octwidth 2, norm 2,
    base C), with librosa 0.11's operations in its order; a test holds the weights to librosa's."""
    frequencies = np.linspace(0, sr, n_fft, endpoint=False)[1:]
    a440_over_16 = 440.0 / 16  # 440 * 2 ** (tuning / n_chroma) / 16 with tuning 0
    frqbins = n_chroma * np.log2(frequencies / a440_over_16)
    frqbins = np.concatenate(([frqbins[0] - 1.5 * n_chroma], frqbins))
    binwidthbins = np.concatenate((np.maximum(frqbins[1:] - frqbins[:-1], 1.0), [1]))
    d = np.subtract.outer(frqbins, np.arange(0, n_chroma, dtype="d")).T
    n_chroma2 = np.round(float(n_chroma) / 2)
    d = np.remainder(d + n_chroma2 + 10 * n_chroma, n_chroma) - n_chroma2
    wts = np.exp(-0.5 * (2 * d / np.tile(binwidthbins, (n_chroma, 1))) ** 2)
    # librosa.util.normalize(wts, norm=2, axis=0): columns of (near) zero length are left as they are.
    length = np.sum(np.abs(wts) ** 2, axis=0, keepdims=True) ** (1.0 / 2)
    length[length < np.finfo(wts.dtype).tiny] = 1.0
    wts = wts / length
    wts *= np.tile(np.exp(-0.5 * (((frqbins / n_chroma - 5.0) / 2) ** 2)), (n_chroma, 1))
    wts = np.roll(wts, -3 * (n_chroma // 12), axis=0)
    return np.ascontiguousarray(wts[:, : int(1 + n_fft / 2)], dtype=np.float32)


def _read_only(arr: npt.NDArray[T]) -> npt.NDArray[T]:
    """Cached arrays are shared by every call (and every worker forked after they were built): freeze them."""
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True)
class _MelBank:
    """Mel filter bank stored as dense blocks of consecutive filters over the bins they touch."""

    n_mels: int
    blocks: tuple[tuple[int, int, int, int, F32], ...]  # (mel_lo, mel_hi, bin_lo, bin_hi, weights[bin, mel])


@functools.lru_cache(maxsize=16)
def _mel_bank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> _MelBank:
    basis = _mel_basis(sr, n_fft, n_mels, fmin, fmax)
    blocks = []
    for lo in range(0, n_mels, _MEL_BLOCK):
        hi = min(lo + _MEL_BLOCK, n_mels)
        touched = np.flatnonzero(np.any(basis[lo:hi] != 0, axis=0))
        if touched.size == 0:  # filters narrower than a bin are all-zero; their output stays 0
            continue
        b_lo, b_hi = int(touched[0]), int(touched[-1]) + 1
        blocks.append((lo, hi, b_lo, b_hi, _read_only(np.ascontiguousarray(basis[lo:hi, b_lo:b_hi].T))))
    return _MelBank(n_mels=n_mels, blocks=tuple(blocks))


@functools.lru_cache(maxsize=16)
def _chroma_bank(sr: int, n_fft: int, n_chroma: int) -> F32:
    return _read_only(np.ascontiguousarray(_chroma_basis(sr, n_fft, n_chroma).T))  # (bins, n_chroma)


@functools.lru_cache(maxsize=16)
def _dct_matrix(n_mels: int, n_mfcc: int) -> F32:
    """DCT-II (orthonormal) as a ``(n_mels, n_mfcc)`` matrix: ``log_mel @ D`` equals librosa's MFCC."""
    basis = scipy.fft.dct(np.eye(n_mels), type=2, norm="ortho", axis=0)[:n_mfcc]
    return np.ascontiguousarray(np.asarray(basis, dtype=np.float32).T)


@functools.lru_cache(maxsize=16)
def _rms_weights(n_fft: int) -> F32:
    """librosa.feature.rms(S=...): DC (and Nyquist for even n_fft) count half, power = 2 * sum / n_fft**2."""
    weights = np.ones(n_fft // 2 + 1)
    weights[0] = 0.5
    if n_fft % 2 == 0:
        weights[-1] = 0.5
    return _read_only(np.asarray(weights * (2.0 / float(n_fft) ** 2), dtype=np.float32))


@functools.lru_cache(maxsize=16)
def _power_bank(sr: int, n_fft: int, n_chroma: int) -> F32:
    """``(bins, n_chroma + 2)``: the chroma bank, the rms weights and ones, so one product over P serves the
    chroma, the rms and the flatness's arithmetic mean."""
    weights = _rms_weights(n_fft)[:, None]
    bank = np.concatenate([_chroma_bank(sr, n_fft, n_chroma), weights, np.ones_like(weights)], axis=1)
    # Zero columns up to a multiple of 8: BLAS runs narrow products faster at such widths (16 beats 14).
    pad = -bank.shape[1] % 8
    return _read_only(np.ascontiguousarray(np.pad(bank, ((0, 0), (0, pad)))))


@functools.lru_cache(maxsize=16)
def _contrast_bands(
    sr: int, n_fft: int, fmin: float, n_bands: int, quantile: float
) -> tuple[tuple[int, int, int], ...]:
    """Bin ranges ``[start, stop)`` and quantile counts of librosa.feature.spectral_contrast's bands."""
    freq = _fft_frequencies(sr, n_fft)
    octa = np.zeros(n_bands + 2)
    octa[1:] = fmin * (2.0 ** np.arange(0, n_bands + 1))
    if np.any(octa[:-1] >= 0.5 * sr):
        raise DataFormatError(
            uri=SIGNAL_URI,
            problem=(
                f"sample rate {sr} Hz is too low for the spectral contrast bands: the top band starts at "
                f"{octa[-2]:g} Hz, at or above Nyquist ({sr / 2:g} Hz); lower contrast_fmin or contrast_bands"
            ),
        )
    bands = []
    for k in range(n_bands + 1):
        band = np.logical_and(freq >= octa[k], freq <= octa[k + 1])
        idx = np.flatnonzero(band)
        if idx.size == 0:
            raise DataFormatError(
                uri=SIGNAL_URI,
                problem=(
                    f"spectral contrast band {k} ({octa[k]:g}-{octa[k + 1]:g} Hz) holds no FFT bin at "
                    f"sr={sr} Hz, n_fft={n_fft}; raise n_fft or contrast_fmin"
                ),
            )
        start, stop = int(idx[0]), int(idx[-1]) + 1
        if k > 0:
            start -= 1
        if k == n_bands:
            stop = freq.size
        count = max(int(np.rint(quantile * (stop - start))), 1)
        if k < n_bands:
            stop -= 1
        if stop - start < count:
            raise DataFormatError(
                uri=SIGNAL_URI,
                problem=f"spectral contrast band {k} is too narrow at sr={sr} Hz, n_fft={n_fft}; raise n_fft",
            )
        bands.append((start, stop, count))
    return tuple(bands)


@functools.lru_cache(maxsize=16)
def _tempo_setup(sr: int, hop_length: int) -> tuple[int, int, F32, F64]:
    """Autocorrelation window length, FFT size, Hann window and log-prior per lag (librosa.feature.tempo)."""
    win_length = max(int(_TEMPO_AC_SIZE_S * sr) // hop_length, 1)
    n_pad = scipy.fft.next_fast_len(2 * win_length - 1, real=True)
    window = _hann(win_length).astype(np.float32)
    lags = np.arange(win_length, dtype=np.float64)
    with np.errstate(divide="ignore"):
        bpms = 60.0 * sr / (hop_length * lags)  # bpms[0] = inf
        logprior = -0.5 * ((np.log2(bpms) - np.log2(_TEMPO_START_BPM)) / _TEMPO_STD_BPM) ** 2
    logprior[: int(np.argmax(bpms < _TEMPO_MAX_BPM))] = -np.inf
    return win_length, n_pad, window, logprior


@functools.lru_cache(maxsize=16)
def _k_weighting(sr: int) -> F64:
    """BS.1770-4 K-weighting as second-order sections designed for ``sr`` (RBJ biquads).

    Stage 1 is an RBJ high shelf (+4 dB, Q = 1/sqrt(2), 1500 Hz); stage 2 an RBJ high pass (Q = 0.5, 38 Hz)
    whose numerator is the standard's unnormalised ``[1, -2, 1]``. At 48 kHz both reproduce the coefficients
    tabulated in BS.1770-4 to about 1e-4, and a full-scale 997 Hz sine measures -3.01 LUFS.
    """
    gain_db, q_shelf, f_shelf = 4.0, 1.0 / math.sqrt(2.0), 1500.0
    a_lin = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * math.pi * f_shelf / sr
    alpha = math.sin(w0) / (2.0 * q_shelf)
    cos_w0, sq = math.cos(w0), 2.0 * math.sqrt(a_lin) * alpha
    shelf_b = [
        a_lin * ((a_lin + 1) + (a_lin - 1) * cos_w0 + sq),
        -2.0 * a_lin * ((a_lin - 1) + (a_lin + 1) * cos_w0),
        a_lin * ((a_lin + 1) + (a_lin - 1) * cos_w0 - sq),
    ]
    shelf_a = [
        (a_lin + 1) - (a_lin - 1) * cos_w0 + sq,
        2.0 * ((a_lin - 1) - (a_lin + 1) * cos_w0),
        (a_lin + 1) - (a_lin - 1) * cos_w0 - sq,
    ]
    q_hp, f_hp = 0.5, 38.0
    w0 = 2.0 * math.pi * f_hp / sr
    alpha = math.sin(w0) / (2.0 * q_hp)
    hp_a = [1.0 + alpha, -2.0 * math.cos(w0), 1.0 - alpha]
    return np.array(
        [
            [*(b / shelf_a[0] for b in shelf_b), *(a / shelf_a[0] for a in shelf_a)],
            [1.0, -2.0, 1.0, *(a / hp_a[0] for a in hp_a)],
        ]
    )


class _Workspace(threading.local):
    """Per-thread scratch memory reused from call to call.

    A 30 s track needs ~10 MB of windowed frames; faulting that much fresh memory in on every call costs as much
    as the FFT itself on some VMs (~3 us per 4 KiB page measured), so the buffer is kept, up to
    ``_WORKSPACE_MAX_BYTES``. Nothing returned to callers ever aliases it.
    """

    def __init__(self) -> None:
        self.buffer: F32 = np.empty(0, dtype=np.float32)
        self.block: F64 = np.empty(0, dtype=np.float64)

    def floats(self, count: int) -> F32:
        """A float32 scratch array of ``count`` elements (contents undefined), starting at the buffer start."""
        if count <= self.buffer.size:
            return self.buffer[:count]
        fresh = np.empty(count, dtype=np.float32)
        if fresh.nbytes <= _WORKSPACE_MAX_BYTES:
            self.buffer = fresh
        return fresh

    def doubles(self, count: int) -> F64:
        """A float64 scratch array of ``count`` elements apart from :meth:`floats` (a block of frames)."""
        if count > self.block.size:
            self.block = np.empty(count, dtype=np.float64)
        return self.block[:count]


_workspace = _Workspace()


# ---------------------------------------------------------------------------------------------------------------------
# Input validation


def _as_signal(y: npt.ArrayLike) -> F32:
    return _checked_signal(y)[0]


def _checked_signal(y: npt.ArrayLike) -> tuple[F32, float]:
    """The signal as contiguous float32, and its peak ``max |y|``; refuses what is not finite float audio."""
    arr = np.asarray(y)
    if arr.dtype.kind != "f":
        raise DataFormatError(uri=SIGNAL_URI, problem=f"expected a real floating-point signal, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise DataFormatError(uri=SIGNAL_URI, problem=f"expected a 1-D mono signal, got an array of shape {arr.shape}")
    if arr.size == 0:
        raise DataFormatError(uri=SIGNAL_URI, problem="signal is empty (0 samples)")
    low, high = float(arr.min()), float(arr.max())  # NaN and inf propagate to one of them
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = np.flatnonzero(~np.isfinite(arr))
        raise DataFormatError(
            uri=SIGNAL_URI,
            problem=f"signal contains {bad.size} non-finite sample(s) (NaN or inf), first at index {int(bad[0])}",
        )
    peak = max(-low, high)
    if peak > MAX_ABS_AMPLITUDE:
        raise DataFormatError(
            uri=SIGNAL_URI,
            problem=f"signal peak amplitude {peak:g} exceeds {MAX_ABS_AMPLITUDE:g}; expected float audio in [-1, 1]",
        )
    return np.ascontiguousarray(arr, dtype=np.float32), peak


def _check_sr(sr: int) -> int:
    if isinstance(sr, bool) or not isinstance(sr, int | np.integer) or sr <= 0:
        raise DataFormatError(uri=SIGNAL_URI, problem=f"sample rate must be a positive integer, got {sr!r}")
    return int(sr)


# ---------------------------------------------------------------------------------------------------------------------
# Feature computation


def _zero_extended(y: F32, lo: int, hi: int) -> F32:
    """``y[lo:hi]`` where indices outside ``[0, len(y))`` read as zeros."""
    out = np.zeros(hi - lo, dtype=np.float32)
    a, b = max(lo, 0), min(hi, y.size)
    if b > a:
        out[a - lo : b - lo] = y[a:b]
    return out


def _stft(y: F32, n_fft: int, hop_length: int) -> tuple[F32, F32, F32]:
    """The one STFT: magnitude and power of ``rfft(hann * frame)`` over centred, zero-padded frames.

    Frame ``t`` covers ``y[t * hop - n_fft // 2 : t * hop - n_fft // 2 + n_fft]`` (zeros outside the signal),
    as librosa's ``center=True, pad_mode="constant"``. Returns ``(S, P, scratch)``: ``S`` and ``P`` are
    ``(frames, bins)`` float32; to keep the memory touched per call small, the windowed frames live in the
    thread's workspace, ``S`` is written over them and ``P`` over the complex spectrum, and ``scratch`` is
    the rest of the workspace (``frames * (n_fft - bins)`` floats), free for temporaries. All three alias
    the workspace: valid until the thread's next call.
    """
    half = n_fft // 2
    n_frames = 1 + max(y.size + 2 * half - n_fft, 0) // hop_length
    n_bins = n_fft // 2 + 1
    window = _window(n_fft)
    windowed = _workspace.floats(n_frames * n_fft).reshape(n_frames, n_fft)
    # Frames wholly inside the signal are windowed straight from it; only the edge frames need zero padding.
    first = min(-(-half // hop_length), n_frames)
    last = min(max((y.size - n_fft + half) // hop_length + 1, first), n_frames)
    if last > first:
        inner = sliding_window_view(y, n_fft)[first * hop_length - half :: hop_length][: last - first]
        np.multiply(inner, window, out=windowed[first:last])
    for lo_frame, hi_frame in ((0, first), (last, n_frames)):
        if hi_frame > lo_frame:
            start = lo_frame * hop_length - half
            segment = _zero_extended(y, start, (hi_frame - 1) * hop_length - half + n_fft)
            edge = sliding_window_view(segment, n_fft)[::hop_length]
            np.multiply(edge, window, out=windowed[lo_frame:hi_frame])
    spectrum = scipy.fft.rfft(windowed, axis=-1, overwrite_x=True)
    flat = windowed.reshape(-1)
    mag = flat[: n_frames * n_bins].reshape(n_frames, n_bins)
    np.abs(spectrum, out=mag)
    power = spectrum.view(np.float32).reshape(-1)[: n_frames * n_bins].reshape(n_frames, n_bins)
    np.multiply(mag, mag, out=power)
    return mag, power, flat[n_frames * n_bins :]


def _log_mel(power: F32, bank: _MelBank) -> F32:
    mel = np.zeros((power.shape[0], bank.n_mels), dtype=np.float32)
    for m_lo, m_hi, b_lo, b_hi, weights in bank.blocks:
        np.matmul(power[:, b_lo:b_hi], weights, out=mel[:, m_lo:m_hi])
    # power_to_db(mel, ref=1.0, amin=1e-10, top_db=80): ln is ~3x faster than log10 and equal to float rounding.
    db = np.log(np.maximum(mel, np.full(bank.n_mels, _AMIN, dtype=np.float32), out=mel), out=mel)
    db *= np.float32(10.0 / math.log(10.0))
    np.maximum(db, db.max() - np.float32(_TOP_DB), out=db)
    return db


def _chroma(raw: F32) -> F32:
    """librosa.feature.chroma_stft's normalisation (norm=inf per frame) of ``P @ chroma_bank``; the bank and
    the power are non-negative, so the frame's largest bin is its infinity norm."""
    length = raw.max(axis=1, keepdims=True).astype(np.float64)
    length[length < _TINY32] = 1.0  # librosa.util.normalize leaves near-zero frames unnormalised
    return np.asarray(raw / length, dtype=np.float32)


@functools.lru_cache(maxsize=16)
def _moments_matrix(sr: int, n_fft: int) -> F64:
    """``(bins, 4)``: 1, f, f**2 and 0 per bin, so ``S @ M`` gives each frame's sum, first and second moment."""
    freq = _fft_frequencies(sr, n_fft)
    # A fourth, zero column: BLAS multiplies by 4 columns faster than by 3.
    return _read_only(np.stack([np.ones_like(freq), freq, freq * freq, np.zeros_like(freq)], axis=1))


@dataclass(frozen=True)
class _SpectralStats:
    centroid: F64
    bandwidth: F64
    rolloff: F64


def _spectral_stats(mag: F32, sr: int, n_fft: int, roll_percent: float) -> _SpectralStats:
    """Centroid, bandwidth (p=2) and rolloff of every frame (librosa's ``spectral_centroid``,
    ``spectral_bandwidth`` and ``spectral_rolloff`` of ``S``), from moments and group sums taken in float64.

    Blocks of ``_STATS_BLOCK`` frames are copied to float64 (about 1 MB at ``n_fft`` 2048: the copy stays in
    the core's L2 cache), laid out so that one matrix product gives each frame's ``sum S``, ``sum f S`` and
    ``sum f**2 S`` and a second the sums of consecutive groups of ``_ROLLOFF_GROUP`` bins:

    * in float64, ``E[f**2] - centroid**2`` keeps the bandwidth of a pure tone (float32 sums would cancel it);
    * the rolloff is found in two levels: the group sums locate the group where the cumulative magnitude
      crosses ``roll_percent`` of the total, then only that group's bins are accumulated.

    Silent frames follow librosa: centroid, bandwidth and rolloff 0.
    """
    n_frames, n_bins = mag.shape
    group = _ROLLOFF_GROUP
    n_groups, tail = divmod(n_bins, group)
    main = n_groups * group  # bins in whole groups; the ``tail`` last bins (Nyquist) form one more group
    moments = _moments_matrix(sr, n_fft)
    freq = _fft_frequencies(sr, n_fft)
    sums = np.empty((n_frames, 4))
    cum = np.empty((n_groups + (1 if tail else 0), n_frames))  # (groups, frames): the running sum goes down rows
    block = _workspace.doubles(min(_STATS_BLOCK, n_frames) * main)
    ones = np.ones(group)
    for lo in range(0, n_frames, _STATS_BLOCK):
        hi = min(lo + _STATS_BLOCK, n_frames)
        s = block[: (hi - lo) * main].reshape(hi - lo, main)
        np.copyto(s, mag[lo:hi, :main])
        np.matmul(s, moments[:main], out=sums[lo:hi])
        cum[:n_groups, lo:hi] = (s.reshape(-1, group) @ ones).reshape(hi - lo, n_groups).T
    if tail:
        edge = mag[:, main:].astype(np.float64)
        for j in range(tail):  # one bin (Nyquist) at even n_fft: products by a single row are slow in BLAS
            sums += edge[:, j : j + 1] * moments[main + j]
        cum[n_groups] = edge.sum(axis=1)

    total = sums[:, 0].copy()
    total[total < _TINY32] = 1.0  # as librosa.util.normalize(norm=1): silent frames stay unnormalised (-> 0)
    centroid = sums[:, 1] / total
    spread = (sums[:, 2] - 2.0 * centroid * sums[:, 1] + centroid * centroid * sums[:, 0]) / total
    bandwidth = np.sqrt(np.maximum(spread, 0.0))

    np.cumsum(cum, axis=0, out=cum)
    threshold = roll_percent * cum[-1]
    grp = np.argmax(cum >= threshold, axis=0)
    rows = np.arange(n_frames)
    before = np.where(grp > 0, cum[np.maximum(grp - 1, 0), rows], 0.0)
    # The crossing group's bins, gathered by flat index, and their running sums by a triangular product.
    cols = (grp * group)[:, None] + np.arange(group)[None, :]
    inside = np.take(mag.reshape(-1), (rows * n_bins)[:, None] + np.minimum(cols, n_bins - 1))
    if tail:
        inside[cols >= n_bins] = 0.0  # the short last group
    running = inside.astype(np.float64) @ _upper_ones(group)
    reached = before[:, None] + running >= threshold[:, None]
    # Rounding can leave the group's own cumulative sum a hair below the threshold: take its last bin then.
    offset = np.where(reached.any(axis=1), np.argmax(reached, axis=1), group - 1)
    rolloff = freq[np.minimum(grp * group + offset, n_bins - 1)]
    return _SpectralStats(centroid=centroid, bandwidth=bandwidth, rolloff=np.asarray(rolloff, dtype=np.float64))


@functools.lru_cache(maxsize=4)
def _upper_ones(size: int) -> F64:
    """``(size, size)`` with ones on and above the diagonal: ``x @ U`` is the running sum of each row of ``x``."""
    return _read_only(np.triu(np.ones((size, size))))


def _centroid_bandwidth(mag: F32, sr: int, n_fft: int) -> tuple[F64, F64]:
    """librosa's spectral_centroid and spectral_bandwidth (p=2), from S (see :func:`_spectral_stats`)."""
    stats = _spectral_stats(mag, sr, n_fft, 0.85)
    return stats.centroid, stats.bandwidth


def _flatness(power: F32, max_power: float, scratch: F32, floor: F32, total: F32) -> F64:
    """librosa.feature.spectral_flatness(S=S, power=2, amin=1e-10): geometric over arithmetic mean of max(P, amin).

    ``floor`` is each frame's smallest magnitude and ``total`` its sum of powers (both known already). Overwrites
    ``power`` (with max(P, amin)) and ``scratch`` (at least ``frames * (bins // 2)`` floats): both must be dead.
    The logarithm of the geometric mean sums the logarithms of products of two bins, ``ln a + ln b = ln(a b)``:
    half the logarithms, and with ``amin <= P <= 1e18`` (``max_power`` bounds P, from the signal's peak) the float32
    products stay normal and finite ([1e-20, 1e36]).
    """
    n_frames, n_bins = power.shape
    amean = total.astype(np.float64)
    # Only frames with a bin under amin (digital silence, fades) are floored: numpy's maximum against a
    # scalar is several times slower than a product, so the whole spectrogram is not passed through it.
    low = np.flatnonzero(floor * floor < np.float32(_AMIN))  # the smallest P, rounded as P itself
    amin = np.full(n_bins, _AMIN, dtype=np.float32)
    if low.size > n_frames // 4:  # e.g. the resampler's stop band near Nyquist: every frame
        np.maximum(power, amin, out=power)
        amean = (power @ np.ones(n_bins, dtype=np.float32)).astype(np.float64)
    elif low.size:
        floored = np.maximum(power[low], amin)
        power[low] = floored
        amean[low] = floored @ np.ones(n_bins, dtype=np.float32)
    amean /= n_bins
    if max_power > _PRODUCT_LOG_MAX_POWER:
        log_sum = np.einsum("ij->i", np.log(power, out=power), dtype=np.float64)
    else:
        half = n_bins // 2
        pairs = scratch[: n_frames * half].reshape(n_frames, half)
        np.multiply(power[:, :half], power[:, half : 2 * half], out=pairs)
        # Summed in float64: the logarithms of digital silence must add up to exactly amin's.
        log_sum = np.einsum("ij->i", np.log(pairs, out=pairs), dtype=np.float64)
        if n_bins % 2:
            log_sum += np.log(power[:, -1], dtype=np.float64)
    return np.asarray(np.exp(log_sum / n_bins) / amean)


def _power_to_db(x: F64) -> F64:
    db = 10.0 * np.log10(np.maximum(x, _AMIN))
    return np.asarray(np.maximum(db, db.max() - _TOP_DB))


def _contrast(mag: F32, bands: tuple[tuple[int, int, int], ...]) -> F64:
    """librosa.feature.spectral_contrast(S=S) (see :func:`_contrast_and_floor`)."""
    return _contrast_and_floor(mag, bands)[0]


def _contrast_and_floor(mag: F32, bands: tuple[tuple[int, int, int], ...]) -> tuple[F64, F32]:
    """librosa.feature.spectral_contrast(S=S): per band, dB(mean of top quantile) - dB(mean of bottom quantile);
    and, as a by-product, each frame's smallest magnitude (the bands cover every bin).

    A band whose quantile is one bin needs only its minimum and maximum: consecutive such bands (the low octaves)
    are reduced together by ``reduceat``. Wider quantiles sort the band once per frame (both ends from one sort;
    non-negative float32 values order like their int32 bit patterns, whose sort is faster).
    """
    n_frames = mag.shape[0]
    valley = np.empty((len(bands), n_frames))
    peak = np.empty((len(bands), n_frames))
    floor = np.full(n_frames, np.inf, dtype=np.float32)
    k = 0
    while k < len(bands):
        start, stop, count = bands[k]
        if count == 1:
            run = k + 1  # the run of single-bin bands that tile a contiguous range of bins
            while run < len(bands) and bands[run][2] == 1 and bands[run][0] == bands[run - 1][1]:
                run += 1
            first, last = bands[k][0], bands[run - 1][1]
            edges = np.array([b[0] - first for b in bands[k:run]])
            segment = mag[:, first:last]
            lows = np.minimum.reduceat(segment, edges, axis=1)
            valley[k:run] = lows.T
            peak[k:run] = np.maximum.reduceat(segment, edges, axis=1).T
            np.minimum(floor, lows.min(axis=1), out=floor)
            k = run
            continue
        ordered = np.sort(mag[:, start:stop].view(np.int32), axis=1).view(np.float32)
        share = np.full(count, 1.0 / count, dtype=np.float32)  # a few values: a product beats mean() tenfold
        valley[k] = ordered[:, :count] @ share
        peak[k] = ordered[:, -count:] @ share
        np.minimum(floor, ordered[:, 0], out=floor)
        k += 1
    return _power_to_db(peak) - _power_to_db(valley), floor


def _onset_strength(log_mel: F32, n_fft: int, hop_length: int) -> F32:
    """librosa.onset.onset_strength(S=log_mel_db, lag=1, max_size=1, center=True, aggregate=np.mean)."""
    n_frames = log_mel.shape[0]
    flux = np.maximum(log_mel[1:] - log_mel[:-1], np.float32(0.0)).mean(axis=1)
    shift = 1 + n_fft // (2 * hop_length)
    env = np.zeros(n_frames, dtype=np.float32)
    keep = max(min(n_frames - shift, flux.size), 0)
    env[shift : shift + keep] = flux[:keep]
    return env


def _tempo(onset_env: F32, sr: int, hop_length: int) -> float:
    """Global tempo as librosa.feature.tempo(onset_envelope=..., aggregate=np.mean), refined between lags.

    The tempogram's per-frame autocorrelations are normalised by their lag-0 value (their maximum) and
    averaged; by linearity the average is one inverse FFT of the weighted sum of the frames' power spectra.
    """
    win_length, n_pad, window, logprior = _tempo_setup(sr, hop_length)
    n_frames = onset_env.size
    half = win_length // 2
    # np.pad(onset_env, half, mode="linear_ramp", end_values=0), built directly (np.pad's generic path is slow).
    padded = np.empty(n_frames + 2 * half, dtype=onset_env.dtype)
    padded[:half] = np.linspace(0.0, onset_env[0], half, endpoint=False, dtype=onset_env.dtype)
    padded[half : half + n_frames] = onset_env
    padded[half + n_frames :] = np.linspace(0.0, onset_env[-1], half, endpoint=False, dtype=onset_env.dtype)[::-1]
    frames = np.multiply(sliding_window_view(padded, win_length)[:n_frames:_TEMPO_FRAME_STRIDE], window)
    energy = np.einsum("ij,ij->i", frames, frames, dtype=np.float64)
    weights = np.divide(1.0, energy, out=np.zeros_like(energy), where=energy >= _TINY32)
    spectrum = scipy.fft.rfft(frames, n=n_pad, axis=1)
    power = np.abs(spectrum)
    np.multiply(power, power, out=power)
    mean_ac = scipy.fft.irfft(weights.astype(np.float32) @ power, n=n_pad)[:win_length] / frames.shape[0]
    score = np.log1p(1e6 * np.maximum(mean_ac, 0.0)) + logprior  # >= 0 up to rounding
    best = int(np.argmax(score))
    lag = float(best)
    if 1 <= best < win_length - 1 and np.isfinite(score[best - 1]) and np.isfinite(score[best + 1]):
        left, mid, right = float(score[best - 1]), float(score[best]), float(score[best + 1])
        curvature = left - 2.0 * mid + right
        if curvature < 0.0:
            lag += float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))
    return 60.0 * sr / (hop_length * lag)


def _zero_crossing_rate(y: F32, n_frames: int, n_fft: int, hop_length: int) -> F64:
    """librosa.feature.zero_crossing_rate(y, frame_length=n_fft, hop_length, center=True): edge-padded frames."""
    negative = y < -_ZCR_THRESHOLD  # signbit after zeroing |y| <= threshold
    crossing = negative[1:] != negative[:-1]  # crossing[i]: between y[i] and y[i + 1]; edge padding adds none
    half = n_fft // 2
    # Frame t counts crossing[i] for i in [t * hop - half, t * hop - half + n_fft - 1).
    if half % hop_length == 0 and crossing.size >= hop_length:
        # Whole hops: per-hop counts (exact integer sums by a float32 product), then each frame is 2a
        # consecutive hops (a = half / hop) less the crossing at its last position.
        a = half // hop_length
        n_hops = -(-crossing.size // hop_length)
        flags = np.zeros(n_hops * hop_length, dtype=np.float32)
        flags[: crossing.size] = crossing
        per_hop = flags.reshape(n_hops, hop_length) @ np.ones(hop_length, dtype=np.float32)
        cum = np.zeros(n_hops + 2 * a + n_frames + 1)
        np.cumsum(per_hop, out=cum[a + 1 : a + 1 + n_hops])
        cum[a + 1 + n_hops :] = cum[a + n_hops]
        t = np.arange(n_frames)
        counts = cum[t + 2 * a] - cum[t]  # hops t - a .. t + a - 1
        last = (t + a) * hop_length - 1
        inside = (last >= 0) & (last < crossing.size)
        counts[inside] -= flags[last[inside]]
        return counts / n_fft
    positions = np.flatnonzero(crossing) + (half + 1)  # padded position of each crossing's second sample
    starts = np.arange(n_frames, dtype=np.int64) * hop_length
    counts = np.searchsorted(positions, starts + n_fft) - np.searchsorted(positions, starts + 1)
    return counts.astype(np.float64) / n_fft


def _summaries(rows: F64, percentiles: tuple[int, ...]) -> F64:
    """Per row: mean, population std, then percentiles with linear interpolation (numpy's default)."""
    n_rows, n_frames = rows.shape
    out = np.empty((n_rows, 2 + len(percentiles)))
    out[:, 0] = rows.mean(axis=1)
    out[:, 1] = rows.std(axis=1)
    if percentiles:
        # float32 sorts twice as fast; the summaries are stored as float32 anyway (one rounding earlier).
        ordered = np.sort(rows.astype(np.float32), axis=1)
        pos = np.asarray(percentiles, dtype=np.float64) / 100.0 * (n_frames - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n_frames - 1)
        frac = pos - lo
        out[:, 2:] = ordered[:, lo] + (ordered[:, hi] - ordered[:, lo]) * frac
    return out


def integrated_loudness(y: npt.ArrayLike, sr: int) -> float:
    """ITU-R BS.1770-4 integrated loudness of a mono signal, in LUFS.

    K-weighting (see :func:`_k_weighting`), mean square over 400 ms blocks with 75 % overlap, absolute gate
    at -70 LUFS, relative gate 10 LU below the absolutely gated loudness. A signal shorter than one block is
    measured as a single block. Silence (no block above the absolute gate) gives the -70.0 floor.

    Args:
        y: Mono float signal.
        sr: Sample rate in Hz.

    Returns:
        Integrated loudness in LUFS, at least -70.0.

    Raises:
        DataFormatError: Empty, non-finite, non-float or multi-dimensional signal, or a bad sample rate.
    """
    return _integrated_loudness(_as_signal(y), _check_sr(sr))


def _k_weighted_lanes(y: F32, sos: F64, step: int, first_b: int, warm: int, out: F64) -> None:  # pragma: no cover
    """The K-weighting kernel (compiled by numba, see :func:`_k_weighted_kernel`): ``out[s]`` is the sum of
    squares of the K-weighted ``y`` over samples ``[s * step, (s + 1) * step)``.

    Two lanes run the two biquads of ``sos`` (scipy's ``sosfilt`` transposed direct form II, operation for
    operation) side by side: lane A over steps ``[0, first_b)``, lane B over ``[first_b - warm, len(out))``
    from a zero state, counted from ``first_b``. The two recurrences are independent, so the core overlaps
    them: twice the samples per cycle of one filter pass. ``first_b = len(out)`` runs lane A alone.
    """
    n_steps = out.shape[0]
    b0a, b1a, b2a, a1a, a2a = sos[0, 0], sos[0, 1], sos[0, 2], sos[0, 4], sos[0, 5]
    b0b, b1b, b2b, a1b, a2b = sos[1, 0], sos[1, 1], sos[1, 2], sos[1, 4], sos[1, 5]
    za0 = za1 = wa0 = wa1 = 0.0  # lane A: shelf state, high-pass state
    zb0 = zb1 = wb0 = wb1 = 0.0  # lane B
    start_b = first_b - warm
    for t in range(max(first_b, n_steps - start_b)):
        sa, sb = t, start_b + t
        on_a, on_b = sa < first_b, sb < n_steps
        ia, ib = sa * step, sb * step
        acc_a = acc_b = 0.0
        for j in range(step):
            xa = np.float64(y[ia + j]) if on_a else 0.0
            xb = np.float64(y[ib + j]) if on_b else 0.0
            oa = b0a * xa + za0
            ob = b0a * xb + zb0
            za0 = b1a * xa - a1a * oa + za1
            zb0 = b1a * xb - a1a * ob + zb1
            za1 = b2a * xa - a2a * oa
            zb1 = b2a * xb - a2a * ob
            pa = b0b * oa + wa0
            pb = b0b * ob + wb0
            wa0 = b1b * oa - a1b * pa + wa1
            wb0 = b1b * ob - a1b * pb + wb1
            wa1 = b2b * oa - a2b * pa
            wb1 = b2b * ob - a2b * pb
            acc_a += pa * pa
            acc_b += pb * pb
        if on_a:
            out[sa] = acc_a
        if on_b and sb >= first_b:
            out[sb] = acc_b


_KERNEL_SIGNATURE: Final = "void(float32[::1], float64[:, ::1], int64, int64, int64, float64[::1])"


@functools.cache
def _k_weighted_kernel() -> Callable[[F32, F64, int, int, int, F64], None]:
    """:func:`_k_weighted_lanes` compiled by numba, once per process (about 1 s with numba's import).

    scipy's ``sosfilt`` runs the same recurrence 3.5x slower (a generic loop over sections and one lane)
    and importing ``scipy.signal`` alone costs ~0.6 s. The pool's fork server compiles the kernel before it
    forks workers (:mod:`aitasks.audio_analysis.warm`), so workers start with it. The compiled code is cached
    on disk only where ``NUMBA_CACHE_DIR`` names an existing writable directory (``aitasks audio check`` sets
    it to the user's cache directory; loading from it saves ~0.4 s): a pipeline step never writes into its
    image or its home.
    """
    import os
    from pathlib import Path

    import numba

    # Only a writable NUMBA_CACHE_DIR: where it is not, numba would fall back to the package's
    # __pycache__ or the home directory, which a step must not write into.
    cache_dir = os.environ.get("NUMBA_CACHE_DIR", "")
    cache = bool(cache_dir) and Path(cache_dir).is_dir() and os.access(cache_dir, os.W_OK | os.X_OK)
    try:
        compiled = numba.njit(_KERNEL_SIGNATURE, nogil=True, cache=cache)(_k_weighted_lanes)
    except RuntimeError:  # NUMBA_CACHE_DIR is not writable: compile without the cache
        compiled = numba.njit(_KERNEL_SIGNATURE, nogil=True)(_k_weighted_lanes)
    kernel: Callable[[F32, F64, int, int, int, F64], None] = compiled
    return kernel


def _k_weighted_steps(y: F32, sos: F64, step: int) -> F64:
    """Sum of squares of the K-weighted signal over each run of ``step`` samples (``y.size`` is a multiple).

    ``step = 1`` gives every sample's square. A long signal is filtered as two lanes at once (see
    :func:`_k_weighted_lanes`): its second half starts ``_LOUDNESS_WARMUP`` samples early from a zero state;
    the K-weighting's slowest poles (the 38 Hz high pass, 0.989 at 22.05 kHz) shrink that start's error by
    1e-17 within them, far below float64 rounding.
    """
    n_steps = y.size // step
    warm = -(-_LOUDNESS_WARMUP // step)  # in steps
    first_b = n_steps if n_steps < 4 * warm else (n_steps + warm + 1) // 2
    out = np.empty(n_steps)
    _k_weighted_kernel()(np.ascontiguousarray(y, dtype=np.float32), np.ascontiguousarray(sos), step, first_b, warm, out)
    return out


def _integrated_loudness(y: F32, sr: int) -> float:
    sos = _k_weighting(sr)
    block = round(_BLOCK_S * sr)
    step, uneven = divmod(block, 4)
    if y.size >= block >= 4 and not uneven:
        # Blocks start every quarter block; block j is the sum of quarter-block steps j..j+3. The samples after
        # the last whole step belong to no block and are not filtered.
        steps = _k_weighted_steps(y[: y.size // step * step], sos, step)
        mean_squares = (steps[:-3] + steps[1:-2] + steps[2:-1] + steps[3:]) / block
    else:
        # A signal shorter than a block is one block; a block that is no multiple of 4 samples has uneven
        # quarter steps: every sample's K-weighted square, summed per quarter block.
        squared = _k_weighted_steps(y, sos, 1)
        if squared.size < block or block < 4:
            mean_squares = np.array([squared.mean()])
        else:
            n_blocks = (squared.size - block) * 4 // block + 1
            edges = (np.arange(n_blocks + 4, dtype=np.int64) * block) // 4
            steps = np.add.reduceat(squared[: int(edges[-1])], edges[:-1])
            mean_squares = (steps[:-3] + steps[1:-2] + steps[2:-1] + steps[3:]) / block
    with np.errstate(divide="ignore"):
        block_loudness = _LOUDNESS_OFFSET + 10.0 * np.log10(mean_squares)
    gated = mean_squares[block_loudness > _ABSOLUTE_GATE_LUFS]
    if gated.size == 0:
        return LOUDNESS_FLOOR_LUFS
    relative_gate = _LOUDNESS_OFFSET + 10.0 * math.log10(float(gated.mean())) + _RELATIVE_GATE_LU
    kept = mean_squares[(block_loudness > _ABSOLUTE_GATE_LUFS) & (block_loudness > relative_gate)]
    loudness = _LOUDNESS_OFFSET + 10.0 * math.log10(float(kept.mean()))
    return max(loudness, LOUDNESS_FLOOR_LUFS)


def extract_features(
    y: npt.ArrayLike, sr: int, cfg: FeatureConfig = DEFAULT_CONFIG, *, frames: bool = False, log_mel: bool = False
) -> TrackFeatures:
    """Extract the summary feature vector (and optionally frame-level features) of a mono signal.

    Exactly one STFT is computed; every spectral feature derives from its magnitude and power.

    Args:
        y: Mono float signal (float32 preferred), already resampled to ``sr``. Signals shorter than ``n_fft``
            are zero padded by the centred framing.
        sr: Sample rate in Hz.
        cfg: Feature configuration.
        frames: Keep the log-mel spectrogram and the frame-level features in the result.
        log_mel: Keep the log-mel spectrogram (without the other frame-level features).

    Returns:
        The track's features; ``values`` is float32, finite and ordered as ``feature_names(cfg)``.

    Raises:
        DataFormatError: Empty, non-finite, non-float or multi-dimensional signal; bad sample rate; or a sample
            rate incompatible with the configuration (``fmax`` or contrast bands above Nyquist).
    """
    signal, peak = _checked_signal(y)
    sr = _check_sr(sr)
    nyquist = sr / 2.0
    if cfg.fmax is not None and cfg.fmax > nyquist:
        raise DataFormatError(uri=SIGNAL_URI, problem=f"fmax {cfg.fmax:g} Hz is above Nyquist ({nyquist:g} Hz)")
    if cfg.fmin >= (cfg.fmax if cfg.fmax is not None else nyquist):
        raise DataFormatError(uri=SIGNAL_URI, problem=f"fmin {cfg.fmin:g} Hz is not below the mel fmax / Nyquist")
    n_fft, hop = cfg.n_fft, cfg.hop_length
    bands = _contrast_bands(sr, n_fft, cfg.contrast_fmin, cfg.contrast_bands, cfg.contrast_quantile)
    power_bank = _power_bank(sr, n_fft, cfg.n_chroma)

    mag, power, scratch = _stft(signal, n_fft, hop)  # the one STFT, (frames, bins)
    n_frames = mag.shape[0]

    mel_db = _log_mel(power, _mel_bank(sr, n_fft, cfg.n_mels, cfg.fmin, cfg.fmax))  # (frames, n_mels) dB
    mfcc = mel_db @ _dct_matrix(cfg.n_mels, cfg.n_mfcc)
    projected = power @ power_bank  # chroma bins, the rms sum, the sum of P: one product over the power
    chroma = _chroma(projected[:, : cfg.n_chroma])
    rms = np.sqrt(projected[:, cfg.n_chroma])
    spectral = _spectral_stats(mag, sr, n_fft, cfg.rolloff_percent)
    contrast, floor = _contrast_and_floor(mag, bands)  # (bands + 1, frames), each frame's smallest S
    # |X[k]| <= peak * sum(window) = peak * n_fft / 2 bounds every bin (1 % margin for float32 rounding).
    max_power = (1.01 * peak * n_fft / 2) ** 2
    flatness = _flatness(power, max_power, scratch, floor, projected[:, cfg.n_chroma + 1])  # last use of P
    onset = _onset_strength(mel_db, n_fft, hop)
    zcr = _zero_crossing_rate(signal, n_frames, n_fft, hop)
    tempo = _tempo(onset, sr, hop)
    loudness = _integrated_loudness(signal, sr)
    duration = signal.size / sr

    n_vec, n_chr, n_con = cfg.n_mfcc, cfg.n_chroma, cfg.contrast_bands + 1
    rows = np.empty((n_vec + n_chr + n_con + len(_SCALAR_FRAME_FEATURES), n_frames))
    rows[:n_vec] = mfcc.T
    rows[n_vec : n_vec + n_chr] = chroma.T
    rows[n_vec + n_chr : n_vec + n_chr + n_con] = contrast
    scalars = (spectral.centroid, spectral.bandwidth, spectral.rolloff, flatness, zcr, rms, onset)
    rows[n_vec + n_chr + n_con :] = np.stack(scalars)
    band_means = mel_db.mean(axis=0, dtype=np.float64)
    edges = [g * cfg.n_mels // cfg.mel_summary_bands for g in range(cfg.mel_summary_bands + 1)]
    group_means = [band_means[lo:hi].mean() for lo, hi in itertools.pairwise(edges)]

    values = np.concatenate(
        [_summaries(rows, cfg.percentiles).ravel(), np.asarray(group_means), [tempo, loudness, duration]]
    ).astype(np.float32)
    names = feature_names(cfg)
    if values.shape != (len(names),) or not np.isfinite(values).all():  # invariant, not an input problem
        raise AssertionError(f"feature vector of shape {values.shape} is not {len(names)} finite values")

    frame_features: dict[str, F32] | None = None
    if frames:
        frame_features = {
            "mfcc": np.ascontiguousarray(mfcc.T),
            "chroma": np.ascontiguousarray(chroma.T),
            "contrast": contrast.astype(np.float32),
            **{name: arr.astype(np.float32) for name, arr in zip(_SCALAR_FRAME_FEATURES, scalars, strict=True)},
        }
    return TrackFeatures(
        names=names,
        values=values,
        tempo_bpm=float(tempo),
        loudness_lufs=float(loudness),
        duration_s=float(duration),
        log_mel=np.ascontiguousarray(mel_db.T) if frames or log_mel else None,
        frames=frame_features,
    )
