"""A self-contained HTML report of a catalog analysis (the pipeline's KFP HTML artifact).

One file, no external resources: no CDN, no JavaScript, no web fonts. Histograms and the axes of the
spectrograms are inline SVG drawn here; spectrograms and their colour bar are inline
``data:image/png;base64`` images from a small PNG encoder (zlib + struct) with a viridis-like colour
ramp applied in numpy, which is much faster than matplotlib and needs no font cache. A
Content-Security-Policy meta tag forbids anything but inline styles and ``data:`` images, so even a
bug in escaping could not load or run anything.

The page must read right where people open it: the KFP UI shows an HTML artifact inside an
``<iframe sandbox="allow-scripts" srcdoc=...>``. A ``srcdoc`` document takes its parent's base URL,
so an in-page link ``href="#x"`` would load the KFP page itself into the frame: the report has no
links at all, its sections are ``<details>`` that fold without JavaScript.

Every count on the page comes from one :class:`ReportCounts`, computed once from the data and shown
as a table; every element that shows a count carries ``data-count="<name>"`` so a test (or a reader's
script) can check that the page agrees with itself.

Every string that comes from data (track ids, URIs, reasons, feature names, labels, metadata) goes
through :func:`html.escape`; only markup built here is marked safe (:class:`_Html`).
"""

from __future__ import annotations

import base64
import functools
import html
import math
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from aitasks.audio_analysis.anomaly import FLAG_CODES, Z_CAP, DuplicatePair, Flag, OutlierScore

#: Features whose distributions are drawn when present (others can be asked for by name).
DEFAULT_DISTRIBUTIONS: Final[tuple[str, ...]] = (
    "tempo_bpm",
    "loudness_lufs",
    "centroid_mean",
    "duration_s",
    "rms_mean",
    "flatness_mean",
)

#: Anchors of a viridis-like ramp (position, R, G, B), interpolated linearly.
_RAMP: Final = np.array(
    [
        (0.000, 68, 1, 84),
        (0.125, 71, 44, 122),
        (0.250, 59, 81, 139),
        (0.375, 44, 113, 142),
        (0.500, 33, 144, 141),
        (0.625, 39, 173, 129),
        (0.750, 92, 200, 99),
        (0.875, 170, 220, 50),
        (1.000, 253, 231, 37),
    ],
    dtype=np.float64,
)

#: Geometry of a spectrogram figure (pixels): plot area, colour bar, whole box.
_SPEC_LEFT, _SPEC_TOP, _SPEC_W, _SPEC_H = 56, 8, 320, 150
_BAR_LEFT, _BAR_W = _SPEC_LEFT + _SPEC_W + 14, 12
_SPEC_BOX_W, _SPEC_BOX_H = _BAR_LEFT + _BAR_W + 62, _SPEC_TOP + _SPEC_H + 40

