"""A self-contained HTML report of a catalog analysis (the pipeline's KFP HTML artifact).

One file, no external resources: no CDN, no JavaScript, no web fonts. Histograms are inline SVG
drawn here; spectrograms are inline ``data:image/png;base64`` images from a small PNG encoder
(zlib + struct) with a viridis-like colour ramp applied in numpy, which is much faster than
matplotlib and needs no font cache. A Content-Security-Policy meta tag forbids anything but inline
styles and ``data:`` images, so even a bug in escaping could not load or run anything.

Every string that comes from data (track ids, URIs, reasons, feature names, labels, metadata) goes
through :func:`html.escape`; only markup built here is marked safe (:class:`_Html`).
"""

from __future__ import annotations

import base64
import html
import math
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import numpy as np

from aitasks.audio_analysis.anomaly import FLAG_CODES, DuplicatePair, Flag, OutlierScore

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

_CSS: Final = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;color:#222;
padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:.8em}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em 1em;min-width:8em}
.card b{display:block;font-size:1.5em}.muted{color:#777}.error{color:#b00020;font-weight:600}.warning{color:#a36a00}
.grid{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}figcaption{font-size:.85em;color:#555;word-break:break-all}
.bar{background:#3b518b;height:.9em}img.spec{image-rendering:pixelated;border:1px solid #ccc;max-width:520px}
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


def _num(value: float, fmt: str = ".3g") -> _Html:
    return _tag("td", format(value, fmt) if math.isfinite(value) else str(value), attrs='class="num"')


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, max_rows: int | None = None) -> _Html:
    """A table; cells that are not markup are escaped; rows past ``max_rows`` are summarised."""
    shown = rows if max_rows is None else rows[:max_rows]
    head = _tag("tr", *(_tag("th", h) for h in headers))
    body = [
        _tag("tr", *(c if isinstance(c, _Html) and c.startswith("<td") else _tag("td", c) for c in row))
        for row in shown
    ]
    more = len(rows) - len(shown)
    tail = _tag("p", f"… and {more} more", attrs='class="muted"') if more > 0 else _Html("")
    return _join([_tag("table", head, *body), tail])


def _section(anchor: str, heading: str, *content: object) -> _Html:
    return _tag("section", _tag("h2", heading), *content, attrs=f'id="{anchor}"')


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


def spectrogram_png(
    log_mel_db: np.ndarray, *, top_db: float = 80.0, max_width: int = 512, min_height: int = 128
) -> bytes:
    """A log-mel spectrogram as a PNG: low bands at the bottom, ``top_db`` of range under the peak.

    Wide spectrograms are averaged down to ``max_width`` columns; short ones are repeated up to
    ``min_height`` rows (pixelated, not blurred).

    Args:
        log_mel_db: ``(n_mels, frames)`` in dB.
        top_db: Dynamic range shown.
        max_width: Widest image in pixels.
        min_height: Smallest image height in pixels.

    Returns:
        PNG bytes.
    """
    spec = np.asarray(log_mel_db, dtype=np.float32)
    if spec.ndim != 2 or spec.size == 0:
        spec = np.zeros((1, 1), np.float32)
    finite = np.isfinite(spec)
    peak = float(spec[finite].max()) if finite.any() else 0.0
    norm = np.where(finite, (spec - (peak - top_db)) / top_db, 0.0)
    frames = norm.shape[1]
    if frames > max_width:
        group = math.ceil(frames / max_width)
        pad = (-frames) % group
        padded = np.pad(norm, ((0, 0), (0, pad)), mode="edge")
        norm = padded.reshape(norm.shape[0], -1, group).mean(axis=2)
    norm = norm[::-1]
    if norm.shape[0] < min_height:
        norm = np.repeat(norm, math.ceil(min_height / norm.shape[0]), axis=0)
    return encode_png(colormap(norm))


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def histogram_svg(name: str, values: Sequence[float] | np.ndarray, *, bins: int = 30) -> _Html:
    """An inline SVG histogram of the finite ``values`` with min, median and max marked.

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
    width, height, pad = 320, 150, 22
    if finite.size == 0:
        caption = f"{name}: no finite values ({v.size} tracks)"
        return _tag("figure", _tag("figcaption", caption))
    counts, edges = np.histogram(finite, bins=bins)
    top = max(int(counts.max()), 1)
    bar_w = (width - 2 * pad) / len(counts)
    rects = []
    for i, c in enumerate(counts.tolist()):
        h = (height - 2 * pad) * c / top
        x = pad + i * bar_w
        y = height - pad - h
        rects.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 0.5):.1f}" height="{h:.1f}" fill="#3b518b">'
            f"<title>{edges[i]:.4g} to {edges[i + 1]:.4g}: {c}</title></rect>"
        )
    lo, hi = float(edges[0]), float(edges[-1])
    med = float(np.median(finite))
    mx = pad + (med - lo) / (hi - lo) * (width - 2 * pad) if hi > lo else width / 2
    svg = _Html(
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'font-size="10" font-family="sans-serif">'
        f"<title>{_esc(name)}</title>"
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fafafa"/>'
        + "".join(rects)
        + f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#444"/>'
        f'<line x1="{mx:.1f}" y1="{pad - 6}" x2="{mx:.1f}" y2="{height - pad}" stroke="#b00020" '
        f'stroke-dasharray="3,2"/>'
        f'<text x="{pad}" y="{height - 6}">{lo:.4g}</text>'
        f'<text x="{width - pad}" y="{height - 6}" text-anchor="end">{hi:.4g}</text>'
        f'<text x="{pad}" y="12">{_esc(name)} (max bin {top})</text>'
        "</svg>"
    )
    p5, p95 = np.percentile(finite, [5.0, 95.0])
    caption = f"n={finite.size} · median {med:.4g} · p5 {p5:.4g} · p95 {p95:.4g}" + (
        f" · {dropped} non-finite left out" if dropped else ""
    )
    return _tag("figure", svg, _tag("figcaption", caption))


# ------------------------------------------------------------------------------ the report


def render_report(
    *,
    title: str,
    feature_table: Mapping[str, Sequence[float] | np.ndarray],
    flags: Sequence[tuple[str, Flag]],
    quarantine: Sequence[tuple[str, str, str]],
    outliers: Sequence[OutlierScore],
    duplicates: Sequence[DuplicatePair],
    spectrograms: Sequence[tuple[str, np.ndarray]],
    classes: Mapping[str, int] | None = None,
    meta: Mapping[str, str],
    distribution_features: Sequence[str] | None = None,
    max_rows: int = 50,
    max_spectrograms: int = 12,
) -> str:
    """Render the analysis of a catalog as one self-contained HTML page.

    Args:
        title: Page title.
        feature_table: Feature name -> values over the analysed tracks.
        flags: ``(track id, flag)`` of every anomaly.
        quarantine: ``(uri, reason code, detail)`` of every refused file.
        outliers: Outlier scores of the analysed tracks (any order).
        duplicates: Near-duplicate pairs.
        spectrograms: ``(track id, log-mel dB)`` examples.
        classes: Predicted label -> count, when a classifier ran.
        meta: Run metadata shown at the top (pipeline run, versions, ...).
        distribution_features: Features to draw; default :data:`DEFAULT_DISTRIBUTIONS` that are
            present, or the first six features when none is.
        max_rows: Longest table; the rest is summarised as "… and K more".
        max_spectrograms: Most spectrogram images.

    Returns:
        The HTML document.
    """
    n_tracks = max((len(v) for v in feature_table.values()), default=0)
    by_severity = Counter(f.severity for _, f in flags)
    n_outliers = sum(1 for o in outliers if o.is_outlier)

    # --- summary
    cards = [
        ("tracks analysed", n_tracks),
        ("quarantined files", len(quarantine)),
        ("flagged tracks", len({t for t, _ in flags})),
        ("error flags", by_severity.get("error", 0)),
        ("warning flags", by_severity.get("warning", 0)),
        ("outliers", n_outliers),
        ("duplicate pairs", len(duplicates)),
    ]
    summary = _section(
        "summary",
        "Summary",
        _tag(
            "div",
            *(_tag("div", _tag("b", str(v)), label, attrs='class="card"') for label, v in cards),
            attrs='class="cards"',
        ),
        _table(["key", "value"], [[k, v] for k, v in meta.items()]) if meta else _Html(""),
    )

    # --- anomalies
    per_code: dict[str, Counter[str]] = {}
    tracks_per_code: dict[str, set[str]] = {}
    for track, flag in flags:
        per_code.setdefault(flag.code, Counter())[flag.severity] += 1
        tracks_per_code.setdefault(flag.code, set()).add(track)
    code_rows = [
        [
            code,
            FLAG_CODES.get(code, ""),
            _num(c["error"], "d"),
            _num(c["warning"], "d"),
            _num(len(tracks_per_code[code]), "d"),
        ]
        for code, c in sorted(per_code.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    ]
    ranked = sorted(flags, key=lambda tf: (tf[1].severity != "error", -tf[1].score, tf[0]))
    flag_rows = [
        [track, f.code, _tag("td", f.severity, attrs=f'class="{f.severity}"'), _num(f.score), f.reason]
        for track, f in ranked
    ]
    anomalies = _section(
        "anomalies",
        "Anomalies by code",
        _table(["code", "meaning", "errors", "warnings", "tracks"], code_rows)
        if code_rows
        else _tag("p", "No anomaly flags.", attrs='class="muted"'),
        _tag("h3", "Flags, errors first then by score") if flag_rows else _Html(""),
        _table(["track", "code", "severity", "score", "reason"], flag_rows, max_rows=max_rows) if flag_rows else "",
    )

    # --- quarantine
    reasons = Counter(reason for _, reason, _ in quarantine)
    quarantine_section = _section(
        "quarantine",
        "Quarantine",
        _table(
            ["reason", "files"], [[r, _num(c, "d")] for r, c in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))]
        )
        if quarantine
        else _tag("p", "No file was quarantined.", attrs='class="muted"'),
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
            ", ".join(f"{name} (z={z:+.2f})" for name, z in o.top_features),
        ]
        for o in top
    ]
    outlier_section = _section(
        "outliers",
        "Top outliers",
        *(_tag("p", n, attrs='class="muted"') for n in notes),
        _tag("p", f"{n_outliers} of {len(outliers)} tracks are outliers.") if outliers else "",
        _table(["track", "score", "outlier", "explaining features (robust z)"], outlier_rows, max_rows=max_rows)
        if outlier_rows
        else _tag("p", "No outlier scores.", attrs='class="muted"'),
    )

    # --- duplicates
    dup_rows = [
        [p.a, p.b, _num(p.similarity, ".3f")] for p in sorted(duplicates, key=lambda p: (-p.similarity, p.a, p.b))
    ]
    duplicate_section = _section(
        "duplicates",
        "Near-duplicate pairs",
        _table(["track a", "track b", "similarity"], dup_rows, max_rows=max_rows)
        if dup_rows
        else _tag("p", "No near-duplicates.", attrs='class="muted"'),
    )

    # --- distributions
    wanted = list(distribution_features) if distribution_features is not None else list(DEFAULT_DISTRIBUTIONS)
    chosen = [f for f in wanted if f in feature_table]
    if not chosen and distribution_features is None:
        chosen = list(feature_table)[:6]
    distributions = _section(
        "distributions",
        "Feature distributions",
        _tag("div", *(histogram_svg(f, feature_table[f]) for f in chosen), attrs='class="grid"')
        if chosen
        else _tag("p", "No features to draw.", attrs='class="muted"'),
    )

    # --- spectrograms
    figures = [
        _tag(
            "figure",
            _Html(f'<img class="spec" alt="log-mel of {_esc(track)}" src="{_data_uri(spectrogram_png(spec))}">'),
            _tag("figcaption", track),
        )
        for track, spec in spectrograms[:max_spectrograms]
    ]
    spectrogram_section = _section(
        "spectrograms",
        "Example spectrograms",
        _tag(
            "p", "Log-mel power, low frequencies at the bottom, 80 dB under each image's peak.", attrs='class="muted"'
        ),
        _tag("div", *figures, attrs='class="grid"') if figures else _tag("p", "None.", attrs='class="muted"'),
        _tag("p", f"… and {len(spectrograms) - max_spectrograms} more", attrs='class="muted"')
        if len(spectrograms) > max_spectrograms
        else "",
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
        class_body = _tag("p", "No class predictions.", attrs='class="muted"')
    class_section = _section("classes", "Predicted classes", class_body)

    nav = _tag(
        "nav",
        _Html(
            " · ".join(
                f'<a href="#{a}">{label}</a>'
                for a, label in (
                    ("summary", "Summary"),
                    ("anomalies", "Anomalies"),
                    ("quarantine", "Quarantine"),
                    ("outliers", "Outliers"),
                    ("duplicates", "Duplicates"),
                    ("distributions", "Distributions"),
                    ("spectrograms", "Spectrograms"),
                    ("classes", "Classes"),
                )
            )
        ),
    )
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
            nav,
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
