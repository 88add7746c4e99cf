"""Labelled synthetic audio: procedurally generated clips with real variation, for tests and demos.

No audio data set can be downloaded where the tests run, so the classifier is trained and checked on
audio synthesised here. Each class is a family of sounds, not a template: every clip draws its own
tempo, key, timbre, colour, pitch contour and so on from its seed, and every clip then gets a random
gain, an optional light reverb, an optional quiet ambience bed (coloured noise) and an optional noise
floor, so the classes overlap a little.

Classes (:data:`LABELS`):

* ``drums``: kick/snare/hi-hat patterns on a 16th-note grid at 70-170 BPM with random swing and
  humanised timing; pitched decaying sine kicks, noise + body snares, high-passed noise hats; now
  and then a quiet bass drone (so ``drums`` is not "anything without pitch").
* ``tonal``: melodies and/or chords in a random key and scale, each note a harmonic tone whose
  timbre (harmonic amplitudes) is drawn per clip, with an ADSR envelope and vibrato.
* ``noise``: white/pink/brown noise (with a random spectral slope around each colour), slowly
  cross-faded with a low-passed copy and slowly amplitude-modulated; sometimes rain-like drops.
* ``speech``: a speech-like signal: a glottal pulse train whose pitch contour stays in 80-250 Hz,
  through 3 cascaded time-varying formant resonators (vowel targets per syllable), a 3-6 Hz
  syllable envelope, fricative noise bursts and pauses.

Data contract of :func:`write_labelled_folder` (what :func:`aitasks.audio_analysis.classifier.load_labelled_folder`
and any real catalog laid out the same way share):

* Layout: ``root/<label>/<label>-<i>.<ext>``, ``i`` = 0 .. ``per_class - 1`` (no zero padding).
* Audio: mono, at ``sr`` Hz (default 22050), ``round(duration_s * sr)`` frames. The format of clip
  ``i`` is ``formats[i % len(formats)]``: ``wav`` (PCM 16-bit), ``flac`` (PCM 16-bit), ``ogg``
  (Vorbis) or ``mp3`` (MPEG layer III, needs libsndfile >= 1.1). Lossy formats decode to a length
  within a few codec frames of the original.
* Samples: clip ``i`` of ``label`` is ``synth_clip(label, seed=clip_seed(seed, i), sr=sr,
  duration_s=duration_s)``, so any clip can be regenerated from the folder's seed.
* ``root/labels.csv``: UTF-8, header ``path,label``, one row per clip in write order (labels in the
  given order, then ``i``); ``path`` is relative to ``root`` with ``/`` separators.
* Every file is written to a temporary name in its directory, fsynced, then renamed into place, so
  a crash leaves missing files, never torn ones.
"""

from __future__ import annotations

import csv
import io
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from aitasks.runtime.errors import FieldIssue, InvalidInputError

__all__ = ["FORMATS", "LABELS", "clip_seed", "synth_clip", "write_labelled_folder"]

LABELS: Final[tuple[str, ...]] = ("drums", "tonal", "noise", "speech")
#: Extension -> (libsndfile format, subtype) used when writing.
FORMATS: Final[dict[str, tuple[str, str]]] = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
_TASK: Final = "audio.synthetic"
_MIN_SR: Final = 4000
_MAX_SR: Final = 192000
_MAX_DURATION_S: Final = 600.0

_F64 = npt.NDArray[np.float64]
_F32 = npt.NDArray[np.float32]


# ------------------------------------------------------------------------------------------ helpers