_CSS: Final = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;color:#222;
padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}
details{margin-top:1.2em}summary{cursor:pointer;border-bottom:1px solid #ccc;padding-bottom:.2em}
summary h2{display:inline;font-size:1.3em;margin:0}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.total td{font-weight:600;background:#fafafa}
.cards{display:flex;flex-wrap:wrap;gap:.8em;margin:.6em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em 1em;min-width:8em}
.card b{display:block;font-size:1.5em}.muted{color:#777}.error{color:#b00020;font-weight:600}.warning{color:#a36a00}
.grid{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}figcaption{font-size:.85em;color:#555;word-break:break-all}
.bar{background:#3b518b;height:.9em}
.specbox{position:relative}.specbox img{position:absolute;image-rendering:pixelated}
"""


class _Html(str):
    """Markup built by this module: inserted as is. Any other ``str`` is escaped."""

    __slots__ = ()


def _esc(value: object) -> _Html:
    """``value`` as HTML: markup built here as is, anything else escaped."""
    if isinstance(value, _Html):
        return value
    return _Html(html.escape(str(value), quote=True))


def _join(parts: Iterable[object]) -> _Html:
    return _Html("".join(_esc(p) for p in parts))


def _tag(name: str, *children: object, attrs: str = "") -> _Html:
    """``<name attrs>children</name>``; ``attrs`` is markup written here, never data."""
    open_ = f"<{name} {attrs}>" if attrs else f"<{name}>"
    return _Html(f"{open_}{_join(children)}</{name}>")


def _num(value: float, fmt: str = ".3g", *, count: str = "") -> _Html:
    """A right-aligned number cell; ``count`` names the :class:`ReportCounts` field it shows."""
    attrs = 'class="num"' + (f' data-count="{count}"' if count else "")
    return _tag("td", format(value, fmt) if math.isfinite(value) else str(value), attrs=attrs)


def _count(name: str, value: int, tag: str = "span") -> _Html:
    """An inline count, marked with the name of the :class:`ReportCounts` field it shows."""
    return _tag(tag, str(value), attrs=f'data-count="{name}"')


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    max_rows: int | None = None,
    total: Sequence[object] | None = None,
) -> _Html:
    """A table; cells that are not markup are escaped; rows past ``max_rows`` are summarised."""
    shown = rows if max_rows is None else rows[:max_rows]

    def cells(row: Sequence[object]) -> _Html:
        return _join(c if isinstance(c, _Html) and c.startswith("<td") else _tag("td", c) for c in row)

    head = _tag("tr", *(_tag("th", h) for h in headers))
    body = [_tag("tr", cells(row)) for row in shown]
    if total is not None:
        body.append(_tag("tr", cells(total), attrs='class="total"'))
    more = len(rows) - len(shown)
    tail = _tag("p", f"… and {more} more", attrs='class="muted"') if more > 0 else _Html("")
    return _join([_tag("table", head, *body), tail])


def _section(anchor: str, heading: str, *content: object) -> _Html:
    """A section that folds without JavaScript (``<details open>``); ``id`` only names it, nothing links to it."""
    return _tag(
        "details",
        _tag("summary", _tag("h2", heading)),
        *content,
        attrs=f'open id="{anchor}"',
    )


def _muted(text: str) -> _Html:
    return _tag("p", text, attrs='class="muted"')


# ------------------------------------------------------------------------------ counts


@dataclass(frozen=True)
class ReportCounts:
    """Every count the report shows, computed once from the data (the page's single source).

    ``files = analysed + quarantined``; flags are split by where they sit: on an analysed track
    (``flags_on_tracks``, spread over ``flagged_tracks`` tracks) or on a quarantined file (the
    decoder's refusal, ``flags_on_quarantined``); ``flags = errors + warnings``.
    """

    files: int
    analysed: int
    quarantined: int
    flagged_tracks: int
    flags: int
    flags_on_tracks: int
    flags_on_quarantined: int
    errors: int
    warnings: int
    outliers: int
    duplicate_pairs: int

    @classmethod
    def of(
        cls,
        *,
        track_ids: Sequence[str],
        flags: Sequence[tuple[str, Flag]],
        quarantine: Sequence[tuple[str, str, str]],
        outliers: Sequence[OutlierScore],
        duplicates: Sequence[DuplicatePair],
    ) -> ReportCounts:
        """Count the report's inputs; a flag whose id is not an analysed track sits on a quarantined file."""
        analysed = set(track_ids)
        on_tracks = [t for t, _ in flags if t in analysed]
        severity = Counter(f.severity for _, f in flags)
        return cls(
            files=len(track_ids) + len(quarantine),
            analysed=len(track_ids),
            quarantined=len(quarantine),
            flagged_tracks=len(set(on_tracks)),
            flags=len(flags),
            flags_on_tracks=len(on_tracks),
            flags_on_quarantined=len(flags) - len(on_tracks),
            errors=severity.get("error", 0),
            warnings=severity.get("warning", 0),
            outliers=sum(1 for o in outliers if o.is_outlier and o.id in analysed),
            duplicate_pairs=len(duplicates),
        )

    def rows(self) -> list[tuple[str, str, int]]:
        """``(field, label, value)`` in reading order."""
        share = f" ({100.0 * self.flagged_tracks / self.analysed:.0f}% of analysed)" if self.analysed else ""
        return [
            ("files", "files in the catalog listing (analysed + quarantined)", self.files),
            ("analysed", "analysed tracks", self.analysed),
            ("quarantined", "quarantined files (refused, not analysed)", self.quarantined),
            ("flagged_tracks", f"analysed tracks with at least one flag{share}", self.flagged_tracks),
            ("flags", "flags in all (errors + warnings)", self.flags),
            ("flags_on_tracks", "flags on analysed tracks", self.flags_on_tracks),
            ("flags_on_quarantined", "flags on quarantined files (the decoder's refusal)", self.flags_on_quarantined),
            ("errors", "error flags", self.errors),
            ("warnings", "warning flags", self.warnings),
            ("outliers", "statistical outliers among analysed tracks", self.outliers),
            ("duplicate_pairs", "near-duplicate pairs", self.duplicate_pairs),
        ]


def _flatten(meta: Mapping[str, object], prefix: str = "") -> list[tuple[str, str]]:
    """Nested metadata as ``(dotted key, text)`` rows: never a Python ``repr`` of a dict."""
    rows: list[tuple[str, str]] = []
    for key, value in meta.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(_flatten(value, f"{name}.") if value else [(name, "")])
        elif isinstance(value, list | tuple):
            rows.append((name, ", ".join(str(v) for v in value)))
        elif isinstance(value, float):
            rows.append((name, format(value, ".6g")))
        else:
            rows.append((name, "" if value is None else str(value)))
    return rows


# ------------------------------------------------------------------------------ images


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode an 8-bit image as PNG (no filtering, zlib level 6).

    Args:
        pixels: ``(height, width)`` grey or ``(height, width, 3)`` RGB, ``uint8``.

    Returns:
        The PNG file's bytes.

    Raises:
        ValueError: ``pixels`` has another shape or is empty.
    """
    img = np.ascontiguousarray(pixels, dtype=np.uint8)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3) or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"need a non-empty (h, w) or (h, w, 3) image, got {pixels.shape}")
    height, width, channels = img.shape
    color_type = 2 if channels == 3 else 0
    # Each scanline starts with its filter type (0 = none).
    raw = np.hstack([np.zeros((height, 1), np.uint8), img.reshape(height, width * channels)]).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (NaN -> 0) to viridis-like RGB ``uint8`` (shape + ``(3,)``)."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0), 0.0, 1.0)
    channels = [np.interp(v, _RAMP[:, 0], _RAMP[:, k]) for k in (1, 2, 3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


@dataclass(frozen=True)
class SpectrogramScale:
    """How log-mel thumbnails are coloured and labelled: one fixed dBFS range for every image.

    Attributes:
        full_scale_db: The log-mel dB value of a full-scale sine (0 dBFS); the feature extractor's
            dB are relative to an unnormalised STFT power, so this anchors them.
        floor_dbfs: Bottom of the colour range; the top is 0 dBFS. A silent track is all floor colour.
        sample_rate: Rate the analysis resampled to (the top of the frequency axis is its Nyquist).
        fmin: Lowest mel band edge in Hz.
        fmax: Highest mel band edge in Hz; ``None`` is Nyquist.
    """

    full_scale_db: float = 0.0
    floor_dbfs: float = -80.0
    sample_rate: int = 22050
    fmin: float = 0.0
    fmax: float | None = None

    @property
    def top_hz(self) -> float:
        return float(self.fmax) if self.fmax is not None else self.sample_rate / 2.0


@functools.lru_cache(maxsize=8)
def measure_spectrogram_scale(sample_rate: int = 22050, *, floor_dbfs: float = -80.0) -> SpectrogramScale:
    """The scale of the analysis's log-mel thumbnails at ``sample_rate`` (default feature settings).

    The 0 dBFS anchor is measured, not assumed: a full-scale 1 kHz sine goes through the same
    :func:`~aitasks.audio_analysis.features.extract_features` and its loudest log-mel value is 0 dBFS.
    """
    from aitasks.audio_analysis.features import FeatureConfig, extract_features

    cfg = FeatureConfig()
    t = np.arange(sample_rate, dtype=np.float64) / sample_rate
    sine = np.sin(2.0 * np.pi * 1000.0 * t).astype(np.float32)
    log_mel = extract_features(sine, sample_rate, cfg, frames=True).log_mel
    assert log_mel is not None
    return SpectrogramScale(
        full_scale_db=float(np.max(log_mel)),
        floor_dbfs=floor_dbfs,
        sample_rate=sample_rate,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
    )


def spectrogram_png(
    log_mel_db: np.ndarray,
    *,
    full_scale_db: float = 0.0,
    floor_dbfs: float = -80.0,
    max_width: int = 512,
    min_width: int = 256,
    min_height: int = 128,
) -> bytes:
    """A log-mel spectrogram as a PNG on a fixed colour range: ``floor_dbfs`` .. 0 dBFS.

    The range is the same for every image (never each image's own peak), so silence is the
    bottom colour and a quiet track looks quiet. Low bands are at the bottom. Wide spectrograms
    are averaged down to ``max_width`` columns; narrow ones (short clips) are repeated up to
    ``min_width`` columns and short ones up to ``min_height`` rows (pixelated, not blurred).

    Args:
        log_mel_db: ``(n_mels, frames)`` in the feature extractor's dB.
        full_scale_db: The dB value that is 0 dBFS (see :class:`SpectrogramScale`).
        floor_dbfs: dBFS at the bottom of the colour range (negative).
        max_width: Widest image in pixels.
        min_width: Narrowest image in pixels.
        min_height: Smallest image height in pixels.

    Returns:
        PNG bytes.
    """
    spec = np.asarray(log_mel_db, dtype=np.float32)
    if spec.ndim != 2 or spec.size == 0:
        spec = np.full((1, 1), np.nan, np.float32)
    dbfs = spec.astype(np.float64) - full_scale_db
    norm = np.where(np.isfinite(dbfs), (dbfs - floor_dbfs) / -floor_dbfs, 0.0)
    frames = norm.shape[1]
    if frames > max_width:
        group = math.ceil(frames / max_width)
        pad = (-frames) % group
        padded = np.pad(norm, ((0, 0), (0, pad)), mode="edge")
        norm = padded.reshape(norm.shape[0], -1, group).mean(axis=2)
    elif frames < min_width:
        norm = np.repeat(norm, math.ceil(min_width / frames), axis=1)
    norm = norm[::-1]
    if norm.shape[0] < min_height:
        norm = np.repeat(norm, math.ceil(min_height / norm.shape[0]), axis=0)
    return encode_png(colormap(norm))


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = first
    while v <= hi + 1e-9 * step:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _mel(hz: float) -> float:
    """Slaney mel scale (librosa's default): linear below 1 kHz, logarithmic above."""
    if hz < 1000.0:
        return 3.0 * hz / 200.0
    return 15.0 + 27.0 * math.log(hz / 1000.0) / math.log(6.4)


def _hz_label(hz: float) -> str:
    return f"{hz / 1000:.3g}k" if hz >= 1000 else f"{hz:.0f}"


def _colour_bar_png(height: int = 128) -> bytes:
    return encode_png(colormap(np.linspace(1.0, 0.0, height)[:, None].repeat(4, axis=1)))


def spectrogram_figure(
    track: str, log_mel_db: np.ndarray, duration_s: float | None, scale: SpectrogramScale, *, note: str = ""
) -> _Html:
    """A spectrogram with its time and frequency axes and a dBFS colour bar, at a fixed size.

    Every figure has the same plot size whatever the clip's length (a 0.5 s clip is as wide as a
    5-minute track), the same colour range, and says what it shows in its caption.
    """
    png = spectrogram_png(log_mel_db, full_scale_db=scale.full_scale_db, floor_dbfs=scale.floor_dbfs)
    x0, y0, w, h = _SPEC_LEFT, _SPEC_TOP, _SPEC_W, _SPEC_H
    parts = [
        f'<svg width="{_SPEC_BOX_W}" height="{_SPEC_BOX_H}" viewBox="0 0 {_SPEC_BOX_W} {_SPEC_BOX_H}" '
        'font-size="10" font-family="sans-serif" aria-hidden="true">',
        f'<rect x="{x0 - 0.5}" y="{y0 - 0.5}" width="{w + 1}" height="{h + 1}" fill="none" stroke="#444"/>',
    ]
    # time axis: the thumbnail spans the whole track
    frames = log_mel_db.shape[1] if log_mel_db.ndim == 2 else 0
    span, unit = (float(duration_s), "time (s)") if duration_s and duration_s > 0 else (float(frames), "frame")
    for t in _nice_ticks(0.0, span, 6) if span > 0 else [0.0]:
        x = x0 + (t / span * w if span > 0 else 0.0)
        parts.append(
            f'<line x1="{x:.1f}" y1="{y0 + h}" x2="{x:.1f}" y2="{y0 + h + 4}" stroke="#444"/>'
            f'<text x="{x:.1f}" y="{y0 + h + 14}" text-anchor="middle">{t:g}</text>'
        )
    parts.append(f'<text x="{x0 + w / 2:.1f}" y="{y0 + h + 28}" text-anchor="middle">{unit}</text>')
    # frequency axis: mel-spaced, labelled in Hz
    lo, hi = _mel(scale.fmin), _mel(scale.top_hz)

    def y_of(hz: float) -> float:
        return y0 + h - (_mel(hz) - lo) / (hi - lo) * h

    top_y = y_of(scale.top_hz)
    placed: list[float] = []
    for hz in (scale.fmin, 500.0, 1000.0, 2000.0, 4000.0, 8000.0, 16000.0, scale.top_hz):
        y = y_of(hz)
        # Keep labels 11 px apart (the Nyquist label at the top wins over a tick just under it).
        if not scale.fmin <= hz <= scale.top_hz or any(abs(y - p) < 11 for p in placed):
            continue
        if hz != scale.top_hz and abs(y - top_y) < 11:
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
    # colour bar: fixed range, floor..0 dBFS
    for db in _nice_ticks(scale.floor_dbfs, 0.0, 5):
        y = y0 + (db / scale.floor_dbfs) * h
        parts.append(
            f'<line x1="{_BAR_LEFT + _BAR_W}" y1="{y:.1f}" x2="{_BAR_LEFT + _BAR_W + 4}" y2="{y:.1f}" stroke="#444"/>'
            f'<text x="{_BAR_LEFT + _BAR_W + 6}" y="{y + 3.5:.1f}">{db:g}</text>'
        )
    parts.append(f'<text x="{_BAR_LEFT - 2}" y="{y0 + h + 28}">dBFS</text></svg>')
    alt = f"log-mel spectrogram of {track}"
    box = _Html(
        f'<div class="specbox" style="width:{_SPEC_BOX_W}px;height:{_SPEC_BOX_H}px">'
        + "".join(parts)
        + f'<img class="spec" alt="{_esc(alt)}" src="{_data_uri(png)}" '
        f'style="left:{x0}px;top:{y0}px;width:{w}px;height:{h}px">'
        f'<img class="colourbar" alt="colour bar {scale.floor_dbfs:g} to 0 dBFS" src="{_data_uri(_colour_bar_png())}" '
        f'style="left:{_BAR_LEFT}px;top:{y0}px;width:{_BAR_W}px;height:{h}px">'
        "</div>"
    )
    length = f"{duration_s:.1f} s" if duration_s else f"{frames} frames"
    caption = _join([_tag("b", track), f" · {length}", f" · {note}" if note else ""])
    return _tag("figure", box, _tag("figcaption", caption), attrs=f'data-track="{_esc(track)}"')


def histogram_svg(name: str, values: Sequence[float] | np.ndarray, *, bins: int = 30) -> _Html:
    """An inline SVG histogram of the finite ``values``: count axis, value axis, labelled median.

    Args:
        name: Feature name (escaped).
        values: The values over tracks.
        bins: Number of bins.

    Returns:
        Markup: a ``<figure>`` holding the SVG and a caption of the summary statistics.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    finite = v[np.isfinite(v)]
    dropped = v.size - finite.size
    width, height = 340, 190
    left, right, top, bottom = 40, 12, 26, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    if finite.size == 0:
        caption = f"{name}: no finite values ({v.size} tracks)"
        return _tag("figure", _tag("figcaption", caption))
    counts, edges = np.histogram(finite, bins=bins)
    y_max = max(int(counts.max()), 1)
    y_ticks = [int(t) for t in _nice_ticks(0, y_max, 4) if float(t).is_integer()] or [0, y_max]
    y_top = max(y_max, y_ticks[-1])
    bar_w = plot_w / len(counts)
    parts = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'font-size="10" font-family="sans-serif">',
        f"<title>{_esc(name)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fafafa"/>',
        f'<text x="{left}" y="12" font-weight="bold">{_esc(name)}</text>',
    ]
    for t in y_ticks:
        y = top + plot_h - plot_h * t / y_top
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e4e4e4"/>'
            f'<text x="{left - 4}" y="{y + 3.5:.1f}" text-anchor="end">{t}</text>'
        )
    for i, c in enumerate(counts.tolist()):
        bh = plot_h * c / y_top
        x = left + i * bar_w
        parts.append(
            f'<rect x="{x:.1f}" y="{top + plot_h - bh:.1f}" width="{max(bar_w - 1, 0.5):.1f}" height="{bh:.1f}" '
            f'fill="#3b518b"><title>{edges[i]:.4g} to {edges[i + 1]:.4g}: {c} tracks</title></rect>'
        )
    lo, hi = float(edges[0]), float(edges[-1])
    med = float(np.median(finite))
    mx = left + (med - lo) / (hi - lo) * plot_w if hi > lo else left + plot_w / 2
    anchor = "end" if mx > left + plot_w * 0.6 else "start"
    dx = -3 if anchor == "end" else 3
    parts += [
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#444"/>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#444"/>',
        f'<line x1="{mx:.1f}" y1="{top - 4}" x2="{mx:.1f}" y2="{top + plot_h}" stroke="#b00020" '
        'stroke-dasharray="3,2"/>',
        f'<text x="{mx + dx:.1f}" y="{top + 4}" text-anchor="{anchor}" fill="#b00020">median {med:.4g}</text>',
        f'<text x="{left}" y="{top + plot_h + 13}">{lo:.4g}</text>',
        f'<text x="{left + plot_w}" y="{top + plot_h + 13}" text-anchor="end">{hi:.4g}</text>',
        f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h + 28}" text-anchor="middle">{_esc(name)}</text>',
        f'<text x="11" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 11 {top + plot_h / 2:.1f})">tracks</text>',
        "</svg>",
    ]
    p5, p95 = np.percentile(finite, [5.0, 95.0])
    caption = f"n={finite.size} · median {med:.4g} (dashed) · p5 {p5:.4g} · p95 {p95:.4g}" + (
        f" · {dropped} non-finite left out" if dropped else ""
    )
    return _tag("figure", _Html("".join(parts)), _tag("figcaption", caption))


def _z_text(z: float) -> str:
    """A robust z as text; at the cap it says so (``z≥+30``) rather than pretend to a precise value."""
    if z >= Z_CAP:
        return f"z≥{Z_CAP:+g}"
    if z <= -Z_CAP:
        return f"z≤{-Z_CAP:+g}"
    return f"z={z:+.2f}"


# ------------------------------------------------------------------------------ the report

Spectrogram = tuple[str, np.ndarray] | tuple[str, np.ndarray, float]


def render_report(
    *,
    title: str,
    track_ids: Sequence[str],
    feature_table: Mapping[str, Sequence[float] | np.ndarray],
    flags: Sequence[tuple[str, Flag]],
    quarantine: Sequence[tuple[str, str, str]],
    outliers: Sequence[OutlierScore],
    duplicates: Sequence[DuplicatePair],
    spectrograms: Sequence[Spectrogram],
    classes: Mapping[str, int] | None = None,
    meta: Mapping[str, object],
    distribution_features: Sequence[str] | None = None,
    spectrogram_scale: SpectrogramScale | None = None,
    max_rows: int = 50,
    max_spectrograms: int = 12,
) -> str:
    """Render the analysis of a catalog as one self-contained HTML page.

    Args:
        title: Page title.
        track_ids: The analysed tracks (rows of ``feature_table``, in order).
        feature_table: Feature name -> values over the analysed tracks.
        flags: ``(track id, flag)`` of every anomaly; a flag on a quarantined file carries its URI.
        quarantine: ``(uri, reason code, detail)`` of every refused file.
        outliers: Outlier scores of the analysed tracks (any order).
        duplicates: Near-duplicate pairs.
        spectrograms: ``(track id, log-mel dB)`` or ``(track id, log-mel dB, duration in s)`` examples.
        classes: Predicted label -> count, when a classifier ran.
        meta: Run metadata shown at the top (pipeline run, versions, ...); nested mappings are
            flattened into dotted keys.
        distribution_features: Features to draw; default :data:`DEFAULT_DISTRIBUTIONS` that are
            present, or the first six features when none is.
        spectrogram_scale: Colour range and axes of the spectrograms; default
            :func:`measure_spectrogram_scale` at 22,050 Hz.
        max_rows: Longest table; the rest is summarised as "… and K more".
        max_spectrograms: Most spectrogram images.

    Returns:
        The HTML document.

    Raises:
        ValueError: A feature column is not one value per analysed track.
    """
    for name, col in feature_table.items():
        if len(col) != len(track_ids):
            raise ValueError(f"feature {name!r} has {len(col)} values for {len(track_ids)} analysed tracks")
    counts = ReportCounts.of(
        track_ids=track_ids, flags=flags, quarantine=quarantine, outliers=outliers, duplicates=duplicates
    )
    scale = spectrogram_scale or measure_spectrogram_scale()

    # --- summary: a few cards, then every count in one table, then the run's metadata
    cards = [
        ("analysed", "tracks analysed", ""),
        ("quarantined", "files quarantined", ""),
        ("flagged_tracks", "analysed tracks flagged", f" of {counts.analysed}"),
        ("outliers", "outliers", f" of {counts.analysed}"),
        ("duplicate_pairs", "near-duplicate pairs", ""),
    ]
    value = {name: v for name, _, v in counts.rows()}
    summary = _section(
        "summary",
        "Summary",
        _tag(
            "div",
            *(
                _tag("div", _tag("b", _count(name, value[name]), of), label, attrs='class="card"')
                for name, label, of in cards
            ),
            attrs='class="cards"',
        ),
        _table(["count", "value"], [[label, _num(v, "d", count=name)] for name, label, v in counts.rows()]),
        _tag("h3", "Run") if meta else "",
        _table(["key", "value"], [list(r) for r in _flatten(meta)]) if meta else "",
    )

    # --- anomalies
    per_code: dict[str, Counter[str]] = {}
    ids_per_code: dict[str, set[str]] = {}
    for track, flag in flags:
        per_code.setdefault(flag.code, Counter())[flag.severity] += 1
        ids_per_code.setdefault(flag.code, set()).add(track)
    code_rows = [
        [
            code,
            FLAG_CODES.get(code, ""),
            _num(c["error"], "d"),
            _num(c["warning"], "d"),
            _num(len(ids_per_code[code]), "d"),
        ]
        for code, c in sorted(per_code.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    ]
    code_total = [
        "all codes",
        _Html(f'<td><span data-count="flags">{counts.flags}</span> flags</td>'),
        _num(counts.errors, "d", count="errors"),
        _num(counts.warnings, "d", count="warnings"),
        _tag("td", "", attrs='class="num"'),
    ]
    ranked = sorted(flags, key=lambda tf: (tf[1].severity != "error", -tf[1].score, tf[0]))
    flag_rows = [
        [track, f.code, _tag("td", f.severity, attrs=f'class="{f.severity}"'), _num(f.score), f.reason]
        for track, f in ranked
    ]
    anomalies = _section(
        "anomalies",
        "Anomalies by code",
        _tag(
            "p",
            "Flags: ",
            _count("flags", counts.flags),
            " in all; ",
            _count("flags_on_tracks", counts.flags_on_tracks),
            " on ",
            _count("flagged_tracks", counts.flagged_tracks),
            " of the ",
            _count("analysed", counts.analysed),
            " analysed tracks and ",
            _count("flags_on_quarantined", counts.flags_on_quarantined),
            " on quarantined files. The last column counts the tracks or files with that code.",
        ),
        _table(["code", "meaning", "errors", "warnings", "tracks / files"], code_rows, total=code_total)
        if code_rows
        else _muted("No anomaly flags."),
        _tag("h3", "Flags, errors first then by score") if flag_rows else "",
        _table(["track or file", "code", "severity", "score", "reason"], flag_rows, max_rows=max_rows)
        if flag_rows
        else "",
    )

    # --- quarantine
    reasons = Counter(reason for _, reason, _ in quarantine)
    quarantine_section = _section(
        "quarantine",
        "Quarantine",
        _table(
            ["reason", "files"],
            [[r, _num(c, "d")] for r, c in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))],
            total=["all reasons", _num(counts.quarantined, "d", count="quarantined")],
        )
        if quarantine
        else _muted("No file was quarantined."),
        _table(["uri", "reason", "detail"], [list(q) for q in quarantine], max_rows=max_rows) if quarantine else "",
    )

    # --- outliers
    top = sorted(outliers, key=lambda o: (-o.score, o.id))
    notes = sorted({o.note for o in outliers if o.note})
    outlier_rows = [
        [
            o.id,
            _num(o.score),
            "yes" if o.is_outlier else "no",
            ", ".join(f"{name} ({_z_text(z)})" for name, z in o.top_features),
        ]
        for o in top
    ]
    outlier_section = _section(
        "outliers",
        "Top outliers",
        *(_muted(n) for n in notes),
        _tag(
            "p",
            _count("outliers", counts.outliers),
            " of ",
            _count("analysed", counts.analysed),
            " analysed tracks are outliers.",
        )
        if outliers
        else "",
        _muted(
            "Robust z: (value − catalog median) / (1.4826 × median absolute deviation), the scale floored "
            f"so near-constant features do not explode, capped at ±{Z_CAP:g}."
        )
        if outlier_rows
        else "",
        _table(["track", "score", "outlier", "explaining features (robust z)"], outlier_rows, max_rows=max_rows)
        if outlier_rows
        else _muted("No outlier scores."),
    )

    # --- duplicates
    dup_rows = [
        [p.a, p.b, _num(p.similarity, ".3f")] for p in sorted(duplicates, key=lambda p: (-p.similarity, p.a, p.b))
    ]
    duplicate_section = _section(
        "duplicates",
        "Near-duplicate pairs",
        _tag("p", _count("duplicate_pairs", counts.duplicate_pairs), " pairs.") if dup_rows else "",
        _table(["track a", "track b", "similarity"], dup_rows, max_rows=max_rows)
        if dup_rows
        else _muted("No near-duplicates."),
    )

    # --- distributions
    wanted = list(distribution_features) if distribution_features is not None else list(DEFAULT_DISTRIBUTIONS)
    chosen = [f for f in wanted if f in feature_table]
    if not chosen and distribution_features is None:
        chosen = list(feature_table)[:6]
    distributions = _section(
        "distributions",
        "Feature distributions",
        _muted("Tracks per bin over the analysed tracks; the dashed line is the median.") if chosen else "",
        _tag("div", *(histogram_svg(f, feature_table[f]) for f in chosen), attrs='class="grid"')
        if chosen
        else _muted("No features to draw."),
    )

    # --- spectrograms
    codes_of: dict[str, list[str]] = {}
    for track, f in flags:
        codes_of.setdefault(track, []).append(f.code)
    figures = []
    for item in spectrograms[:max_spectrograms]:
        track, spec = item[0], np.asarray(item[1], dtype=np.float32)
        duration = float(item[2]) if len(item) > 2 else None  # type: ignore[misc]
        note = ", ".join(dict.fromkeys(codes_of.get(track, [])))
        figures.append(spectrogram_figure(track, spec, duration, scale, note=f"flags: {note}" if note else ""))
    spectrogram_section = _section(
        "spectrograms",
        "Example spectrograms",
        _muted(
            f"Log-mel power over the whole track, low frequencies at the bottom, on one fixed colour range for "
            f"every image: {scale.floor_dbfs:g} dBFS (silence) to 0 dBFS (a full-scale sine). Flagged tracks first."
        ),
        _tag("div", *figures, attrs='class="grid"') if figures else _muted("None."),
        _muted(f"… and {len(spectrograms) - max_spectrograms} more") if len(spectrograms) > max_spectrograms else "",
    )

    # --- classes
    if classes:
        total = sum(classes.values()) or 1
        biggest = max(classes.values()) or 1
        class_rows = [
            [
                label,
                _num(count, "d"),
                _num(100.0 * count / total, ".1f"),
                _tag("td", _Html(f'<div class="bar" style="width:{200 * count / biggest:.0f}px"></div>')),
            ]
            for label, count in sorted(classes.items(), key=lambda kv: (-kv[1], kv[0]))
        ]
        class_body: object = _table(["label", "tracks", "%", ""], class_rows, max_rows=max_rows)
    else:
        class_body = _muted("No class predictions.")
    class_section = _section("classes", "Predicted classes", class_body)

    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    head = _Html(
        '<meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style>"
    )
    body = _join(
        [
            _tag("h1", title),
            summary,
            anomalies,
            quarantine_section,
            outlier_section,
            duplicate_section,
            distributions,
            spectrogram_section,
            class_section,
        ]
    )
    return f'<!DOCTYPE html>\n<html lang="en"><head>{head}</head><body>{body}</body></html>\n'
