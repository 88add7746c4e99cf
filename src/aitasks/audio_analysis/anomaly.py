"""Anomalies of catalog tracks: signal rules, near-duplicates by fingerprint, statistical outliers.

Three independent detectors, each a pure function of arrays:

* **Signal rules** (:func:`signal_stats`, :func:`apply_rules`): cheap statistics of the decoded
  signal at its *native* rate (resampling smears clipped runs and DC), compared with thresholds of
  :class:`RuleConfig`. Every :class:`Flag` names the measured value and the threshold it crossed.
* **Near-duplicates** (:func:`fingerprint`, :func:`fingerprint_similarity`,
  :func:`near_duplicates`): a Haitsma–Kalker style binary fingerprint computed from the log-mel
  spectrogram the feature extractor already has, so no second STFT is needed. It survives lossy
  re-encoding, gain changes, resampling and small trims, and is near 0.5 similarity (chance) for
  different songs.
* **Outliers** (:func:`feature_outliers`): an isolation forest on robust-scaled feature vectors,
  each track explained by the features that are furthest from the catalog's median.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from aitasks.runtime.errors import DataFormatError, FieldIssue, InvalidInputError

FlagCode = Literal[
    "undecodable",
    "nan",
    "silence",
    "clipping",
    "dc_offset",
    "too_short",
    "too_long",
    "loudness_low",
    "loudness_high",
    "sample_rate",
    "duplicate",
    "outlier",
]
Severity = Literal["error", "warning"]

#: Flag codes, with what each means (for reports and docs).
FLAG_CODES: Final[dict[str, str]] = {
    "undecodable": "the file was refused by the decoder (see its quarantine reason)",
    "nan": "the samples or a signal statistic are NaN/Inf",
    "silence": "too much of the track is silent (an error when all of it is)",
    "clipping": "too many samples sit at full scale in runs (hard clipping)",
    "dc_offset": "the signal's mean is far from zero",
    "too_short": "shorter than the minimum duration",
    "too_long": "longer than the maximum duration",
    "loudness_low": "integrated loudness below the minimum",
    "loudness_high": "integrated loudness above the maximum",
    "sample_rate": "the file's sample rate is not one of the expected rates",
    "duplicate": "a near-duplicate of another track (audio fingerprint)",
    "outlier": "a statistical outlier of the catalog's feature distribution",
}

#: ``|x|`` at or above this counts as full scale for clipping.
CLIP_LEVEL: Final = 0.999
#: A clipped run needs this many consecutive full-scale samples (single peaks at 1.0 are legal).
CLIP_RUN: Final = 3
#: Silence is measured on windows of this length ...
SILENCE_WINDOW_S: Final = 0.05
#: ... whose RMS is below this level.
SILENCE_DBFS: Final = -60.0
#: dBFS reported for an all-zero signal (instead of -inf).
DBFS_FLOOR: Final = -120.0


# ------------------------------------------------------------------------------ signal rules


class SignalStats(BaseModel):
    """Statistics of one decoded track, measured on the native-rate mono signal.

    Levels are relative to digital full scale: a full-scale square wave is 0 dBFS, a full-scale
    sine about -3 dBFS.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    duration_s: float
    source_rate: int
    peak: float
    rms_dbfs: float
    dc_offset: float
    clip_fraction: float
    silence_fraction: float
    loudness_lufs: float


def _clipped_samples(x: np.ndarray, level: float, min_run: int) -> int:
    """Number of samples in runs of at least ``min_run`` consecutive ``|x| >= level`` samples."""
    hot = np.abs(x) >= level
    if not hot.any():
        return 0
    padded = np.concatenate(([False], hot, [False]))
    # Run boundaries alternate start, end, start, end, ...
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    lengths = edges[1::2] - edges[::2]
    return int(lengths[lengths >= min_run].sum())


