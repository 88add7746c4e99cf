"""The HTML report: sections, counts, inline SVG/PNG, escaping, no external resources.

How it looks in a browser (standalone and in KFP's sandboxed iframe) is tested in tests/reports/.
"""

from __future__ import annotations

import base64
import re
import struct
import zlib

import numpy as np
import pytest

from aitasks.audio_analysis.anomaly import DuplicatePair, Flag, OutlierScore
from aitasks.audio_analysis.report import (
    ReportCounts,
    SpectrogramScale,
    colormap,
    encode_png,
    histogram_svg,
    render_report,
    spectrogram_png,
)

HOSTILE = "<script>alert(1)</script>"
IDS = [f"t{i:03d}" for i in range(40)]
SCALE = SpectrogramScale(full_scale_db=40.0)


def png_size(png: bytes) -> tuple[int, int]:
    """Check a PNG's signature and chunk CRCs, decompress its data; return (width, height)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, width, height, idat = 8, 0, 0, b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        tag, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + data) & 0xFFFFFFFF
        if tag == b"IHDR":
            width, height, depth, color, *_ = struct.unpack(">IIBBBBB", data)
            assert (depth, color) == (8, 2)
        elif tag == b"IDAT":
            idat += data
        pos += 12 + length
    assert tag == b"IEND"
    assert len(zlib.decompress(idat)) == height * (1 + 3 * width)
    return width, height


def flag(code: str, severity: str = "warning", score: float = 1.0, reason: str = "why") -> Flag:
    return Flag.model_validate({"code": code, "reason": reason, "score": score, "severity": severity})


@pytest.fixture(scope="module")
def page() -> str:
    rng = np.random.default_rng(0)
    n = 40
    table = {
        "tempo_bpm": rng.normal(120, 15, n).tolist(),
        "loudness_lufs": rng.normal(-14, 3, n).tolist(),
        "duration_s": rng.uniform(60, 400, n).tolist(),
        "mfcc_03_mean": rng.normal(0, 1, n).tolist(),
    }
    table["tempo_bpm"][3] = float("nan")
    flags = [
        (HOSTILE, flag("clipping", score=49.0, reason="5.0% clipped; limit 0.1% <b>bold</b>")),
        ("t002", flag("silence", "error", reason="the track is entirely silent")),
        ("t003", flag("silence", reason="62% silent")),
        ("t004", flag("too_short", reason="duration 3.00 s")),
    ]
    quarantine = [(f"gs://bucket/audio/q{i:03d}.mp3", "truncated", f"stream ends at {i} s") for i in range(60)]
    quarantine.append(("gs://bucket/audio/evil.wav", "unknown_format", HOSTILE))
    outliers = [
        OutlierScore(id=f"t{i:03d}", score=0.4 + 0.001 * i, is_outlier=False, top_features=[("tempo_bpm", 0.5)])
        for i in range(30)
    ]
    outliers.append(
        OutlierScore(
            id="weird01", score=0.81, is_outlier=True, top_features=[("loudness_lufs", -9.5), ("rms_mean", 4.25)]
        )
    )
    duplicates = [
        DuplicatePair(a="t010", b="t011", similarity=0.9312),
        DuplicatePair(a=HOSTILE, b="t020", similarity=0.85),
    ]
    spectrograms = [
        ("t010", rng.normal(-40, 10, (64, 256)).astype(np.float16), 12.0),
        (HOSTILE, np.full((128, 900), -30.0)),  # no duration: a frame axis
    ]
    return render_report(
        title=f"Catalog analysis {HOSTILE}",
        track_ids=[*IDS[:39], "weird01"],
        feature_table=table,
        flags=flags,
        quarantine=quarantine,
        outliers=outliers,
        duplicates=duplicates,
        spectrograms=spectrograms,
        classes={"rock": 12, "jazz": 5, HOSTILE: 1},
        meta={"run": "run-42", "git": "abc123", "note": HOSTILE, "config": {"rules": {"min_duration_s": 10.0}}},
        spectrogram_scale=SCALE,
        max_rows=25,
    )


def test_sections_and_counts(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    for anchor in (  # sections are named (ids), though nothing links to them
        "summary",
        "anomalies",
        "quarantine",
        "outliers",
        "duplicates",
        "distributions",
        "spectrograms",
        "classes",
    ):
        assert f'id="{anchor}"' in page
    counts = {k: set(re.findall(rf'data-count="{k}">(\d+)<', page)) for k in ReportCounts.__dataclass_fields__}
    assert {k: int(v.pop()) for k, v in counts.items() if len(v) == 1} == {
        "files": 101,
        "analysed": 40,
        "quarantined": 61,
        "flagged_tracks": 3,
        "flags": 4,
        "flags_on_tracks": 3,
        "flags_on_quarantined": 1,  # the hostile id is no analysed track: a quarantined file's flag
        "errors": 1,
        "warnings": 3,
        "outliers": 1,
        "duplicate_pairs": 2,
    }, "every count shows one value wherever it appears"
    # metadata: a table with dotted keys, never a Python dict
    assert "<td>config.rules.min_duration_s</td><td>10</td>" in page and "{" not in page.split("<body>")[1]
    # no in-page links (they would load the parent page inside KFP's srcdoc iframe); sections fold instead
    assert "<a " not in page and 'href="#' not in page
    assert page.count("<details open") == 8
    # anomaly counts by code: silence has one error and one warning on two tracks
    assert re.search(
        r"<td>silence</td><td>[^<]*</td><td class=\"num\">1</td><td class=\"num\">1</td><td class=\"num\">2</td>", page
    )
    # quarantine: reason counts, then rows truncated to 25 with the rest summarised
    assert '<td>truncated</td><td class="num">60</td>' in page
    assert "… and 36 more" in page
    assert "gs://bucket/audio/q024.mp3" in page and "gs://bucket/audio/q025.mp3" not in page
    # outliers: the top one first, with its explaining features
    assert page.index("weird01") < page.index("t029")
    assert "loudness_lufs (z=-9.50), rms_mean (z=+4.25)" in page
    assert '<span data-count="outliers">1</span> of <span data-count="analysed">40</span> analysed' in page
    assert "0.931" in page  # duplicate similarity
    assert "1 non-finite left out" in page  # tempo_bpm's NaN
    assert '<td>rock</td><td class="num">12</td>' in page
    assert "run-42" in page


def test_inline_svg_and_png(page: str) -> None:
    # tempo_bpm, loudness_lufs, duration_s histograms (the others absent) + the axes of 2 spectrograms
    assert page.count("<svg") == 5
    uris = re.findall(r'class="spec" alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == 2
    sizes = [png_size(base64.b64decode(u)) for u in uris]
    assert sizes[0] == (256, 128)  # 64 bands repeated to 128 rows
    assert sizes[1] == (450, 128)  # 900 frames averaged 2:1 under the 512-pixel limit
    assert page.count('class="colourbar"') == 2
    # every spectrogram is drawn at the same size, with its axes and colour bar labelled
    assert page.count("width:320px;height:150px") == 2
    assert "time (s)" in page and "frequency (Hz, mel scale)" in page and page.count(">dBFS<") == 2
    # histograms: a count axis and a labelled median
    assert page.count(">tracks</text>") == 3 and page.count(">median ") == 3


def png_pixels(png: bytes) -> np.ndarray:
    """The RGB pixels of a PNG written by :func:`encode_png` (filter type 0 on every row)."""
    width, height = png_size(png)
    idat = b"".join(
        png[pos + 8 : pos + 8 + struct.unpack(">I", png[pos : pos + 4])[0]]
        for pos in _chunks(png)
        if png[pos + 4 : pos + 8] == b"IDAT"
    )
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + 3 * width)
    return rows[:, 1:].reshape(height, width, 3)


def _chunks(png: bytes) -> list[int]:
    pos, out = 8, []
    while pos < len(png):
        out.append(pos)
        pos += 12 + struct.unpack(">I", png[pos : pos + 4])[0]
    return out


def test_spectrogram_colours_are_on_one_fixed_dbfs_range() -> None:
    floor = tuple(colormap(np.array([0.0]))[0])
    top = tuple(colormap(np.array([1.0]))[0])
    # Digital silence (librosa's amin floor, -100 dB) is the bottom colour, not its own peak's yellow.
    silent = png_pixels(spectrogram_png(np.full((64, 40), -100.0), full_scale_db=40.0))
    assert {tuple(p) for p in silent.reshape(-1, 3)} == {floor}
    # A full-scale tone reaches the top colour; the same tone 40 dB down sits mid-range.
    loud = png_pixels(spectrogram_png(np.full((64, 40), 40.0), full_scale_db=40.0))
    quiet = png_pixels(spectrogram_png(np.full((64, 40), 0.0), full_scale_db=40.0))
    assert tuple(loud[0, 0]) == top and tuple(quiet[0, 0]) == tuple(colormap(np.array([0.5]))[0])
    # A short clip (10 frames) is widened to the minimum width, not drawn as a sliver.
    assert png_size(spectrogram_png(np.zeros((64, 10)))) == (260, 128)


def test_data_is_escaped_and_nothing_external(page: str) -> None:
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "Content-Security-Policy" in page


def test_empty_report_renders() -> None:
    page = render_report(
        title="empty",
        track_ids=["a"],
        feature_table={},
        flags=[],
        quarantine=[],
        outliers=[
            OutlierScore(id="a", score=0.0, is_outlier=False, top_features=[], note="only 1 tracks (< 10): no model")
        ],
        duplicates=[],
        spectrograms=[],
        meta={},
        spectrogram_scale=SCALE,
    )
    for text in (
        "No anomaly flags.",
        "No file was quarantined.",
        "No near-duplicates.",
        "No class predictions.",
        "no model",
    ):
        assert text in page
    assert "<svg" not in page and "data:image/png" not in page


def test_png_encoder_and_colormap() -> None:
    grey = encode_png(np.arange(12, dtype=np.uint8).reshape(3, 4))
    assert grey[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", grey[16:24]) == (4, 3)
    rgb = colormap(np.array([0.0, 0.5, 1.0, np.nan]))
    assert rgb.shape == (4, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0]) == (68, 1, 84) and tuple(rgb[2]) == (253, 231, 37) and tuple(rgb[3]) == (68, 1, 84)
    assert png_size(spectrogram_png(np.full((40, 10), np.nan))) == (260, 160)
    with pytest.raises(ValueError):
        encode_png(np.zeros((0, 3), np.uint8))
    assert "no finite values" in histogram_svg("x", [float("nan")])
    assert "<svg" in histogram_svg("const", [1.0, 1.0, 1.0])
