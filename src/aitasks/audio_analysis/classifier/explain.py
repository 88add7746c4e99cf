"""Integrated gradients over the classifier's log-mel input, and an HTML report of heat maps over spectrograms.

What is explained: the logit of one class (by default the predicted one) as a function of the
model's input image, the log-mel spectrogram ``[n_mels, frames]`` of one crop of ``clip_seconds``
(the middle of the clip). Integrated gradients (Sundararajan et al., 2017) attribute the difference
``f(x) - f(baseline)`` to the image's cells; they are complete: the attributions sum to that
difference, up to the integral's error, which is reported per example as the convergence delta.

Baseline: every cell at the floor (-80 dB below the clip's peak, ``-1`` on the model's scale), i.e.
"nothing above the floor anywhere": the image a digitally silent stretch inside a clip has. A red
cell raised the explained class's logit relative to that, a blue one lowered it.

Torch models go through captum's ``IntegratedGradients`` (Gauss-Legendre quadrature); Keras models
through the same quadrature by hand with ``tf.GradientTape`` (same nodes and weights, so both
backends are explained alike).

Digital silence (the crop's loudest mel cell below -80 dBFS) is not explained: the model normalises
each clip to its own peak, so silence becomes a flat image whose attributions would say nothing
about the audio. Such examples are drawn at the floor and marked as silent.

Report (:func:`render_explanations`): one self-contained page like the audio report
(:mod:`aitasks.audio_analysis.report`: no script, no link, no external resource, a CSP that allows
only inline styles and ``data:`` images). Each figure is the crop's log-mel spectrogram in grey on a
fixed range (-80 .. 0 dBFS, silence white) with the attributions blended over it (red positive,
blue negative), time and mel-spaced frequency axes, a dBFS colour bar, an attribution colour bar on
one symmetric range shared by every figure of the report, and the attributions summed per mel band.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeGuard, cast

import numpy as np
import numpy.typing as npt

from aitasks.audio_analysis.classifier.config import _F32, _TASK, ClassifierConfig
from aitasks.runtime.errors import FieldIssue, InvalidInputError

if TYPE_CHECKING:
    from aitasks.audio_analysis.classifier.keras_backend import KerasMelCnn
    from aitasks.audio_analysis.classifier.model import MelCnn

_F64 = npt.NDArray[np.float64]
#: The model's floor (dB below the clip's peak) and the display's (dBFS).
FLOOR_DB: Final = -80.0
#: The baseline image: every cell at the floor, on the model's scale ((dB / 40) + 1).
BASELINE_VALUE: Final = -1.0
_FULL_SCALE_HZ: Final = 1000.0


@dataclass(frozen=True)
class Explanation:
    """Integrated gradients of one crop.

    Attributes:
        name: What the crop is from (a file's relative path, a track id).
        true_label: The clip's label when known.
        target: The explained class.
        predicted: The model's top class on this crop, and ``probability`` its softmax probability.
        offset_s: Start of the crop in the clip, in seconds.
        dbfs: Log-mel power of the crop in dBFS ``[n_mels, frames]`` (display only).
        attributions: Attribution per cell of the model's input ``[n_mels, frames]`` (zeros when silent).
        score: The target's logit on the crop.
        baseline_score: The target's logit on the baseline image.
        delta: ``sum(attributions) - (score - baseline_score)``: the integral's error (captum's
            convergence delta for torch models, the same quantity computed here for Keras ones).
        silent: Digital silence: not explained (see the module docstring).
    """

    name: str
    true_label: str | None
    target: str
    predicted: str
    probability: float
    offset_s: float
    dbfs: _F64
    attributions: _F64
    score: float
    baseline_score: float
    delta: float
    silent: bool

    @property
    def relative_delta(self) -> float:
        """``|delta| / |score - baseline_score|`` (0 when both are 0)."""
        gap = abs(self.score - self.baseline_score)
        return abs(self.delta) / gap if gap > 0 else (0.0 if self.delta == 0 else math.inf)


# --------------------------------------------------------------------------------------- log-mel dBFS


@functools.lru_cache(maxsize=8)
def _front_end(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float | None) -> tuple[_F64, _F64]:
    import librosa
    from scipy.signal import get_window

    fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max).astype(np.float64)
    return fb, np.asarray(get_window("hann", n_fft, fftbins=True), dtype=np.float64)  # torch's periodic Hann


def _mel_power_db(x: npt.NDArray[np.float32], cfg: ClassifierConfig) -> _F64:
    """10 log10 of the mel power ``[n_mels, frames]``, framed as the models frame (zero-padded, centred)."""
    fb, window = _front_end(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max)
    pad = cfg.n_fft // 2
    padded = np.pad(x.astype(np.float64), (pad, pad))
    frames = np.lib.stride_tricks.sliding_window_view(padded, cfg.n_fft)[:: cfg.hop_length]
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    db: _F64 = 10.0 * np.log10(np.maximum(fb @ power.T, 1e-10))
    return db


@functools.lru_cache(maxsize=8)
def _full_scale_db(cfg: ClassifierConfig) -> float:
    """The log-mel dB of a full-scale 1 kHz sine (0 dBFS), measured through the same front end."""
    t = np.arange(cfg.clip_samples, dtype=np.float64) / cfg.sample_rate
    sine = np.sin(2.0 * np.pi * _FULL_SCALE_HZ * t).astype(np.float32)
    return float(_mel_power_db(sine, cfg).max())


def log_mel_dbfs(x: npt.NDArray[np.float32], cfg: ClassifierConfig) -> _F64:
    """The crop's log-mel power in dBFS ``[n_mels, frames]`` (0 dBFS: a full-scale sine's peak cell)."""
    return _mel_power_db(x, cfg) - _full_scale_db(cfg)


def mel_band_centres(cfg: ClassifierConfig) -> _F64:
    """Centre frequency (Hz) of each mel band of ``cfg``, low to high."""
    import librosa

    top = cfg.f_max if cfg.f_max is not None else cfg.sample_rate / 2
    return np.asarray(librosa.mel_frequencies(n_mels=cfg.n_mels + 2, fmin=cfg.f_min, fmax=top)[1:-1], np.float64)


def band_share(explanation: Explanation, cfg: ClassifierConfig, lo_hz: float, hi_hz: float) -> float:
    """Share of the absolute attribution mass in the mel bands centred in ``[lo_hz, hi_hz]``."""
    per_band = np.abs(explanation.attributions).sum(axis=1)
    total = float(per_band.sum())
    if total == 0.0:
        return 0.0
    centres = mel_band_centres(cfg)
    return float(per_band[(centres >= lo_hz) & (centres <= hi_hz)].sum() / total)


# --------------------------------------------------------------------------------- integrated gradients


def _nodes(n_steps: int) -> tuple[_F64, _F64]:
    """Gauss-Legendre nodes and weights on [0, 1] (captum's ``gausslegendre``)."""
    x, w = np.polynomial.legendre.leggauss(n_steps)
    return (x + 1.0) / 2.0, w / 2.0


def _torch_ig(model: MelCnn, crops: _F32, targets: list[int], n_steps: int) -> tuple[_F64, _F64, _F64, _F64, _F64]:
    """(images, attributions, scores, baseline scores, captum's convergence deltas) of a batch of crops."""
    import torch

    from aitasks.platform.compute import integrated_gradients

    integrated = integrated_gradients()

    from aitasks.audio_analysis.classifier.model import _model_device, _torch_runtime

    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        with _torch_runtime(model.config, device, seed=False), torch.enable_grad():
            x = torch.from_numpy(crops).to(device)
            with torch.no_grad():
                image = model.log_mel(x)
            base = torch.full_like(image, BASELINE_VALUE)
            ig = integrated(model.from_log_mel)
            attr, delta = ig.attribute(
                image,
                baselines=base,
                target=targets,
                n_steps=n_steps,
                method="gausslegendre",
                internal_batch_size=max(n_steps, 1),
                return_convergence_delta=True,
            )
            with torch.no_grad():
                idx = torch.tensor(targets, device=device)[:, None]
                scores = model.from_log_mel(image).gather(1, idx)[:, 0]
                base_scores = model.from_log_mel(base).gather(1, idx)[:, 0]
    finally:
        model.train(was_training)
    return (
        image[:, 0].double().cpu().numpy(),
        attr[:, 0].detach().double().cpu().numpy(),
        scores.double().cpu().numpy(),
        base_scores.double().cpu().numpy(),
        delta.detach().double().cpu().numpy(),
    )


def _keras_ig(model: KerasMelCnn, crops: _F32, targets: list[int], n_steps: int) -> tuple[_F64, _F64, _F64, _F64, _F64]:
    """The same quadrature by hand: gradients of the target logit along the path, with ``tf.GradientTape``."""
    import tensorflow as tf

    from aitasks.audio_analysis.classifier.keras_backend import _keras_runtime

    alphas, weights = _nodes(n_steps)
    images, attrs, scores, base_scores = [], [], [], []
    with _keras_runtime(model.config, seed=False):
        for crop, target in zip(crops, targets, strict=True):
            image = np.asarray(model.log_mel(crop[None, :]), np.float32)[0]  # [n_mels, frames]
            base = np.full_like(image, BASELINE_VALUE)
            steps = base[None] + alphas[:, None, None].astype(np.float32) * (image - base)[None]
            path = tf.constant(steps[..., None])
            with tf.GradientTape() as tape:
                tape.watch(path)
                out = model.from_log_mel(path, training=False)[:, target]
            grads = np.asarray(tape.gradient(out, path), np.float64)[..., 0]
            attrs.append((image - base).astype(np.float64) * np.tensordot(weights, grads, axes=1))
            ends = np.asarray(model.from_log_mel(tf.constant(np.stack([image, base])[..., None])), np.float64)
            images.append(image.astype(np.float64))
            scores.append(ends[0, target])
            base_scores.append(ends[1, target])
    a, s, b = np.stack(attrs), np.asarray(scores), np.asarray(base_scores)
    return np.stack(images), a, s, b, a.sum(axis=(1, 2)) - (s - b)


def explain_clips(
    model: MelCnn | KerasMelCnn,
    clips: Sequence[np.ndarray],
    cfg: ClassifierConfig,
    *,
    names: Sequence[str],
    true_labels: Sequence[int | None] | None = None,
    targets: Sequence[int] | None = None,
    n_steps: int = 32,
) -> list[Explanation]:
    """Integrated gradients of the middle crop of each clip over the model's log-mel input.

    Args:
        model: A torch :class:`MelCnn` (captum) or a :class:`KerasMelCnn` (``tf.GradientTape``).
        clips: Mono float32 clips at ``cfg.sample_rate``.
        cfg: The model's configuration.
        names: A name per clip (shown in the report).
        true_labels: Label index per clip, when known.
        targets: Class index to explain per clip; default the class the model predicts on the crop.
        n_steps: Quadrature points of the path integral.

    Returns:
        One :class:`Explanation` per clip, in order.

    Raises:
        InvalidInputError: Bad clips, mismatched lengths, a target or label out of range, a bad
            ``n_steps``, or a configuration that does not match the model.
    """
    from aitasks.audio_analysis.classifier.model import _check_clips, _check_model, _fit_length

    _check_model(model, cfg)
    k = len(cfg.labels)
    issues = []
    if not 2 <= n_steps <= 1024:
        issues.append(FieldIssue("n_steps", f"{n_steps} not in [2, 1024]"))
    if len(names) != len(clips):
        issues.append(FieldIssue("names", f"{len(names)} names for {len(clips)} clips"))
    for field, given in (("targets", targets), ("true_labels", true_labels)):
        if given is None:
            continue
        if len(given) != len(clips):
            issues.append(FieldIssue(field, f"{len(given)} values for {len(clips)} clips"))
        elif any(v is not None and not 0 <= v < k for v in given):
            issues.append(FieldIssue(field, f"class indices must be in [0, {k})"))
    if issues:
        raise InvalidInputError(_TASK, issues)
    if not clips:
        return []
    data = _check_clips(clips)
    n = cfg.clip_samples
    offsets = [max(c.size - n, 0) // 2 for c in data]
    crops = np.stack([_fit_length(c, n, o) for c, o in zip(data, offsets, strict=True)])
    dbfs = [log_mel_dbfs(c, cfg) for c in crops]
    silent = [bool(d.max() < FLOOR_DB) for d in dbfs]
    logits = _crop_logits(model, crops)
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    predicted = probs.argmax(axis=1)
    goal = [int(t) for t in (targets if targets is not None else predicted)]
    loud = [i for i, s in enumerate(silent) if not s]
    shape = dbfs[0].shape
    attrs = np.zeros((len(data), *shape))
    scores = logits[np.arange(len(data)), goal].astype(np.float64)
    base_scores = scores.copy()  # silent: nothing explained, so no gap either
    deltas = np.zeros(len(data))
    if loud:
        picked = [goal[i] for i in loud]
        if _is_torch(model):
            _, a, s, b, d = _torch_ig(model, crops[loud], picked, n_steps)
        else:
            _, a, s, b, d = _keras_ig(cast("KerasMelCnn", model), crops[loud], picked, n_steps)
        attrs[loud], scores[loud], base_scores[loud], deltas[loud] = a, s, b, d
    out = []
    for i in range(len(data)):
        known = None if true_labels is None else true_labels[i]
        truth = None if known is None else cfg.labels[int(known)]
        out.append(
            Explanation(
                name=str(names[i]),
                true_label=truth,
                target=cfg.labels[goal[i]],
                predicted=cfg.labels[int(predicted[i])],
                probability=float(probs[i, predicted[i]]),
                offset_s=offsets[i] / cfg.sample_rate,
                dbfs=dbfs[i],
                attributions=attrs[i],
                score=float(scores[i]),
                baseline_score=float(base_scores[i]),
                delta=float(deltas[i]),
                silent=silent[i],
            )
        )
    return out


def _is_torch(model: MelCnn | KerasMelCnn) -> TypeGuard[MelCnn]:
    from aitasks.audio_analysis.classifier.model import MelCnn

    return isinstance(model, MelCnn)


def _crop_logits(model: MelCnn | KerasMelCnn, crops: _F32) -> _F64:
    if not _is_torch(model):
        from aitasks.audio_analysis.classifier.keras_backend import _keras_runtime

        keras_model = cast("KerasMelCnn", model)
        with _keras_runtime(keras_model.config, seed=False):
            return np.asarray(keras_model.logits(crops), np.float64)
    import torch

    from aitasks.audio_analysis.classifier.model import _model_device, _torch_runtime

    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        with _torch_runtime(model.config, device, seed=False), torch.inference_mode():
            net: torch.nn.Module = model
            logits: _F64 = net(torch.from_numpy(crops).to(device)).double().cpu().numpy()
            return logits
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------------------ rendering

#: Figure geometry (pixels): plot, band profile, dBFS bar, attribution bar, whole box.
_LEFT, _TOP, _W, _H = 56, 8, 320, 150
_PROFILE_LEFT, _PROFILE_W = _LEFT + _W + 8, 56
_DB_BAR_LEFT = _PROFILE_LEFT + _PROFILE_W + 14
_ATTR_BAR_LEFT = _DB_BAR_LEFT + 12 + 40
_BAR_W = 12
_BOX_W, _BOX_H = _ATTR_BAR_LEFT + _BAR_W + 52, _TOP + _H + 40
_POS: Final = np.array([214.0, 39.0, 40.0])
_NEG: Final = np.array([31.0, 100.0, 200.0])
_EXTRA_CSS: Final = ".legend{font-size:.9em}.silent{color:#a36a00}"


def _grey(dbfs: _F64) -> _F64:
    """dBFS -> grey level: 0 dBFS dark (55), the floor and below white (255). NaN is the floor."""
    norm = np.clip(np.nan_to_num((dbfs - FLOOR_DB) / -FLOOR_DB, nan=0.0), 0.0, 1.0)
    return 255.0 - 200.0 * norm


def _blend(grey: _F64, signed: _F64) -> npt.NDArray[np.uint8]:
    """Attributions (``signed`` in [-1, 1]) blended over a grey image: red up, blue down, opacity with size."""
    a = np.clip(np.nan_to_num(signed), -1.0, 1.0)
    alpha = (np.abs(a) ** 0.7 * 0.9)[..., None]
    colour = np.where((a >= 0)[..., None], _POS, _NEG)
    rgb = (1.0 - alpha) * grey[..., None] + alpha * colour
    return np.asarray(np.clip(rgb.round(), 0, 255), dtype=np.uint8)


def _upscale(rgb: npt.NDArray[np.uint8], min_w: int = 256, min_h: int = 128) -> npt.NDArray[np.uint8]:
    """Low bands at the bottom; small images repeated (pixelated, not blurred) to a readable size."""
    img = rgb[::-1]
    if img.shape[1] < min_w:
        img = np.repeat(img, math.ceil(min_w / img.shape[1]), axis=1)
    if img.shape[0] < min_h:
        img = np.repeat(img, math.ceil(min_h / img.shape[0]), axis=0)
    return img


def attribution_range(explanations: Sequence[Explanation]) -> float:
    """The report's one colour range ``±r``: the 99.5th percentile of |attribution| over every explained cell."""
    cells = [np.abs(e.attributions).ravel() for e in explanations if not e.silent]
    values = np.concatenate(cells) if cells else np.zeros(1)
    values = values[np.isfinite(values)]
    r = float(np.percentile(values, 99.5)) if values.size else 0.0
    return r if r > 0 and math.isfinite(r) else 1.0


def _bars() -> tuple[bytes, bytes]:
    from aitasks.audio_analysis.report import encode_png

    ramp = np.linspace(1.0, 0.0, 128)[:, None].repeat(4, axis=1)  # top = 1
    db = np.repeat(_grey(FLOOR_DB * (1.0 - ramp))[..., None], 3, axis=2).round().astype(np.uint8)
    attr = _blend(np.full(ramp.shape, 255.0), 2.0 * ramp - 1.0)
    return encode_png(db), encode_png(attr)


def explanation_figure(e: Explanation, cfg: ClassifierConfig, r: float, profile_max: float) -> str:
    """One figure: the overlay with axes, the per-band attribution profile and both colour bars (markup)."""
    from aitasks.audio_analysis.report import (
        _data_uri,
        _esc,
        _Html,
        _hz_label,
        _join,
        _mel,
        _nice_ticks,
        _tag,
        encode_png,
    )

    png = encode_png(_upscale(_blend(_grey(e.dbfs), e.attributions / r)))
    db_bar, attr_bar = _bars()
    x0, y0, w, h = _LEFT, _TOP, _W, _H
    parts = [
        f'<svg width="{_BOX_W}" height="{_BOX_H}" viewBox="0 0 {_BOX_W} {_BOX_H}" font-size="10" '
        'font-family="sans-serif" aria-hidden="true">',
        f'<rect x="{x0 - 0.5}" y="{y0 - 0.5}" width="{w + 1}" height="{h + 1}" fill="none" stroke="#444"/>',
    ]
    lo_t, hi_t = e.offset_s, e.offset_s + cfg.clip_seconds
    for t in _nice_ticks(lo_t, hi_t, 5):
        x = x0 + (t - lo_t) / (hi_t - lo_t) * w
        parts.append(
            f'<line x1="{x:.1f}" y1="{y0 + h}" x2="{x:.1f}" y2="{y0 + h + 4}" stroke="#444"/>'
            f'<text x="{x:.1f}" y="{y0 + h + 14}" text-anchor="middle">{t:g}</text>'
        )
    parts.append(f'<text x="{x0 + w / 2:.1f}" y="{y0 + h + 28}" text-anchor="middle">time in the clip (s)</text>')
    top_hz = cfg.f_max if cfg.f_max is not None else cfg.sample_rate / 2
    lo, hi = _mel(cfg.f_min), _mel(top_hz)

    def y_of(hz: float) -> float:
        return y0 + h - (_mel(hz) - lo) / (hi - lo) * h

    placed: list[float] = []
    for hz in (cfg.f_min, 250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0, 16000.0, top_hz):
        y = y_of(hz)
        if not cfg.f_min <= hz <= top_hz or any(abs(y - p) < 11 for p in placed):
            continue
        if hz != top_hz and abs(y - y_of(top_hz)) < 11:
            continue
        placed.append(y)
        parts.append(
            f'<line x1="{x0 - 4}" y1="{y:.1f}" x2="{x0}" y2="{y:.1f}" stroke="#444"/>'
            f'<text x="{x0 - 6}" y="{y + 3.5:.1f}" text-anchor="end">{_hz_label(hz)}</text>'
        )
    parts.append(
        f'<text x="10" y="{y0 + h / 2:.1f}" text-anchor="middle" transform="rotate(-90 10 {y0 + h / 2:.1f})">'
        "frequency (Hz, mel scale)</text>"
    )
    # Attributions summed over time per mel band, on the report's one scale (centre line = 0).
    per_band = e.attributions.sum(axis=1)
    mid = _PROFILE_LEFT + _PROFILE_W / 2
    row_h = h / max(per_band.size, 1)
    parts.append(f'<line x1="{mid}" y1="{y0}" x2="{mid}" y2="{y0 + h}" stroke="#999"/>')
    for i, v in enumerate(per_band.tolist()):
        if not math.isfinite(v) or v == 0.0:
            continue
        bw = min(abs(v) / profile_max, 1.0) * (_PROFILE_W / 2)
        x = mid if v > 0 else mid - bw
        fill = "#d62728" if v > 0 else "#1f64c8"
        top = y0 + h - (i + 1) * row_h
        parts.append(
            f'<rect x="{x:.1f}" y="{top:.1f}" width="{bw:.1f}" height="{max(row_h - 0.3, 0.5):.1f}" fill="{fill}"/>'
        )
    parts.append(f'<text x="{mid}" y="{y0 + h + 14}" text-anchor="middle">per band</text>')
    for db in _nice_ticks(FLOOR_DB, 0.0, 5):
        y = y0 + (db / FLOOR_DB) * h
        parts.append(
            f'<line x1="{_DB_BAR_LEFT + _BAR_W}" y1="{y:.1f}" x2="{_DB_BAR_LEFT + _BAR_W + 3}" y2="{y:.1f}" '
            f'stroke="#444"/><text x="{_DB_BAR_LEFT + _BAR_W + 4}" y="{y + 3.5:.1f}">{db:g}</text>'
        )
    parts.append(f'<text x="{_DB_BAR_LEFT - 2}" y="{y0 + h + 28}">dBFS</text>')
    for frac, label in ((0.0, f"+{r:.2g}"), (0.5, "0"), (1.0, f"−{r:.2g}")):
        y = y0 + frac * h
        parts.append(
            f'<line x1="{_ATTR_BAR_LEFT + _BAR_W}" y1="{y:.1f}" x2="{_ATTR_BAR_LEFT + _BAR_W + 3}" y2="{y:.1f}" '
            f'stroke="#444"/><text x="{_ATTR_BAR_LEFT + _BAR_W + 4}" y="{y + 3.5:.1f}">{label}</text>'
        )
    parts.append(f'<text x="{_ATTR_BAR_LEFT - 4}" y="{y0 + h + 28}">logit</text></svg>')
    box = (
        f'<div class="specbox" style="width:{_BOX_W}px;height:{_BOX_H}px">'
        + "".join(parts)
        + f'<img class="spec" alt="{_esc(f"attributions over the log-mel spectrogram of {e.name}")}" '
        f'src="{_data_uri(png)}" style="left:{x0}px;top:{y0}px;width:{w}px;height:{h}px">'
        f'<img class="colourbar-db" alt="grey scale {FLOOR_DB:g} to 0 dBFS" src="{_data_uri(db_bar)}" '
        f'style="left:{_DB_BAR_LEFT}px;top:{y0}px;width:{_BAR_W}px;height:{h}px">'
        f'<img class="colourbar" alt="attribution colour bar -{r:.2g} to +{r:.2g}" src="{_data_uri(attr_bar)}" '
        f'style="left:{_ATTR_BAR_LEFT}px;top:{y0}px;width:{_BAR_W}px;height:{h}px">'
        "</div>"
    )
    truth = f"true {e.true_label} · " if e.true_label is not None else ""
    if e.silent:
        detail: object = _tag("span", "digital silence: not explained", attrs='class="silent"')
    else:
        detail = (
            f"f(x) − f(baseline) = {e.score - e.baseline_score:+.3f} · Σ attributions = "
            f"{float(e.attributions.sum()):+.3f} · delta {e.delta:+.2g}"
        )
    caption = _join(
        [
            _tag("b", e.name),
            f" · {truth}predicted {e.predicted} ({e.probability:.0%}) · explains {e.target}",
            _Html("<br>"),
            detail,
        ]
    )
    return str(
        _tag(
            "figure",
            _Html(box),
            _tag("figcaption", caption),
            attrs=f'data-track="{_esc(e.name)}" data-silent="{str(e.silent).lower()}"',
        )
    )


def render_explanations(
    explanations: Sequence[Explanation],
    cfg: ClassifierConfig,
    *,
    title: str,
    meta: Mapping[str, object],
    n_steps: int,
) -> str:
    """The explanations as one self-contained HTML page (see the module docstring).

    Args:
        explanations: What :func:`explain_clips` returned.
        cfg: The model's configuration (axes, labels).
        title: Page title.
        meta: Facts shown at the top (model, backend, run ...); nested mappings are flattened.
        n_steps: Quadrature points used (shown).

    Returns:
        The HTML document.
    """
    from aitasks.audio_analysis.report import _CSS, _count, _esc, _flatten, _Html, _muted, _num, _section, _table, _tag

    r = attribution_range(explanations)
    profiles = [np.abs(e.attributions.sum(axis=1)).max() for e in explanations if not e.silent]
    profile_max = float(max(profiles)) if profiles and max(profiles) > 0 else 1.0
    explained = [e for e in explanations if not e.silent]
    deltas = [e.relative_delta for e in explained]
    rows = [
        ["examples", _num(len(explanations), "d", count="examples")],
        ["explained", _num(len(explained), "d", count="explained")],
        ["silent (not explained)", _num(len(explanations) - len(explained), "d", count="silent")],
        ["quadrature points", _num(n_steps, "d")],
        ["largest |delta| / |f(x) − f(baseline)|", _num(max(deltas) if deltas else 0.0, ".2g")],
        ["attribution colour range (logit per cell)", _num(r, ".3g")],
    ]
    summary = _section(
        "summary",
        "Summary",
        _tag(
            "p",
            "Integrated gradients of the explained class's logit over the model's log-mel input, from a baseline "
            f"with every cell at the floor ({FLOOR_DB:g} dB below the clip's peak). ",
            _count("explained", len(explained)),
            " of ",
            _count("examples", len(explanations)),
            " examples explained.",
        ),
        _table(["count", "value"], rows),
        _tag("h3", "Run") if meta else "",
        _table(["key", "value"], [list(x) for x in _flatten(meta)]) if meta else "",
    )
    legend = _muted(
        f"Grey: the crop's log-mel power, {FLOOR_DB:g} dBFS (white, silence) to 0 dBFS (dark), the same range in every "
        f"figure. Colour: attributions, red raised the explained class's logit, blue lowered it, on one range "
        f"(±{r:.3g} per cell) for every figure. Right of each plot: the attributions summed over time per mel band. "
        "The attributions of a figure sum to f(x) − f(baseline), up to the delta shown."
    )
    sections = []
    for label in cfg.labels:
        group = [e for e in explanations if e.target == label]
        if group:
            figures = [_Html(explanation_figure(e, cfg, r, profile_max)) for e in group]
            grid = _tag("div", *figures, attrs='class="grid"')
            sections.append(_section(f"class-{cfg.labels.index(label)}", f"Explaining {label}", grid))
    if not sections:
        sections.append(_section("none", "Explanations", _muted("No examples.")))
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    head = (
        '<meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}{_EXTRA_CSS}</style>"
    )
    body = "".join([str(_tag("h1", title)), str(summary), str(legend), *map(str, sections)])
    return f'<!DOCTYPE html>\n<html lang="en"><head>{head}</head><body>{body}</body></html>\n'