def signal_stats(
    native: np.ndarray,
    source_rate: int,
    *,
    loudness_lufs: float,
    clip_level: float = CLIP_LEVEL,
    clip_run: int = CLIP_RUN,
    silence_dbfs: float = SILENCE_DBFS,
    window_s: float = SILENCE_WINDOW_S,
) -> SignalStats:
    """Measure a mono signal at its own sample rate (vectorised, one pass per statistic).

    Args:
        native: Mono samples in [-1, 1] at ``source_rate``.
        source_rate: The file's sample rate in Hz.
        loudness_lufs: Integrated loudness, measured by the feature extractor (passed through).
        clip_level: ``|x|`` at or above this is full scale.
        clip_run: Minimum run length of full-scale samples that counts as clipping.
        silence_dbfs: Windows with an RMS below this level are silent.
        window_s: Length of the silence windows in seconds.

    Returns:
        The statistics; an empty signal has duration 0, silence fraction 1 and the dBFS floor.

    Raises:
        InvalidInputError: ``native`` is not 1-D or ``source_rate`` is not positive.
    """
    x = np.asarray(native)
    if x.ndim != 1 or source_rate <= 0:
        raise InvalidInputError(
            "signal_stats",
            [FieldIssue("native", f"need a 1-D signal and a positive rate, got {x.shape} at {source_rate}")],
        )
    n = x.size
    if n == 0:
        return SignalStats(
            duration_s=0.0,
            source_rate=source_rate,
            peak=0.0,
            rms_dbfs=DBFS_FLOOR,
            dc_offset=0.0,
            clip_fraction=0.0,
            silence_fraction=1.0,
            loudness_lufs=loudness_lufs,
        )
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    win = max(1, round(window_s * source_rate))
    n_win = n // win
    body = x[: n_win * win].reshape(n_win, win)
    # Per-window sums of squares (einsum: no temporary the size of the signal, a 20-minute 48 kHz track is
    # 230 MB of float32) and per-window sums (a matrix-vector product); only the per-window totals are float64.
    energy = np.einsum("ij,ij->i", body, body).astype(np.float64)
    sums = (body @ np.ones(win, dtype=x.dtype)).astype(np.float64)
    tail = x[n_win * win :]
    tail64 = tail.astype(np.float64)
    tail_energy = float(np.dot(tail64, tail64)) if tail.size else 0.0
    total = float(energy.sum()) + tail_energy
    win_ms = energy / win
    if tail.size:
        # A partial last window counts as a window of its own.
        win_ms = np.append(win_ms, tail_energy / tail.size)
    silent_thr = 10.0 ** (silence_dbfs / 10.0)
    mean_square = total / n
    low, high = float(x.min()), float(x.max())  # NaN propagates to both
    peak = math.nan if math.isnan(low) else max(-low, high)
    return SignalStats(
        duration_s=n / source_rate,
        source_rate=source_rate,
        peak=peak,
        rms_dbfs=max(DBFS_FLOOR, 10.0 * math.log10(mean_square)) if mean_square > 0 else DBFS_FLOOR,
        dc_offset=(float(sums.sum()) + float(tail64.sum())) / n,
        # Only a track that reaches full scale can hold clipped runs: the others skip the scan.
        clip_fraction=_clipped_samples(x, clip_level, clip_run) / n if not peak < clip_level else 0.0,
        silence_fraction=float(np.mean(win_ms < silent_thr)),
        loudness_lufs=loudness_lufs,
    )


class RuleConfig(BaseModel):
    """Thresholds of the signal rules; a track past one gets a :class:`Flag`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_duration_s: float = Field(default=10.0, ge=0)
    max_duration_s: float = Field(default=1200.0, gt=0)
    #: Largest fraction of silent 50 ms windows; an entirely silent track is an error.
    silence_fraction_max: float = Field(default=0.5, ge=0, le=1)
    #: Largest fraction of samples in clipped runs.
    clip_fraction_max: float = Field(default=0.001, ge=0, le=1)
    #: Largest ``|mean|`` of the signal.
    dc_offset_max: float = Field(default=0.05, ge=0)
    loudness_min_lufs: float = -35.0
    loudness_max_lufs: float = -5.0
    #: Source sample rates that need no flag.
    expected_rates: tuple[int, ...] = (44100, 48000)


class Flag(BaseModel):
    """One anomaly of one track."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: FlagCode
    #: A sentence naming the measured value and the threshold.
    reason: str
    #: How far past the threshold (>= 0; comparable between flags of the same code only).
    score: float = Field(ge=0)
    severity: Severity


def quarantine_flag(reason_code: str, detail: str) -> Flag:
    """The flag of a file the decoder refused (``nan`` for non-finite samples, else ``undecodable``)."""
    code: FlagCode = "nan" if reason_code == "non_finite" else "undecodable"
    return Flag(code=code, reason=f"{reason_code}: {detail}", score=1.0, severity="error")


def _finite_score(value: float) -> float:
    """Scores go to Parquet and sort keys: keep them finite and non-negative."""
    if math.isnan(value):
        return 0.0
    return float(min(max(value, 0.0), 1e9))


