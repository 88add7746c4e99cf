"""Output checks: every generated file is accepted or rejected with named reasons, never passed unchecked.

Reasons (``rule: detail``), per kind:

* text: ``empty``, ``degenerate`` (one word dominates, an n-gram repeats in a row, too few distinct
  words, a character run), ``characters``, ``blocked_term``, ``personal_data``;
* image: ``unreadable``, ``blank`` (pixel standard deviation under the threshold: a flat, black or
  white picture), ``size`` (not the requested size);
* music: ``undecodable`` (the audio-analysis decoder refuses it, with its reason), ``too_short``,
  ``too_quiet`` / ``too_loud`` (RMS level), ``clipping``, ``silence``.

Text checks reuse the prompt policy (:mod:`aitasks.content_generation.policy`); audio checks decode
with :func:`aitasks.audio_analysis.decode.decode_file` and measure with
:func:`aitasks.audio_analysis.anomaly.signal_stats`, the same code that checks the catalog.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from aitasks.content_generation.config import CheckConfig
from aitasks.content_generation.policy import BlockedTerms, bad_characters, personal_data

__all__ = ["OUTPUT_RULES", "Verdict", "check_audio", "check_image", "check_text", "degenerate_reason"]

#: Rules an output can be rejected by (rule -> meaning).
OUTPUT_RULES: Final[dict[str, str]] = {
    "empty": "no text, or less than the minimum",
    "degenerate": "repetition: one word dominates, an n-gram repeats in a row, a character run",
    "characters": "control, invisible or unassigned characters",
    "blocked_term": "a term of the blocked-terms list",
    "personal_data": "an e-mail address, phone number, payment card number or IBAN",
    "unreadable": "the image file cannot be read",
    "blank": "the image is flat (one colour, black or white)",
    "size": "the image does not have the requested size",
    "undecodable": "the audio-analysis decoder refuses the file",
    "too_short": "shorter than the minimum duration",
    "too_quiet": "RMS level under the minimum",
    "too_loud": "RMS level over the maximum",
    "clipping": "too many samples at full scale",
    "silence": "too many silent windows",
    "provenance": "the provenance sidecar is missing or does not describe the file",
}

_WORD: Final = re.compile(r"\w+", re.UNICODE)
_CHAR_RUN: Final = re.compile(r"(.)\1{19,}", re.DOTALL)


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one output: accepted when ``reasons`` is empty."""

    reasons: tuple[str, ...]
    measures: dict[str, float]

    @property
    def passed(self) -> bool:
        return not self.reasons


def degenerate_reason(text: str, cfg: CheckConfig) -> str | None:
    """Why ``text`` is degenerate (repetitive), or ``None``."""
    if _CHAR_RUN.search(text):
        return "degenerate: a character repeated 20 times or more in a row"
    words = [w.casefold() for w in _WORD.findall(text)]
    if len(words) >= 6:
        word, count = Counter(words).most_common(1)[0]
        if count / len(words) > cfg.text_max_word_share:
            return f"degenerate: {word!r} is {count} of {len(words)} words"
    if len(words) >= 10 and len(set(words)) / len(words) < cfg.text_min_distinct:
        return f"degenerate: {len(set(words))} distinct of {len(words)} words"
    joined = " ".join(words)
    repeat = re.compile(rf"\b(\w+(?: \w+){{0,3}}?)(?: \1\b){{{cfg.text_max_repeats - 1},}}")
    m = repeat.search(joined)
    if m:
        times = (len(m.group(0)) + 1) // (len(m.group(1)) + 1)
        return f"degenerate: {m.group(1)!r} repeated {times} times in a row"
    return None


def check_text(text: str, cfg: CheckConfig, blocked: BlockedTerms) -> Verdict:
    """Check generated text (see the module docstring)."""
    reasons = []
    body = text.strip()
    if len(body) < cfg.text_min_chars:
        reasons.append(f"empty: {len(body)} characters < minimum {cfg.text_min_chars}")
    else:
        degenerate = degenerate_reason(body, cfg)
        if degenerate:
            reasons.append(degenerate)
    bad = bad_characters(body, allow="\n\t")
    if bad:
        reasons.append(f"characters: {bad[0][1]} at position {bad[0][0]}")
    terms = blocked.find(body)
    if terms:
        reasons.append(f"blocked_term: {', '.join(repr(t) for t in terms)}")
    kinds = sorted({p.kind for p in personal_data(body)})
    if kinds:
        reasons.append(f"personal_data: {', '.join(kinds)}")
    words = _WORD.findall(body)
    return Verdict(tuple(reasons), {"chars": float(len(body)), "words": float(len(words))})


def check_image(path: Path, cfg: CheckConfig, expected_size: int = 0) -> Verdict:
    """Check a generated image file (see the module docstring)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return Verdict((f"unreadable: {exc}",), {})
    reasons = []
    std = float(rgb.std())
    height, width = rgb.shape[:2]
    if std < cfg.image_min_std:
        reasons.append(f"blank: pixel std {std:.4f} < {cfg.image_min_std}")
    if expected_size and (height, width) != (expected_size, expected_size):
        reasons.append(f"size: {width}x{height}, requested {expected_size}x{expected_size}")
    return Verdict(tuple(reasons), {"std": std, "mean": float(rgb.mean()), "width": width, "height": height})


def check_audio(path: Path, cfg: CheckConfig) -> Verdict:
    """Decode a generated audio file with the catalog's decoder and check its level (see the module docstring)."""
    from aitasks.audio_analysis.anomaly import signal_stats
    from aitasks.audio_analysis.decode import AudioDecodeError, DecodeConfig, decode_file

    try:
        audio = decode_file(path, DecodeConfig(sample_rate=22050, max_duration_s=600.0))
    except AudioDecodeError as exc:
        return Verdict((f"undecodable: {exc.reason}: {exc.detail}",), {})
    stats = signal_stats(audio.native, audio.source_rate, loudness_lufs=float("nan"))
    reasons = []
    if stats.duration_s < cfg.audio_min_seconds:
        reasons.append(f"too_short: {stats.duration_s:.2f} s < {cfg.audio_min_seconds} s")
    if stats.rms_dbfs < cfg.audio_min_rms_dbfs:
        reasons.append(f"too_quiet: RMS {stats.rms_dbfs:.1f} dBFS < {cfg.audio_min_rms_dbfs} dBFS")
    elif stats.rms_dbfs > cfg.audio_max_rms_dbfs:
        reasons.append(f"too_loud: RMS {stats.rms_dbfs:.1f} dBFS > {cfg.audio_max_rms_dbfs} dBFS")
    if stats.clip_fraction > cfg.audio_max_clip_fraction:
        reasons.append(f"clipping: {stats.clip_fraction:.4f} of samples > {cfg.audio_max_clip_fraction}")
    if stats.silence_fraction > cfg.audio_max_silence_fraction:
        reasons.append(f"silence: {stats.silence_fraction:.2f} of windows > {cfg.audio_max_silence_fraction}")
    return Verdict(
        tuple(reasons),
        {
            "seconds": round(stats.duration_s, 4),
            "rms_dbfs": round(stats.rms_dbfs, 2),
            "peak": round(stats.peak, 4),
            "clip_fraction": stats.clip_fraction,
            "silence_fraction": stats.silence_fraction,
            "sample_rate": float(audio.source_rate),
        },
    )