def clip_seed(seed: int, index: int) -> int:
    """The seed of clip ``index`` in a folder written with ``seed`` (a 32-bit hash of both)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint32)[0])


def _smooth_curve(rng: np.random.Generator, n: int, sr: int, rate_hz: float) -> _F64:
    """A slowly varying random curve (standard normal control points ``rate_hz`` apart, linearly joined)."""
    points = max(2, int(np.ceil(n / sr * rate_hz)) + 2)
    knots = np.linspace(0.0, n, points)
    return np.interp(np.arange(n, dtype=np.float64), knots, rng.standard_normal(points))


def _sos(kind: str, cutoff: float | tuple[float, float], sr: int, order: int = 2) -> _F64:
    """Butterworth second-order sections, with cut-offs kept safely below Nyquist."""
    from scipy.signal import butter

    nyq = sr / 2
    if isinstance(cutoff, tuple):
        lo, hi = min(cutoff[0], 0.8 * nyq), min(cutoff[1], 0.9 * nyq)
        wn: float | list[float] = [max(lo, 20.0) / nyq, max(hi, lo + 50.0) / nyq]
        if wn[1] >= 1.0:  # type: ignore[index]
            wn = [wn[0], 0.99]  # type: ignore[index]
    else:
        wn = min(max(cutoff, 20.0), 0.8 * nyq) / nyq
    sos: _F64 = butter(order, wn, btype=kind, output="sos")
    return sos


def _filter(sos: _F64, x: _F64) -> _F64:
    from scipy.signal import sosfilt

    out: _F64 = sosfilt(sos, x)
    return out


def _place(out: _F64, sample: _F64, pos: int, gain: float) -> None:
    """Add ``sample * gain`` into ``out`` starting at ``pos`` (clipped at both ends)."""
    if pos >= out.size or pos + sample.size <= 0:
        return
    start = max(pos, 0)
    end = min(pos + sample.size, out.size)
    out[start:end] += gain * sample[start - pos : end - pos]


def _midi_hz(midi: float) -> float:
    return float(440.0 * 2.0 ** ((midi - 69.0) / 12.0))


# ------------------------------------------------------------------------------------------ classes


def _drums(rng: np.random.Generator, sr: int, n: int) -> _F64:
    bpm = rng.uniform(70.0, 170.0)
    step = 60.0 / bpm / 4.0  # a 16th note
    swing = rng.uniform(0.0, 0.35)  # delay of the off-beat 16ths, as a fraction of a step
    t_kick = np.arange(int(rng.uniform(0.25, 0.45) * sr)) / sr
    f_start, f_end = rng.uniform(90.0, 180.0), rng.uniform(38.0, 62.0)
    freq = f_end + (f_start - f_end) * np.exp(-t_kick / rng.uniform(0.02, 0.06))
    kick = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t_kick / rng.uniform(0.08, 0.2))
    kick[: int(0.004 * sr)] += rng.standard_normal(int(0.004 * sr)) * 0.3  # beater click
    t_snare = np.arange(int(0.25 * sr)) / sr
    snare_noise = _filter(
        _sos("bandpass", (rng.uniform(1500, 3000), rng.uniform(6000, 9000)), sr), rng.standard_normal(t_snare.size)
    )
    snare = snare_noise * np.exp(-t_snare / rng.uniform(0.04, 0.12)) * 1.5 + 0.6 * np.sin(
        2 * np.pi * rng.uniform(150, 230) * t_snare
    ) * np.exp(-t_snare / 0.05)
    t_hat = np.arange(int(0.3 * sr)) / sr
    hat_noise = _filter(_sos("highpass", rng.uniform(5000, 9000), sr, order=4), rng.standard_normal(t_hat.size))
    closed_hat = hat_noise * np.exp(-t_hat / rng.uniform(0.01, 0.04))
    open_hat = hat_noise * np.exp(-t_hat / rng.uniform(0.08, 0.2))

    # A one-bar pattern (16 steps) with fills: kicks on 1 and 3 plus extras, snares on 2 and 4.
    kick_steps = {0, 8} | {s for s in range(0, 16, 2) if rng.random() < 0.2}
    snare_steps = {4, 12} | {s for s in range(16) if rng.random() < 0.05}
    hat_every = int(rng.choice([1, 2, 2, 4]))
    open_prob = rng.uniform(0.0, 0.2)
    out = np.zeros(n)
    humanise = rng.uniform(0.0, 0.006)
    for s in range(int(n / sr / step) + 1):
        t = s * step + (swing * step if s % 2 else 0.0) + rng.normal(0.0, humanise)
        pos = int(t * sr)
        bar_step = s % 16
        if bar_step in kick_steps:
            _place(out, kick, pos, rng.uniform(0.8, 1.0))
        if bar_step in snare_steps:
            _place(out, snare, pos, rng.uniform(0.5, 0.9) if bar_step in {4, 12} else rng.uniform(0.15, 0.35))
        if bar_step % hat_every == 0:
            hat = open_hat if rng.random() < open_prob else closed_hat
            _place(out, hat, pos, rng.uniform(0.15, 0.4) * (1.0 if bar_step % 4 == 0 else 0.7))
    if rng.random() < 0.3:  # a quiet bass drone: drums are not "anything without pitch"
        out += 0.1 * np.sin(2 * np.pi * _midi_hz(rng.uniform(28, 40)) * np.arange(n) / sr)
    return out


_SCALES: Final = ((0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10), (0, 2, 4, 7, 9), (0, 3, 5, 7, 10))


def _tone(vibrato: tuple[float, float], f0: float, dur: int, sr: int, harm: _F64, adsr: tuple[float, ...]) -> _F64:
    """One harmonic note of ``dur`` samples plus its release tail."""
    a, d, s_level, r = adsr
    rel = int(r * sr)
    total = dur + rel
    t = np.arange(total) / sr
    rate, depth = vibrato
    freq = f0 * 2.0 ** (depth / 12.0 * np.sin(2 * np.pi * rate * t))
    phase = 2 * np.pi * np.cumsum(freq) / sr
    k = np.arange(1, harm.size + 1)
    keep = k * f0 * 2.0 ** (depth / 12.0) < 0.45 * sr  # no aliasing
    wave = (harm[keep, None] * np.sin(k[keep, None] * phase[None, :])).sum(axis=0)
    env = np.interp(t, [0.0, a, a + d, max(dur / sr, a + d + 1e-3), total / sr], [0.0, 1.0, s_level, s_level, 0.0])
    out: _F64 = wave * env
    return out


def _tonal(rng: np.random.Generator, sr: int, n: int) -> _F64:
    root = int(rng.integers(45, 70))
    scale = _SCALES[int(rng.integers(len(_SCALES)))]
    n_harm = int(rng.integers(2, 14))
    harm = rng.uniform(0.05, 1.0, n_harm) / np.arange(1, n_harm + 1) ** rng.uniform(0.3, 1.8)
    adsr = (rng.uniform(0.003, 0.12), rng.uniform(0.03, 0.3), rng.uniform(0.3, 0.9), rng.uniform(0.05, 0.4))
    vib = (rng.uniform(4.0, 7.0), rng.uniform(0.0, 0.4))
    out = np.zeros(n)

    def degree(d: int) -> float:
        octave, idx = divmod(d, len(scale))
        return float(root + 12 * octave + scale[idx])

    mode = rng.choice(["melody", "chords", "both"])
    if mode in ("chords", "both"):
        pos = 0
        while pos < n:
            dur = int(rng.uniform(0.8, 2.0) * sr)
            base = int(rng.integers(0, len(scale)))
            for d in (base, base + 2, base + 4):
                _place(out, _tone(vib, _midi_hz(degree(d) - 12 * (mode == "both")), dur, sr, harm, adsr), pos, 0.35)
            pos += dur
    if mode in ("melody", "both"):
        pos = int(rng.uniform(0.0, 0.2) * sr)
        d = int(rng.integers(0, len(scale)))
        while pos < n:
            dur = int(rng.choice([0.12, 0.2, 0.25, 0.4, 0.5, 0.75]) * sr * rng.uniform(0.9, 1.1))
            d = int(np.clip(d + rng.integers(-3, 4), -3, 2 * len(scale)))
            if rng.random() > 0.1:  # a few rests
                _place(out, _tone(vib, _midi_hz(degree(d) + 12), dur, sr, harm, adsr), pos, 0.6)
            pos += dur
    return out


def _noise(rng: np.random.Generator, sr: int, n: int) -> _F64:
    alpha = float(rng.choice([0.0, 1.0, 2.0])) + rng.normal(0.0, 0.25)  # spectral slope: white/pink/brown
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr)
    spec *= np.maximum(f, 20.0) ** (-alpha / 2.0)
    x = np.fft.irfft(spec, n)
    x /= np.std(x) + 1e-12
    # Slow random filtering: cross-fade with a low-passed copy, slow amplitude modulation.
    low = _filter(_sos("lowpass", rng.uniform(300.0, 3000.0), sr), x)
    low /= np.std(low) + 1e-12
    mix = 1.0 / (1.0 + np.exp(-1.5 * _smooth_curve(rng, n, sr, rng.uniform(0.2, 1.0))))
    x = mix * low + (1.0 - mix) * x
    x *= 10.0 ** (rng.uniform(1.0, 6.0) * _smooth_curve(rng, n, sr, rng.uniform(0.1, 1.0)) / 20.0)
    if rng.random() < 0.4:  # rain: sparse short high-passed drops
        drop_t = np.arange(int(0.01 * sr)) / sr
        drop = _filter(_sos("highpass", 2000.0, sr), rng.standard_normal(drop_t.size)) * np.exp(-drop_t / 0.002)
        for pos in rng.integers(0, n, int(rng.uniform(20, 150) * n / sr)):
            _place(x, drop, int(pos), rng.uniform(0.5, 3.0))
    return x


#: Vowel formant targets (F1, F2, F3) in Hz, roughly /a e i o u ə/.
_VOWELS: Final = (
    (730, 1090, 2440),
    (530, 1840, 2480),
    (270, 2290, 3010),
    (570, 840, 2410),
    (300, 870, 2240),
    (500, 1500, 2500),
)


def _speech(rng: np.random.Generator, sr: int, n: int) -> _F64:
    from scipy.signal import sosfilt

    dur_s = n / sr
    t = np.arange(n) / sr
    # Pitch: a base in 80-250 Hz, a declination over the phrase, and slow wiggles; always in 80-250 Hz.
    base = rng.uniform(90.0, 220.0)
    contour = -rng.uniform(0.0, 0.4) * t / max(dur_s, 1e-3) + 0.15 * _smooth_curve(rng, n, sr, rng.uniform(2.0, 5.0))
    f0 = np.clip(base * 2.0**contour, 80.0, 250.0)
    phase = np.cumsum(f0) / sr
    pulses = np.diff(np.floor(phase), prepend=0.0)  # 1 where a glottal period starts
    # Glottal flow derivative: two one-pole low-passes (-12 dB/oct) and a difference (lip radiation).
    lp = np.array([[1.0 - 0.97, 0.0, 0.0, 1.0, -0.97, 0.0]] * 2)
    source = np.diff(sosfilt(lp, pulses), prepend=0.0) * 40.0 + 0.02 * rng.standard_normal(n)

    # Syllables (3-6 per second) with pauses; each has a vowel target and maybe a fricative onset.
    voice_env = np.zeros(n)
    fric_env = np.zeros(n)
    knots_t: list[float] = [0.0]
    schwa = _VOWELS[5]
    knots_f: list[tuple[float, float, float]] = [(float(schwa[0]), float(schwa[1]), float(schwa[2]))]
    rate = rng.uniform(3.0, 6.0)
    pos = rng.uniform(0.0, 0.2)
    while pos < dur_s:
        if pos > 0.3 and rng.random() < 0.12:
            pos += rng.uniform(0.15, 0.5)
            continue
        syl = rng.uniform(0.7, 1.3) / rate
        a, b = int(pos * sr), min(int((pos + syl) * sr), n)
        if b > a:
            u = np.linspace(0.0, 1.0, b - a)
            voice_env[a:b] = np.sin(np.pi * u**0.7) ** 1.5 * rng.uniform(0.6, 1.0)
            if rng.random() < 0.5:
                fl = min(int(rng.uniform(0.03, 0.08) * sr), b - a)
                fric_env[a : a + fl] = np.hanning(fl) * rng.uniform(0.05, 0.3)
        vowel = _VOWELS[int(rng.integers(len(_VOWELS)))]
        knots_t.append(pos + syl / 2)
        knots_f.append(
            (vowel[0] * rng.uniform(0.85, 1.15), vowel[1] * rng.uniform(0.85, 1.15), vowel[2] * rng.uniform(0.9, 1.1))
        )
        pos += syl
    knots_t.append(dur_s)
    knots_f.append(knots_f[-1])
    kt = np.asarray(knots_t)
    kf = np.asarray(knots_f)

    # 3 cascaded resonators whose centre frequencies move with the formant track, updated every block.
    block = max(64, int(0.008 * sr))
    bw = np.array([rng.uniform(60, 110), rng.uniform(80, 140), rng.uniform(120, 200)])
    voiced = source * voice_env
    out = np.zeros(n)
    zi = np.zeros((3, 2))
    for start in range(0, n, block):
        centre = (start + block / 2) / sr
        formants = np.minimum([np.interp(centre, kt, kf[:, i]) for i in range(3)], 0.45 * sr)
        r = np.exp(-np.pi * bw / sr)
        sos = np.zeros((3, 6))
        sos[:, 0] = 1.0 - r  # rough gain normalisation at resonance
        sos[:, 3] = 1.0
        sos[:, 4] = -2.0 * r * np.cos(2 * np.pi * formants / sr)
        sos[:, 5] = r * r
        out[start : start + block], zi = sosfilt(sos, voiced[start : start + block], zi=zi)
    out /= np.max(np.abs(out)) + 1e-12
    fric = _filter(_sos("highpass", rng.uniform(2500.0, 5000.0), sr, order=4), rng.standard_normal(n))
    return out + fric * fric_env


_GENERATORS: Final[dict[str, Callable[[np.random.Generator, int, int], _F64]]] = {
    "drums": _drums,
    "tonal": _tonal,
    "noise": _noise,
    "speech": _speech,
}


def _finish(rng: np.random.Generator, x: _F64, sr: int) -> _F32:
    """Shared post-processing: optional reverb, ambience bed and noise floor, then a random peak gain."""
    from scipy.signal import fftconvolve

    n = x.size
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    x = x / (np.max(np.abs(x)) + 1e-12)
    if rng.random() < 0.5:
        ir_t = np.arange(int(rng.uniform(0.1, 0.5) * sr)) / sr
        ir = rng.standard_normal(ir_t.size) * np.exp(-ir_t * 6.9 / ir_t[-1])  # -60 dB at the end
        wet = fftconvolve(x, ir)[:n]
        wet /= np.max(np.abs(wet)) + 1e-12
        mix = rng.uniform(0.05, 0.3)
        x = (1.0 - mix) * x + mix * wet
    if rng.random() < 0.35:  # an ambience bed (recordings have one), so ``noise`` is not "anything noisy"
        bed = _noise(rng, sr, n)
        x = x + bed * (10.0 ** (rng.uniform(-30.0, -12.0) / 20.0) / (np.max(np.abs(bed)) + 1e-12))
    if rng.random() < 0.6:
        x = x + rng.standard_normal(n) * 10.0 ** (rng.uniform(-60.0, -35.0) / 20.0)
    peak = 10.0 ** (rng.uniform(-20.0, -1.0) / 20.0)
    x = x * (peak / (np.max(np.abs(x)) + 1e-12))
    # Decaying filter tails reach float32 denormals, which slow every later computation on the clip.
    x[np.abs(x) < 1e-20] = 0.0
    return np.clip(x, -1.0, 1.0).astype(np.float32)


# -------------------------------------------------------------------------------------- public API


def synth_clip(label: str, *, seed: int, sr: int = 22050, duration_s: float = 4.0) -> _F32:
    """Synthesise one clip of class ``label``.

    Args:
        label: One of :data:`LABELS`.
        seed: Non-negative integer; the clip is a pure function of ``(label, seed, sr, duration_s)``.
        sr: Sample rate in Hz (4000-192000).
        duration_s: Length in seconds (> 0, at most 600); the clip has ``round(duration_s * sr)`` samples.

    Returns:
        Mono float32 samples, finite, in [-1, 1].

    Raises:
        InvalidInputError: Unknown label, negative seed, or sample rate/duration out of range.
    """
    issues = []
    if label not in _GENERATORS:
        issues.append(FieldIssue("label", f"{label!r} is not one of {list(LABELS)}"))
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        issues.append(FieldIssue("seed", f"must be a non-negative integer, got {seed!r}"))
    if not _MIN_SR <= sr <= _MAX_SR:
        issues.append(FieldIssue("sr", f"{sr} outside [{_MIN_SR}, {_MAX_SR}]"))
    n = round(duration_s * sr) if np.isfinite(duration_s) else 0
    if not (0 < duration_s <= _MAX_DURATION_S) or n < 1:
        issues.append(FieldIssue("duration_s", f"{duration_s} must be in (0, {_MAX_DURATION_S}] s and hold a sample"))
    if issues:
        raise InvalidInputError(_TASK, issues)
    # crc32, not hash(): str hashes are salted per process and would break determinism.
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(label.encode("utf-8"))]))
    return _finish(rng, _GENERATORS[label](rng, sr, n), sr)


def _write_atomic(path: Path, write: Callable[[io.BufferedRandom], object]) -> None:
    """Write ``path`` through ``write(file)`` atomically (:func:`aitasks.platform.files.atomic_path`)."""
    from aitasks.platform.files import atomic_path

    with atomic_path(path) as tmp, tmp.open("w+b") as fh:
        write(fh)


def write_labelled_folder(
    root: Path,
    *,
    per_class: int,
    seed: int,
    sr: int = 22050,
    duration_s: float = 4.0,
    formats: tuple[str, ...] = ("wav", "flac", "ogg"),
    labels: Sequence[str] = LABELS,
) -> list[tuple[Path, str]]:
    """Write a labelled folder of synthetic clips (layout and ``labels.csv`` as in the module docstring).

    Args:
        root: Output directory (created; existing files of the same names are replaced).
        per_class: Clips per label (>= 1).
        seed: Folder seed; clip ``i`` uses ``clip_seed(seed, i)``.
        sr: Sample rate in Hz.
        duration_s: Clip length in seconds.
        formats: Extensions cycled through per clip index; each a key of :data:`FORMATS` that this
            libsndfile can write (``soundfile.available_formats()``).
        labels: The labels to write (a subset of :data:`LABELS`, in the order to write them).

    Returns:
        ``(path, label)`` per clip, in the order of ``labels.csv``.

    Raises:
        InvalidInputError: Bad counts, unknown or unavailable formats, unknown labels.
    """
    import soundfile as sf

    issues = []
    if per_class < 1:
        issues.append(FieldIssue("per_class", f"must be >= 1, got {per_class}"))
    if not formats:
        issues.append(FieldIssue("formats", "at least one format is needed"))
    available = sf.available_formats()
    for ext in formats:
        if ext not in FORMATS:
            issues.append(FieldIssue("formats", f"{ext!r} is not one of {sorted(FORMATS)}"))
        elif FORMATS[ext][0] not in available:
            issues.append(FieldIssue("formats", f"{ext!r} cannot be written by libsndfile {sf.__libsndfile_version__}"))
    unknown = [lab for lab in labels if lab not in _GENERATORS]
    if unknown or not labels:
        issues.append(FieldIssue("labels", f"must be a non-empty subset of {list(LABELS)}, got {list(labels)}"))
    if issues:
        raise InvalidInputError(_TASK, issues)

    written: list[tuple[Path, str]] = []
    for label in labels:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext = formats[i % len(formats)]
            container, subtype = FORMATS[ext]
            samples = synth_clip(label, seed=clip_seed(seed, i), sr=sr, duration_s=duration_s)
            path = root / label / f"{label}-{i}.{ext}"

            def write(fh: io.BufferedRandom, x: _F32 = samples, c: str = container, s: str = subtype) -> None:
                sf.write(fh, x, sr, format=c, subtype=s)

            _write_atomic(path, write)
            written.append((path, label))

    text = io.StringIO()
    out = csv.writer(text, lineterminator="\n")
    out.writerow(["path", "label"])
    out.writerows((p.relative_to(root).as_posix(), lab) for p, lab in written)
    _write_atomic(root / "labels.csv", lambda fh: fh.write(text.getvalue().encode("utf-8")))
    return written