def apply_rules(stats: SignalStats, cfg: RuleConfig) -> list[Flag]:
    """Compare ``stats`` with the thresholds of ``cfg``.

    Scores: ratio past the limit minus one for clipping, DC and too-long; the missing fraction of
    the minimum for too-short; dB past the limit for loudness; octaves to the nearest expected rate
    for sample rate; the excess silent fraction scaled to [0, 1] for silence. Severity is ``error``
    for NaN and for an entirely silent track (unusable), ``warning`` otherwise.

    Args:
        stats: The track's statistics.
        cfg: The thresholds.

    Returns:
        The flags, in a fixed rule order (empty for a clean track).
    """
    flags: list[Flag] = []
    core = (stats.duration_s, stats.peak, stats.rms_dbfs, stats.dc_offset, stats.clip_fraction, stats.silence_fraction)
    if not all(math.isfinite(v) for v in core):
        # NaN statistics make every other rule meaningless.
        return [
            Flag(code="nan", reason="a signal statistic is NaN/Inf (non-finite samples)", score=1.0, severity="error")
        ]

    entirely_silent = stats.peak == 0.0 or stats.silence_fraction >= 1.0
    if entirely_silent:
        flags.append(
            Flag(
                code="silence",
                reason=(
                    f"the track is entirely silent: every {SILENCE_WINDOW_S * 1000:.0f} ms window is below "
                    f"{SILENCE_DBFS:.0f} dBFS (peak {stats.peak:.3g}); limit {cfg.silence_fraction_max:.0%} silent"
                ),
                score=1.0,
                severity="error",
            )
        )
    elif stats.silence_fraction > cfg.silence_fraction_max:
        flags.append(
            Flag(
                code="silence",
                reason=(
                    f"{stats.silence_fraction:.1%} of {SILENCE_WINDOW_S * 1000:.0f} ms windows are below "
                    f"{SILENCE_DBFS:.0f} dBFS; limit {cfg.silence_fraction_max:.1%}"
                ),
                score=_finite_score(
                    (stats.silence_fraction - cfg.silence_fraction_max) / max(1e-9, 1.0 - cfg.silence_fraction_max)
                ),
                severity="warning",
            )
        )

    if stats.clip_fraction > cfg.clip_fraction_max:
        flags.append(
            Flag(
                code="clipping",
                reason=(
                    f"{stats.clip_fraction:.3%} of samples are clipped (runs of >= {CLIP_RUN} samples at "
                    f"|x| >= {CLIP_LEVEL}); limit {cfg.clip_fraction_max:.3%}"
                ),
                score=_finite_score(stats.clip_fraction / max(cfg.clip_fraction_max, 1e-12) - 1.0),
                severity="warning",
            )
        )

    if abs(stats.dc_offset) > cfg.dc_offset_max:
        flags.append(
            Flag(
                code="dc_offset",
                reason=f"DC offset {stats.dc_offset:+.4f} exceeds ±{cfg.dc_offset_max:.4f}",
                score=_finite_score(abs(stats.dc_offset) / max(cfg.dc_offset_max, 1e-12) - 1.0),
                severity="warning",
            )
        )

    if stats.duration_s < cfg.min_duration_s:
        flags.append(
            Flag(
                code="too_short",
                reason=f"duration {stats.duration_s:.2f} s is under the {cfg.min_duration_s:.2f} s minimum",
                score=_finite_score((cfg.min_duration_s - stats.duration_s) / max(cfg.min_duration_s, 1e-12)),
                severity="warning",
            )
        )
    elif stats.duration_s > cfg.max_duration_s:
        flags.append(
            Flag(
                code="too_long",
                reason=f"duration {stats.duration_s:.1f} s is over the {cfg.max_duration_s:.1f} s maximum",
                score=_finite_score(stats.duration_s / cfg.max_duration_s - 1.0),
                severity="warning",
            )
        )

    lufs = stats.loudness_lufs
    if not entirely_silent:  # the loudness of silence is -inf: the silence flag already says it
        if math.isnan(lufs):
            flags.append(
                Flag(code="nan", reason="integrated loudness is NaN on a non-silent track", score=1.0, severity="error")
            )
        elif lufs < cfg.loudness_min_lufs:
            flags.append(
                Flag(
                    code="loudness_low",
                    reason=f"integrated loudness {lufs:.1f} LUFS is below the {cfg.loudness_min_lufs:.1f} LUFS minimum",
                    score=_finite_score(cfg.loudness_min_lufs - lufs),
                    severity="warning",
                )
            )
        elif lufs > cfg.loudness_max_lufs:
            flags.append(
                Flag(
                    code="loudness_high",
                    reason=f"integrated loudness {lufs:.1f} LUFS is above the {cfg.loudness_max_lufs:.1f} LUFS maximum",
                    score=_finite_score(lufs - cfg.loudness_max_lufs),
                    severity="warning",
                )
            )

    if cfg.expected_rates and stats.source_rate not in cfg.expected_rates:
        octaves = min(abs(math.log2(stats.source_rate / r)) for r in cfg.expected_rates if r > 0)
        flags.append(
            Flag(
                code="sample_rate",
                reason=(
                    f"source sample rate {stats.source_rate} Hz is not one of "
                    f"{', '.join(str(r) for r in cfg.expected_rates)} Hz"
                ),
                score=_finite_score(octaves),
                severity="warning",
            )
        )
    return flags


