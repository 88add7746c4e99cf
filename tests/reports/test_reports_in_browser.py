"""Each report kind rendered in headless Chromium, standalone and as the KFP UI shows it.

The KFP UI shows an HTML artifact in ``<iframe sandbox="allow-scripts" srcdoc=...>`` and renders a
Markdown artifact itself (markdown-to-jsx, raw HTML off); here Markdown goes through markdown-it
(CommonMark + tables, raw HTML off) and is checked both as a page and inside the same iframe. For
every report and both ways: no console error or CSP violation, every image decoded with a non-zero
size, the counts on the page agree with each other and with the data, and nothing on the page
navigates (a ``srcdoc`` frame resolves ``href="#x"`` against the KFP page's URL and loads the KFP
page into itself). The audio report's spectrograms are checked in the screenshot's pixels.

``AITASKS_REPORT_SCREENSHOTS=docs/img`` also writes the screenshots the docs link to.
"""

from __future__ import annotations

import html
import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.reports.browser import Browser, Frame, Page
from tests.reports.conftest import AudioReport, EvaluationReport, ExplainReport, ExplanationReport, Site

MODES = ("standalone", "kfp")

#: KFP's run page around an HTML artifact (frontend/src/components/viewers/HTMLViewer.tsx: the iframe is
#: sandboxed with allow-scripts only, at least 600 px high, its document set through ``srcdoc``).
KFP_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Kubeflow Pipelines: run details</title>
<style>body{{margin:0;font-family:sans-serif}}
header{{background:#1a73e8;color:#fff;padding:14px 20px;font-size:18px}}main{{padding:12px 20px}}
iframe{{border:1px solid rgba(0,0,0,.12);box-sizing:border-box;width:100%;height:640px}}</style>
</head><body><header>Kubeflow Pipelines · Run details · {name}</header>
<main><p>Visualization: Static HTML</p><iframe sandbox="allow-scripts" srcdoc="{srcdoc}"></iframe></main>
</body></html>
"""

#: The CSS KFP's Markdown viewer adds (frontend/src/components/viewers/MarkdownViewer.tsx), plus tables.
MARKDOWN_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:16px 24px;color:#202124;font-size:14px}}
.markdown-viewer h1,.markdown-viewer h2{{padding-bottom:.3em;border-bottom:1px solid #eee;font-size:initial;
font-weight:700}}
.markdown-viewer code,.markdown-viewer pre{{background-color:#f8f8f8;border-radius:5px}}
.markdown-viewer pre{{border:solid 1px #eee;margin:7px 0;padding:7px}}
table{{border-collapse:collapse}}th,td{{border:1px solid #ddd;padding:3px 8px}}</style></head>
<body><div class="markdown-viewer">{body}</div></body></html>
"""

#: What a check reads from a report's document (run in an isolated world of its frame).
PROBE = """(() => {
  const box = e => { if (!e) return null; const r = e.getBoundingClientRect();
    return {x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height}; };
  const counts = {};
  for (const e of document.querySelectorAll('[data-count]'))
    (counts[e.dataset.count] ||= []).push(e.textContent.trim());
  return {
    title: document.title, url: location.href, scroll: [scrollX, scrollY],
    imgs: [...document.images].map(i => ({cls: i.className, alt: i.alt, complete: i.complete,
      natural: [i.naturalWidth, i.naturalHeight], box: box(i)})),
    svgs: [...document.querySelectorAll('svg')].map(box),
    figures: [...document.querySelectorAll('figure[data-track]')].map(f => ({track: f.dataset.track, box: box(f),
      spec: box(f.querySelector('img.spec')), bar: box(f.querySelector('img.colourbar'))})),
    counts,
    tables: [...document.querySelectorAll('table')].map(
      t => [...t.rows].map(r => [...r.cells].map(c => c.textContent.trim()))),
    pres: [...document.querySelectorAll('pre')].map(p => p.textContent),
    links: [...document.querySelectorAll('a[href], area[href], [onclick]')].map(a => a.getAttribute('href')),
    text: document.body.innerText,
  };
})()"""

#: Click everything a reader can click: links (there should be none) and the foldable sections.
CLICK_ALL = """(() => {
  let n = 0;
  for (const a of document.querySelectorAll('a[href]')) { a.click(); n++; }
  for (const s of document.querySelectorAll('summary')) { s.click(); s.click(); n++; }
  return n;
})()"""


def open_report(browser: Browser, site: Site, name: str, page_html: str, mode: str) -> tuple[Page, Frame]:
    """Open ``page_html`` standalone or inside KFP's sandboxed ``srcdoc`` iframe; return the report's frame."""
    report_url = site.put(f"{name}.html", page_html)
    page = browser.new_page(1200, 900)
    if mode == "standalone":
        page.open(report_url)
        frame = page.frames()[0]
        assert frame.url == report_url
    else:
        page.open(site.put(f"kfp-{name}.html", KFP_PAGE.format(name=name, srcdoc=html.escape(page_html, quote=True))))
        frames = page.frames()
        assert len(frames) == 2 and frames[1].url == "about:srcdoc", frames
        frame = frames[1]
    return page, frame


def check_page(browser: Browser, page: Page, frame: Frame) -> dict[str, Any]:
    """The checks every report passes; returns the probe of the report's document."""
    probe: dict[str, Any] = page.evaluate(PROBE, frame)
    assert page.errors() == [], "console errors, exceptions or CSP violations"
    for img in probe["imgs"]:
        assert img["complete"] and min(img["natural"]) > 0, f"image not decoded: {img['alt']}"
        assert img["box"]["w"] > 0 and img["box"]["h"] > 0, f"image of zero size: {img['alt']}"
    assert all(s["w"] > 0 and s["h"] > 0 for s in probe["svgs"]), "an SVG of zero size"
    assert probe["links"] == [], "no links: in KFP's srcdoc frame they resolve against the KFP page"
    # Click every link and fold every section: nothing may navigate, neither the report nor the page around it.
    frames_before = [(f.id, f.url) for f in page.frames()]
    mark = len(page.events)
    page.evaluate(CLICK_ALL, frame)
    browser.settle(0.3)
    assert page.navigations(mark) == [], "a click navigated"
    assert [(f.id, f.url) for f in page.frames()] == frames_before
    assert page.errors() == []
    return probe


def agreeing_counts(probe: dict[str, Any]) -> dict[str, int]:
    """The page's ``data-count`` values: each shows one value everywhere, and they add up."""
    for name, values in probe["counts"].items():
        assert len(set(values)) == 1, f"{name} shows {values}"
    c = {name: int(values[0]) for name, values in probe["counts"].items()}
    assert c["files"] == c["analysed"] + c["quarantined"]
    assert c["flags"] == c["errors"] + c["warnings"] == c["flags_on_tracks"] + c["flags_on_quarantined"]
    assert c["flagged_tracks"] <= min(c["analysed"], c["flags_on_tracks"])
    assert c["outliers"] <= c["analysed"]
    return c


def table(probe: dict[str, Any], first_header: str) -> list[list[str]]:
    found = [t for t in probe["tables"] if t and t[0] and t[0][0] == first_header]
    assert found, f"no table headed {first_header!r}"
    rows: list[list[str]] = found[0]
    return rows


def pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


def distinct(rgb: np.ndarray) -> int:
    return len(np.unique(rgb.reshape(-1, 3), axis=0))


def figure_shot(page: Page, frame: Frame, track: str, mode: str) -> tuple[np.ndarray, dict[str, Any]]:
    """A screenshot of one spectrogram figure (scrolled into view inside the iframe), and its boxes."""
    selector = f'figure[data-track="{track}"]'
    page.evaluate(f"document.querySelector('{selector}').scrollIntoView({{block: 'start'}}); 1", frame)
    probe = page.evaluate(PROBE, frame)
    fig = next(f for f in probe["figures"] if f["track"] == track)
    dx, dy = 0.0, 0.0
    if mode == "kfp":
        # Frame coordinates -> the top page's: the iframe's content box, minus the frame's own scroll.
        ox, oy = page.evaluate(
            "(() => { const f = document.querySelector('iframe'); const r = f.getBoundingClientRect();"
            " return [r.left + scrollX + f.clientLeft, r.top + scrollY + f.clientTop]; })()"
        )
        dx, dy = ox - probe["scroll"][0], oy - probe["scroll"][1]
    b = fig["box"]
    shot = pixels(page.screenshot((b["x"] + dx, b["y"] + dy, b["w"], b["h"])))
    return shot, fig


def crop(shot: np.ndarray, fig: dict[str, Any], part: str, inset: int = 2) -> np.ndarray:
    b, p = fig["box"], fig[part]
    x, y = round(p["x"] - b["x"]), round(p["y"] - b["y"])
    return shot[y + inset : y + round(p["h"]) - inset, x + inset : x + round(p["w"]) - inset]


def save_for_docs(page: Page, name: str, clip: tuple[float, float, float, float]) -> None:
    """With ``AITASKS_REPORT_SCREENSHOTS=<dir>``, write a small palette PNG of ``clip`` for the docs."""
    folder = os.environ.get("AITASKS_REPORT_SCREENSHOTS")
    if not folder:
        return
    from PIL import Image

    with Image.open(io.BytesIO(page.screenshot(clip))) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        out = Path(folder) / f"{name}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        small.save(out, optimize=True)
    assert out.stat().st_size < 200_000, f"{out} is {out.stat().st_size} bytes"


# ------------------------------------------------------------------------------ audio report


@pytest.mark.parametrize("mode", MODES)
def test_audio_report_reads_right(browser: Browser, site: Site, audio_report: AudioReport, mode: str) -> None:
    page, frame = open_report(browser, site, "audio-report", audio_report.html, mode)
    try:
        probe = check_page(browser, page, frame)
        # One source of truth: the cards, the counts table and every section agree, and match the data.
        c = agreeing_counts(probe)
        assert (c["analysed"], c["quarantined"], c["flags"]) == (
            audio_report.tracks,
            audio_report.quarantined,
            audio_report.flags,
        )
        codes = table(probe, "code")
        assert (
            sum(int(r[2]) for r in codes[1:-1]) == c["errors"] and sum(int(r[3]) for r in codes[1:-1]) == c["warnings"]
        )
        reasons = table(probe, "reason")
        assert sum(int(r[1]) for r in reasons[1:-1]) == c["quarantined"]
        # Run metadata is a table of plain values, never a Python dict; robust z-scores stay bounded.
        assert table(probe, "key")[1:] and "{'" not in probe["text"] and '{"' not in probe["text"]
        zs = [float(z) for z in re.findall(r"z=([+-]\d+(?:\.\d+)?)", probe["text"])]
        assert zs and max(abs(z) for z in zs) < 30
        # Histograms carry a count axis and a labelled median.
        assert probe["text"].count("median") >= 3

        tracks = [f["track"] for f in probe["figures"]]
        assert audio_report.silent in tracks and audio_report.short in tracks
        specs = {f["track"]: f for f in probe["figures"]}
        sizes = {(round(f["spec"]["w"]), round(f["spec"]["h"])) for f in probe["figures"]}
        assert sizes == {(320, 150)}, "every spectrogram at one size, whatever the clip's length"
        short_img = next(i for i in probe["imgs"] if i["cls"] == "spec" and audio_report.short in i["alt"])
        assert short_img["natural"][0] >= 256, "a 0.4 s clip is widened, not a sliver"

        floor = np.array([68, 1, 84])  # the ramp's bottom: -80 dBFS and below
        shot, fig = figure_shot(page, frame, audio_report.silent, mode)
        assert distinct(shot) > 20, "the silent track's figure is not one solid colour (axes, labels, colour bar)"
        plot = crop(shot, fig, "spec")
        assert np.abs(plot.astype(int) - floor).max() <= 6, "digital silence is drawn at the floor of the dBFS range"
        bar = crop(shot, fig, "bar")
        assert distinct(bar) >= 40 and bar[0].mean() > bar[-1].mean() + 60, "colour bar: 0 dBFS bright, floor dark"
        music = next(t for t in tracks if t not in {audio_report.silent, audio_report.short})
        shot, fig = figure_shot(page, frame, music, mode)
        plot = crop(shot, fig, "spec")
        assert distinct(plot) >= 30 and np.abs(plot.astype(int) - floor).max() > 60, "music shows structure"
        shot, fig = figure_shot(page, frame, audio_report.short, mode)
        assert distinct(crop(shot, fig, "spec")) >= 10
        assert specs[audio_report.short]["spec"]["w"] == specs[music]["spec"]["w"]

        if mode == "standalone":
            page.evaluate("scrollTo(0, 0); 1")
            save_for_docs(page, "report-audio-summary", (0, 0, 1200, 1150))
            spec_top = min(f["box"]["y"] for f in probe["figures"]) - 90
            save_for_docs(page, "report-audio-spectrograms", (0, spec_top, 1200, 760))
        else:
            page.evaluate("scrollTo(0, 0); 1", frame)
            save_for_docs(page, "report-audio-kfp-iframe", (0, 0, 1200, 760))
    finally:
        browser.close_page(page)


# --------------------------------------------------------------------- explanations report


@pytest.mark.parametrize("mode", MODES)
def test_explanations_report_reads_right(
    browser: Browser, site: Site, explain_report: ExplainReport, mode: str
) -> None:
    page, frame = open_report(browser, site, "explanations", explain_report.html, mode)
    try:
        probe = check_page(browser, page, frame)
        counts = {name: set(values) for name, values in probe["counts"].items()}
        assert all(len(v) == 1 for v in counts.values()), counts
        c = {name: int(next(iter(v))) for name, v in counts.items()}
        assert c["examples"] == explain_report.examples == c["explained"] + c["silent"] and c["silent"] == 1
        figures = {f["track"]: f for f in probe["figures"]}
        assert len(figures) == explain_report.examples and explain_report.silent in figures
        sizes = {(round(f["spec"]["w"]), round(f["spec"]["h"])) for f in probe["figures"]}
        assert sizes == {(320, 150)}, "every figure at one size"

        # Digital silence: drawn at the floor of the fixed dBFS range (white), no attribution colour on it.
        shot, fig = figure_shot(page, frame, explain_report.silent, mode)
        assert distinct(shot) > 20, "axes, labels and colour bars around the plot"
        assert np.abs(crop(shot, fig, "spec").astype(int) - 255).max() <= 6
        bar = crop(shot, fig, "bar").astype(int)
        top, bottom = bar[0].mean(axis=0), bar[-1].mean(axis=0)
        assert top[0] > top[2] + 60 and bottom[2] > bottom[0] + 60, "attribution bar: red on top, blue below"
        # A loud clip: a spectrogram in grey with red and blue cells over it.
        loud = next(t for t in figures if t != explain_report.silent)
        shot, fig = figure_shot(page, frame, loud, mode)
        plot = crop(shot, fig, "spec").astype(int)
        red = (plot[..., 0] - plot[..., 2] > 60).mean()
        blue = (plot[..., 2] - plot[..., 0] > 60).mean()
        assert distinct(plot.astype(np.uint8)) >= 30 and red > 0.005 and blue > 0.005, (red, blue)
        if mode == "standalone":
            top_y = min(f["box"]["y"] for f in probe["figures"]) - 60
            save_for_docs(page, "report-explanations", (0, top_y, 1200, 700))
    finally:
        browser.close_page(page)


# ------------------------------------------------------------------------- evaluation report


def markdown_as_kfp_renders_it(markdown: str, title: str) -> str:
    """CommonMark + tables with raw HTML off (as KFP's markdown-to-jsx with ``disableParsingRawHTML``)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return MARKDOWN_PAGE.format(title=html.escape(title), body=body)


def check_evaluation_numbers(probe: dict[str, Any]) -> None:
    """recall@10 of every ranker agrees between the protocol tables, the recall@k table and the text bars."""
    curves = table(probe, "ranker · protocol")
    k10 = curves[0].index("k=10")
    from_curves = {row[0]: row[k10] for row in curves[1:]}
    protocols = [t for t in probe["tables"] if t[0][0] == "metric"]
    assert len(protocols) == 2
    from_tables = {}
    for protocol, t in zip(("all", "discovery"), protocols, strict=True):
        header, recall = t[0], next(r for r in t if r[0] == "recall@10")
        for ranker in ("model", "popularity", "own history", "champion"):
            from_tables[f"{ranker} · {protocol}"] = recall[header.index(ranker)]
    assert from_curves == from_tables
    (bars,) = [p for p in probe["pres"] if "█" in p]
    from_bars = {
        m.group(1).strip(): m.group(2) for m in re.finditer(r"^(.+?)\s+[█▉▊▋▌▍▎▏ ]*\s(\d\.\d{4})$", bars, re.M)
    }
    assert from_bars == from_tables


@pytest.mark.parametrize("mode", MODES)
def test_evaluation_markdown_reads_right(
    browser: Browser, site: Site, evaluation_report: EvaluationReport, mode: str
) -> None:
    md = evaluation_report.markdown
    assert "data:" not in md and "<img" not in md and "<svg" not in md, "no embedded image a viewer could drop"
    assert len(md) < 400_000, "KFP's Markdown viewer cuts at 400,000 characters"
    page, frame = open_report(browser, site, "evaluation-md", markdown_as_kfp_renders_it(md, "evaluation"), mode)
    try:
        probe = check_page(browser, page, frame)
        assert probe["imgs"] == [] and probe["svgs"] == []
        assert "BLESSED" in probe["text"] and len(probe["tables"]) >= 5
        check_evaluation_numbers(probe)
        if mode == "standalone":
            height = min(1400, page.evaluate("document.documentElement.scrollHeight"))
            save_for_docs(page, "report-evaluation-markdown", (0, 0, 1200, height))
    finally:
        browser.close_page(page)


@pytest.mark.parametrize("mode", MODES)
def test_evaluation_html_reads_right(
    browser: Browser, site: Site, evaluation_report: EvaluationReport, mode: str
) -> None:
    page, frame = open_report(browser, site, "evaluation-html", evaluation_report.html, mode)
    try:
        probe = check_page(browser, page, frame)
        assert len(probe["svgs"]) == 1 and probe["svgs"][0]["w"] >= 700
        assert "BLESSED" in probe["text"]
    finally:
        browser.close_page(page)


# ------------------------------------------------------------------------ explanation report


@pytest.mark.parametrize("mode", MODES)
def test_explanation_report_reads_right(
    browser: Browser, site: Site, explanation_report: ExplanationReport, mode: str
) -> None:
    page, frame = open_report(browser, site, "explanations", explanation_report.html, mode)
    try:
        probe = check_page(browser, page, frame)
        # One attribution chart per listener, drawn at a readable size.
        assert len(probe["svgs"]) == len(explanation_report.users) and all(s["w"] >= 500 for s in probe["svgs"])
        ranked = [t for t in probe["tables"] if t and t[0] and t[0][0] == "rank"]
        assert len(ranked) == len(explanation_report.users)
        assert sum(len(t) - 1 for t in ranked) == explanation_report.tracks
        for t in ranked:
            # Every recommendation names the played tracks it is close to, with a similarity.
            assert all(re.search(r"t_\d+ \((?:0|1|-0)\.\d\d\)", row[-1]) for row in t[1:]), t
            scores = [float(row[2]) for row in t[1:]]
            assert scores == sorted(scores, reverse=True)
        features = [t for t in probe["tables"] if t and t[0] and t[0][0] == "feature"]
        assert len(features) == len(explanation_report.users)
        for user in explanation_report.users:
            assert f"Listener {user}" in probe["text"]
        if mode == "standalone":
            save_for_docs(page, "report-explanations", (0, 0, 1200, 900))
    finally:
        browser.close_page(page)


# ------------------------------------------------------------------------------ the checker


def test_the_check_catches_an_in_page_link_in_a_srcdoc_frame(browser: Browser, site: Site) -> None:
    """What the old audio report did: inside KFP's frame ``href="#x"`` loads the KFP page into the frame."""
    old = '<!DOCTYPE html><html><body><nav><a href="#x">to x</a></nav><h2 id="x">x</h2></body></html>'
    page, frame = open_report(browser, site, "old-anchor", old, "kfp")
    try:
        with pytest.raises(AssertionError, match="no links"):
            check_page(browser, page, frame)
        mark = len(page.events)
        page.evaluate(CLICK_ALL, frame)
        browser.settle(0.5)
        urls = [url for _, url in page.navigations(mark)]
        assert any(url.startswith(site.base + "/kfp-old-anchor.html") for url in urls), urls
    finally:
        browser.close_page(page)