# ------------------------------------------------------------------------------ fingerprints

#: Energy bands of the fingerprint; adjacent-band differences give 32 bits per frame.
FP_BANDS: Final = 33
#: Mel bands used, as fractions of the mel axis: about 130 Hz to 5.5 kHz for 128 Slaney mels to
#: 11,025 Hz. Lossy codecs cut or smear what is above; below is mostly rumble and DC.
FP_LOW_FRACTION: Final = 0.04
FP_HIGH_FRACTION: Final = 0.8
#: Band energies are summed over this many STFT frames (~250 ms at hop 512 / 22,050 Hz), like the
#: long, heavily overlapping frames of Haitsma–Kalker: a trim that is not a whole hop then barely
#: changes them.
FP_SMOOTH: Final = 8
#: Keep one smoothed frame in this many: 21.5 sub-fingerprints/s at hop 512 / 22,050 Hz.
FP_DECIMATE: Final = 2
#: Time difference of the bits, in kept frames (~140 ms).
FP_LAG: Final = 3
#: Bands weaker than this (dB under the frame's strongest band) are clamped to it, so near-empty
#: bands give stable bits (a tie is bit 0) instead of noise that re-encoding flips.
FP_FLOOR_DB: Final = -50.0
#: Frames this far (dB) under the track's loudest frame are silence: sub-fingerprint 0, which
#: similarity and the duplicate index ignore (two silences are not the same song).
FP_SILENCE_DB: Final = 50.0
#: Bytes of fingerprint per minute of audio (uint32 per kept frame).
FP_BYTES_PER_MINUTE: Final = round(22050 / 512 / FP_DECIMATE * 4 * 60)


def _smoothed(bands: np.ndarray) -> np.ndarray:
    """Sums of :data:`FP_SMOOTH` consecutive frames, every :data:`FP_DECIMATE`-th: column ``j`` sums frames
    ``j * D .. j * D + S - 1``. Built from sums of ``D`` frames (aligned with the decimation), added ``S / D``
    at a time: no running sum, so no cancellation either."""
    n_frames = bands.shape[1]
    kept = (n_frames - FP_SMOOTH) // FP_DECIMATE + 1
    steps, uneven = divmod(FP_SMOOTH, FP_DECIMATE)
    assert not uneven, "FP_SMOOTH must be a multiple of FP_DECIMATE"
    chunks = kept + steps - 1  # sums of D frames needed
    chunk = bands[:, : chunks * FP_DECIMATE : FP_DECIMATE].copy()
    for d in range(1, FP_DECIMATE):
        chunk += bands[:, d : chunks * FP_DECIMATE : FP_DECIMATE]
    energy: np.ndarray = chunk[:, :kept].copy()
    for i in range(1, steps):
        energy += chunk[:, i : i + kept]
    return energy


@functools.lru_cache(maxsize=8)
def _fp_band_matrix(n_rows: int) -> np.ndarray:
    """``(33, n_rows)`` 0/1 matrix summing contiguous groups of mel rows into the fingerprint's bands."""
    edges = np.linspace(0, n_rows, FP_BANDS + 1).round().astype(np.intp)
    matrix = np.zeros((FP_BANDS, n_rows))
    for band, (lo, hi) in enumerate(itertools.pairwise(edges)):
        matrix[band, lo:hi] = 1.0
    matrix.setflags(write=False)
    return matrix


def fingerprint(log_mel_db: np.ndarray) -> np.ndarray:
    """A compact binary audio fingerprint of a log-mel spectrogram (Haitsma–Kalker style).

    The mel bands between :data:`FP_LOW_FRACTION` and :data:`FP_HIGH_FRACTION` of the axis are
    grouped into 33 bands whose power is summed over :data:`FP_SMOOTH` frames; every
    :data:`FP_DECIMATE`-th frame is kept. Bit ``m`` of frame ``n`` is the sign of
    ``(E[n,m] - E[n,m+1]) - (E[n-L,m] - E[n-L,m+1])`` with lag ``L`` = :data:`FP_LAG`: differences
    across adjacent bands and frames, so a gain change (a constant in dB) changes nothing.

    At hop 512 / 22,050 Hz that is 21.5 uint32 per second, about 5.2 kB per minute
    (:data:`FP_BYTES_PER_MINUTE`).

    Args:
        log_mel_db: ``(n_mels, frames)`` log-mel power in dB (any reference), ``n_mels >= 33``.

    Returns:
        A 1-D ``uint32`` array, one sub-fingerprint per kept frame (0 = silent frame); empty when
        the spectrogram is shorter than about half a second.

    Raises:
        InvalidInputError: The spectrogram is not 2-D or has fewer than 33 mel bands.
    """
    spec = np.asarray(log_mel_db)
    if spec.ndim != 2 or spec.shape[0] < FP_BANDS:
        raise InvalidInputError(
            "fingerprint", [FieldIssue("log_mel_db", f"need (n_mels >= {FP_BANDS}, frames), got {spec.shape}")]
        )
    n_mels, n_frames = spec.shape
    lo, hi = round(FP_LOW_FRACTION * n_mels), round(FP_HIGH_FRACTION * n_mels)
    if hi - lo < FP_BANDS:
        lo, hi = 0, n_mels
    if n_frames < FP_SMOOTH + FP_DECIMATE * FP_LAG:
        return np.zeros(0, dtype=np.uint32)
    # NaN/-inf count as no energy; dB are capped at 300 (no codec comes near), so the power stays finite.
    # 10 ** (dB / 10) as exp(dB * ln(10) / 10): the same value to an ulp, several times faster.
    part = np.array(spec[lo:hi], dtype=np.float64)
    if not np.isfinite(part).all():
        np.nan_to_num(part, copy=False, nan=-np.inf, posinf=300.0)
    np.minimum(part, 300.0, out=part)
    power = np.exp(np.multiply(part, math.log(10.0) / 10.0, out=part), out=part)
    bands = _fp_band_matrix(hi - lo) @ power  # (33, frames): sums of contiguous mel rows
    energy = _smoothed(bands)
    frame_total = energy.sum(axis=0)
    energy = np.maximum(energy, energy.max(axis=0, keepdims=True) * 10.0 ** (FP_FLOOR_DB / 10.0))
    across = energy[:-1] - energy[1:]  # (32, kept)
    # A difference within rounding noise is a tie (bit 0): a spectrogram that does not change (digital
    # silence at the dB floor) must not get pseudo-random bits that match any other such track.
    tol = 1e-9 * (frame_total[FP_LAG:] + frame_total[:-FP_LAG])
    bits = (across[:, FP_LAG:] - across[:, :-FP_LAG]) > tol
    weights = np.left_shift(np.uint64(1), np.arange(32, dtype=np.uint64))
    values: np.ndarray = (bits.astype(np.uint64) * weights[:, None]).sum(axis=0).astype(np.uint32)
    level = 10.0 * np.log10(np.maximum(frame_total, 1e-300))
    quiet = level < level.max() - FP_SILENCE_DB
    values[quiet[FP_LAG:] | quiet[:-FP_LAG]] = 0
    return values


def fingerprint_similarity(a: np.ndarray, b: np.ndarray, *, max_offset_frames: int = 64) -> float:
    """Similarity of two fingerprints: 1 - the lowest bit error rate over time alignments.

    Every shift of ``b`` against ``a`` within ``±max_offset_frames`` (64 kept frames = 3 s) is
    tried; the bit error rate of a shift is over the frames both have and neither has silent
    (overlap-normalised), and shifts whose overlap is under half the shorter fingerprint are skipped
    so a few lucky frames cannot match. Cost: ``O((2·max_offset + 1) · frames)``.

    Args:
        a: A fingerprint from :func:`fingerprint`.
        b: Another.
        max_offset_frames: Largest shift tried, in fingerprint frames.

    Returns:
        Similarity in [0, 1]: about 0.5 for unrelated audio, near 1 for the same recording;
        0.0 when there is no usable overlap.
    """
    x = np.asarray(a, dtype=np.uint32)
    y = np.asarray(b, dtype=np.uint32)
    need = max(8, min(int(np.count_nonzero(x)), int(np.count_nonzero(y))) // 2)
    best = 1.0
    found = False
    for off in range(-max_offset_frames, max_offset_frames + 1):
        xs, ys = (x[off:], y) if off >= 0 else (x, y[-off:])
        m = min(xs.size, ys.size)
        if m < need:
            continue
        xs, ys = xs[:m], ys[:m]
        valid = (xs != 0) & (ys != 0)
        k = int(np.count_nonzero(valid))
        if k < need:
            continue
        errors = int(np.bitwise_count(xs[valid] ^ ys[valid]).sum(dtype=np.int64))
        best = min(best, errors / (32 * k))
        found = True
    return 1.0 - best if found else 0.0


class DuplicatePair(BaseModel):
    """Two tracks whose fingerprints match (``a`` comes before ``b`` in the input order)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    a: str
    b: str
    similarity: float


#: Sub-fingerprints with fewer set (or clear) bits than this are not indexed: mostly-zero patterns
#: come from band-limited or near-empty spectra (floored bands tie to 0) and recur across
#: unrelated songs. Silence (0) is excluded by the same rule.
INDEX_MIN_BITS: Final = 8


def _candidate_pairs(fps: Sequence[np.ndarray], *, max_postings: int, min_shared: int) -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j``, sharing at least ``min_shared`` distinct indexed sub-fingerprints."""
    n = len(fps)
    uniq = [np.unique(np.asarray(f, dtype=np.uint32)) for f in fps]
    ones = [np.bitwise_count(u) for u in uniq]
    uniq = [u[(c >= INDEX_MIN_BITS) & (c <= 32 - INDEX_MIN_BITS)] for u, c in zip(uniq, ones, strict=True)]
    values = np.concatenate(uniq) if uniq else np.zeros(0, np.uint32)
    tracks = np.repeat(np.arange(n, dtype=np.int64), [u.size for u in uniq])
    if values.size == 0:
        return np.zeros((0, 2), np.int64)
    order = np.lexsort((tracks, values))
    values, tracks = values[order], tracks[order]
    starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
    sizes = np.diff(np.append(starts, values.size))
    codes: list[np.ndarray] = []
    # Posting lists of one size are expanded together: one vectorised step per distinct size.
    for size in np.unique(sizes[(sizes >= 2) & (sizes <= max_postings)]):
        group_starts = starts[sizes == size]
        members = tracks[group_starts[:, None] + np.arange(size)]  # (groups, size), ascending track
        iu, ju = np.triu_indices(int(size), 1)
        codes.append((members[:, iu] * n + members[:, ju]).ravel())
    if not codes:
        return np.zeros((0, 2), np.int64)
    pair_codes, counts = np.unique(np.concatenate(codes), return_counts=True)
    keep = pair_codes[counts >= min_shared]
    return np.stack([keep // n, keep % n], axis=1)


def near_duplicates(
    ids: Sequence[str],
    fps: Sequence[np.ndarray],
    *,
    threshold: float = 0.8,
    max_offset_frames: int = 64,
    min_shared: int = 3,
    max_postings: int = 50,
) -> list[DuplicatePair]:
    """Pairs of tracks whose fingerprint similarity is at least ``threshold``.

    Two stages, so a catalog of ``n`` tracks never pays ``n²`` full comparisons:

    1. *Candidates* from an inverted index on exact sub-fingerprint values (as in Haitsma–Kalker):
       a re-encoded copy reproduces a good share of its 32-bit sub-fingerprints exactly (tens per
       minute), unrelated songs rarely share one. Pairs sharing ``min_shared`` distinct values are
       candidates, at any time offset. Values held by more than ``max_postings`` tracks, and
       low-information values (fewer than :data:`INDEX_MIN_BITS` bits set or clear), are too common
       to discriminate and are not indexed. Cost: sorting the ``N`` =
       ``n · frames`` values, ``O(N log N)``, plus ``O(Σ_v min(|P_v|, max_postings)²)`` pairs
       from the posting lists.
    2. *Verification* of each candidate with :func:`fingerprint_similarity`:
       ``O(C · frames · max_offset)`` for ``C`` candidates (about the number of true duplicates).

    Args:
        ids: Track ids, unique.
        fps: Their fingerprints, in the same order.
        threshold: Smallest similarity reported.
        max_offset_frames: Largest alignment shift tried in verification.
        min_shared: Distinct shared sub-fingerprints that make a candidate.
        max_postings: Sub-fingerprint values held by more tracks are ignored.

    Returns:
        The pairs, most similar first (ties by id).

    Raises:
        InvalidInputError: ``ids`` and ``fps`` differ in length or ids repeat.
    """
    if len(ids) != len(fps):
        raise InvalidInputError("near_duplicates", [FieldIssue("fps", f"{len(fps)} fingerprints for {len(ids)} ids")])
    if len(set(ids)) != len(ids):
        raise InvalidInputError("near_duplicates", [FieldIssue("ids", "track ids must be unique")])
    pairs: list[DuplicatePair] = []
    for i, j in _candidate_pairs(fps, max_postings=max_postings, min_shared=min_shared).tolist():
        sim = fingerprint_similarity(fps[i], fps[j], max_offset_frames=max_offset_frames)
        if sim >= threshold:
            pairs.append(DuplicatePair(a=ids[i], b=ids[j], similarity=sim))
    pairs.sort(key=lambda p: (-p.similarity, p.a, p.b))
    return pairs


def duplicate_flags(pairs: Sequence[DuplicatePair], *, threshold: float = 0.8) -> list[tuple[str, Flag]]:
    """One ``duplicate`` warning per pair, on its second track ``b`` (``a`` is kept as the original)."""
    return [
        (
            p.b,
            Flag(
                code="duplicate",
                reason=f"near-duplicate of {p.a}: fingerprint similarity {p.similarity:.3f} >= {threshold:.3f}",
                score=_finite_score(p.similarity - threshold),
                severity="warning",
            ),
        )
        for p in pairs
    ]


# ------------------------------------------------------------------------------ outliers

#: Below this many tracks no outlier model is fitted (the quartiles themselves are noise).
MIN_OUTLIER_ROWS: Final = 10
#: Share of the forest's splits that go to the two summary columns (largest ``|z|``, RMS of ``z``).
SUMMARY_SHARE: Final = 0.2
#: Robust z-scores are capped here: further out the number carries no more meaning, and one
#: near-constant feature must not dominate the forest's summary columns.
Z_CAP: Final = 30.0
#: The robust scale of a feature is at least this share of its standard deviation ...
SCALE_FLOOR_STD: Final = 0.1
#: ... and at least this share of its ``|median|`` (a feature with float noise around one value).
SCALE_FLOOR_REL: Final = 1e-3


class OutlierScore(BaseModel):
    """The outlier verdict of one track, with the features that explain it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    #: Isolation-forest anomaly score in (0, 1): about 0.5 or less is ordinary, near 1 is isolated.
    score: float
    is_outlier: bool
    #: ``(feature, robust z)`` of the features furthest from the median, largest ``|z|`` first.
    top_features: list[tuple[str, float]]
    #: The score above which a track is an outlier (set by ``contamination``); 1.0 without a model.
    threshold: float = 1.0
    #: Why no model was fitted, when none was.
    note: str = ""


def robust_z(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Robust z-scores of each column: ``(x - median) / scale``, capped at ``±``:data:`Z_CAP`.

    ``scale`` is the median absolute deviation (``1.4826 · MAD``: one standard deviation for a
    Gaussian column) floored at :data:`SCALE_FLOOR_STD` of the column's standard deviation and
    :data:`SCALE_FLOOR_REL` of its ``|median|``. Without the floor a column where most tracks share
    one value (the flatness of clean tonal music, say) has a MAD near 0, and one silent track lands
    at ``z = +1620``: a number that says nothing and drowns every other feature. A constant column
    is dropped.

    Args:
        matrix: ``(n, d)`` finite values.

    Returns:
        ``(z, kept)``: float32 z-scores of the kept columns, and the kept column indices.
    """
    x = np.asarray(matrix, dtype=np.float32)  # float32 throughout: a big catalog's matrix is not copied wider
    med = np.median(x, axis=0)
    mad = 1.4826 * np.median(np.abs(x - med), axis=0).astype(np.float64)
    std = x.std(axis=0, dtype=np.float64)
    scale = np.maximum.reduce([mad, SCALE_FLOOR_STD * std, SCALE_FLOOR_REL * np.abs(med.astype(np.float64))])
    kept = np.flatnonzero((std > 0) & (scale > 0))
    z = (x[:, kept] - med[kept]) / scale[kept].astype(np.float32)
    return np.clip(z, -Z_CAP, Z_CAP).astype(np.float32, copy=False), kept


def forest_input(z: np.ndarray) -> np.ndarray:
    """The isolation forest's view of the robust z-scores: ``z`` plus summary columns.

    A forest picks a split feature uniformly, so a track that is extreme in one feature out of
    ~200 is split on that feature rarely and looks ordinary. The row's largest ``|z|`` and its RMS
    ``z`` are therefore added, repeated so that they get :data:`SUMMARY_SHARE` of the splits
    (repeating a column is how a uniform feature choice is weighted).
    """
    summary = np.column_stack([np.abs(z).max(axis=1), np.sqrt(np.mean(np.square(z), axis=1))]).astype(np.float32)
    copies = max(1, math.ceil(SUMMARY_SHARE * z.shape[1] / ((1.0 - SUMMARY_SHARE) * summary.shape[1])))
    return np.hstack([z, *([summary] * copies)])


def feature_outliers(
    ids: Sequence[str],
    matrix: np.ndarray,
    names: Sequence[str],
    *,
    contamination: float = 0.02,
    seed: int = 0,
    top_features: int = 3,
    n_estimators: int = 200,
) -> list[OutlierScore]:
    """Statistical outliers of a feature matrix, each explained by its most extreme features.

    An isolation forest (scikit-learn, ``max_samples=256``: fitting cost does not grow with the
    catalog, scoring is ``O(n · n_estimators · log 256)``) runs on robust z-scores
    (:func:`robust_z`, constant features dropped) plus summary columns (:func:`forest_input`). The
    explanation of a track is the ``top_features`` features with the largest ``|z|``: the forest
    says *whether*, the z-scores say *where*.

    Args:
        ids: Track ids, one per row.
        matrix: ``(n, d)`` features.
        names: The ``d`` feature names.
        contamination: Expected share of outliers, in (0, 0.5].
        seed: Random seed of the forest (same input and seed, same result).
        top_features: Features named per track.
        n_estimators: Trees of the forest.

    Returns:
        One score per row, in input order. With fewer than :data:`MIN_OUTLIER_ROWS` rows (or only
        constant features) no model is fitted: every score is 0, nothing is an outlier, and
        ``note`` says why.

    Raises:
        InvalidInputError: Shapes disagree or ``contamination`` is out of range.
        DataFormatError: A value is NaN/Inf (names the row's id and the feature).
    """
    x = np.asarray(matrix)
    issues: list[FieldIssue] = []
    if x.ndim != 2 or x.shape[0] != len(ids) or x.shape[1] != len(names):
        issues.append(FieldIssue("matrix", f"shape {x.shape} does not match {len(ids)} ids x {len(names)} names"))
    if not 0.0 < contamination <= 0.5:
        issues.append(FieldIssue("contamination", f"must be in (0, 0.5], got {contamination}"))
    if top_features < 0:
        issues.append(FieldIssue("top_features", "must be >= 0"))
    if issues:
        raise InvalidInputError("feature_outliers", issues)
    bad = ~np.isfinite(x)
    if bad.any():
        rows, cols = np.nonzero(bad)
        r, c = int(rows[0]), int(cols[0])
        raise DataFormatError(
            str(ids[r]),
            f"feature {names[c]!r} is {x[r, c]} (row {r}; {int(bad.sum())} non-finite values in all); "
            "outlier detection needs finite features",
        )
    n = x.shape[0]
    z, kept = robust_z(x) if n else (np.zeros((0, 0), np.float32), np.zeros(0, np.intp))
    kept_names = [names[int(k)] for k in kept]
    k = min(top_features, len(kept_names))
    if k:
        mag = np.abs(z)
        top = np.argpartition(-mag, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(mag, top, axis=1), axis=1), axis=1)
    else:
        top = np.zeros((n, 0), dtype=np.intp)
    explain = [[(kept_names[j], round(float(z[i, j]), 3)) for j in top[i]] for i in range(n)]

    note = ""
    if n < MIN_OUTLIER_ROWS:
        note = f"only {n} tracks (< {MIN_OUTLIER_ROWS}): no outlier model was fitted"
    elif not kept_names:
        note = "every feature is constant: no outlier model was fitted"
    if note:
        return [
            OutlierScore(id=ids[i], score=0.0, is_outlier=False, top_features=explain[i], note=note) for i in range(n)
        ]

    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(
        n_estimators=n_estimators,
        max_samples=min(256, n),
        contamination=contamination,
        random_state=seed,
        n_jobs=1,
    )
    view = forest_input(z)
    scores = -forest.fit(view).score_samples(view)
    cut = float(-forest.offset_)
    return [
        OutlierScore(
            id=ids[i],
            score=float(scores[i]),
            is_outlier=bool(scores[i] > cut),
            top_features=explain[i],
            threshold=cut,
        )
        for i in range(n)
    ]


def outlier_flags(scores: Sequence[OutlierScore]) -> list[tuple[str, Flag]]:
    """One ``outlier`` warning per outlier track, naming its explaining features."""
    out: list[tuple[str, Flag]] = []
    for s in scores:
        if not s.is_outlier:
            continue
        why = ", ".join(
            f"{name} z{'≥' if z >= Z_CAP else '≤' if z <= -Z_CAP else '='}{max(-Z_CAP, min(Z_CAP, z)):+.1f}"
            for name, z in s.top_features
        )
        why = why or "no single feature stands out"
        out.append(
            (
                s.id,
                Flag(
                    code="outlier",
                    reason=f"isolation score {s.score:.3f} > cut {s.threshold:.3f}; most unusual: {why}",
                    score=_finite_score(s.score - s.threshold),
                    severity="warning",
                ),
            )
        )
    return out
