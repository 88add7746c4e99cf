"""The HTML report of a content-generation run: counts, samples with provenance, rejections with reasons.

Self-contained (KFP ``HTML`` artifact): images are PNG thumbnails and audio clips are embedded as
``data:`` URIs, nothing is fetched; every string from prompts, outputs or files is escaped.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Sample", "render_report"]

_THUMB = 128
_MIME = {".flac": "audio/flac", ".ogg": "audio/ogg"}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class Sample:
    """One published output as the report shows it."""

    item: Mapping[str, Any]
    provenance: Mapping[str, Any]
    measures: Mapping[str, Any]
    text: str = ""
    data_uri: str = ""
    note: str = ""

    @classmethod
    def load(
        cls,
        path: Path,
        item: Mapping[str, Any],
        prov: Mapping[str, Any],
        measures: Mapping[str, Any],
        max_audio_kb: int,
    ) -> Sample:
        kind = item["kind"]
        if kind == "text":
            return cls(item, prov, measures, text=path.read_text("utf-8")[:600])
        if kind == "image":
            from PIL import Image

            with Image.open(path) as img:
                thumb = img.convert("RGB")
                # Small generated images are scaled up (nearest: pixels stay visible), big ones down.
                scale = _THUMB / max(thumb.size)
                thumb = thumb.resize(
                    (max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))),
                    Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS,
                )
                buf = io.BytesIO()
                thumb.save(buf, format="PNG")
            return cls(
                item, prov, measures, data_uri="data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
            )
        size_kb = path.stat().st_size / 1024
        if size_kb > max_audio_kb:
            return cls(item, prov, measures, note=f"{size_kb:.0f} KiB: over the {max_audio_kb} KiB embedding limit")
        mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
        return cls(item, prov, measures, data_uri=f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode())


def _provenance_line(prov: Mapping[str, Any]) -> str:
    model = prov.get("model", {})
    return (
        f"model {_e(model.get('name', '?'))} ({_e(model.get('architecture', '?'))}, sha256 "
        f"{_e(str(model.get('sha256', ''))[:12])}) · seed {_e(prov.get('seed'))} → {_e(prov.get('derived_seed'))} "
        f"({_e(prov.get('seed_scope'))}) · prompt sha256 {_e(str(prov.get('prompt_sha256', ''))[:12])} · "
        f"{_e(prov.get('device'))}/{_e(prov.get('precision'))} · {_e(prov.get('generated_at'))}"
    )


def _sample_html(s: Sample) -> str:
    item = s.item
    head = f"<h3>{_e(item['id'])} <small>{_e(item['kind'])} · {_e(item.get('template', ''))}</small></h3>"
    if item["kind"] == "text":
        body = f"<blockquote>{_e(s.text)}</blockquote>"
    elif item["kind"] == "image":
        body = f'<img src="{s.data_uri}" alt="{_e(item["id"])}" width="{_THUMB}" height="{_THUMB}">'
    elif s.data_uri:
        body = f'<audio controls preload="none" src="{s.data_uri}"></audio>'
    else:
        body = f"<p>{_e(s.note)}</p>"
    facts = ", ".join(f"{_e(k)} {_e(v)}" for k, v in sorted(s.measures.items()))
    return (
        f'<div class="sample">{head}{body}<p class="prov">{_provenance_line(s.provenance)}</p>'
        f'<p class="prov">{facts}</p></div>'
    )


def render_report(
    *,
    title: str,
    release: Mapping[str, Any],
    verdicts: Sequence[Mapping[str, Any]],
    samples: Sequence[Sample],
    rejected: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
) -> str:
    """The whole HTML page."""
    kinds = sorted({str(v["kind"]) for v in verdicts})
    ok = Counter(str(v["kind"]) for v in verdicts if v["passed"])
    bad = Counter(str(v["kind"]) for v in verdicts if not v["passed"])
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{ok[k]}</td><td>{bad[k]}</td></tr>" for k in kinds)
    rules = Counter(str(r).split(":", 1)[0] for v in rejected for r in v["reasons"])
    rule_rows = "".join(f"<tr><td>{_e(r)}</td><td>{n}</td></tr>" for r, n in sorted(rules.items()))
    rej_rows = "".join(
        f"<tr><td>{_e(v['id'])}</td><td>{_e(v['kind'])}</td><td>{'<br>'.join(_e(r) for r in v['reasons'])}</td></tr>"
        for v in rejected
    )
    sections = []
    for kind in ("text", "image", "music"):
        chosen = [s for s in samples if s.item["kind"] == kind]
        if chosen:
            sections.append(f"<h2>{_e(kind)} samples</h2>" + "".join(_sample_html(s) for s in chosen))
    facts = " · ".join(f"{_e(k)} {_e(v)}" for k, v in meta.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;max-width:70em}}
table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}
.sample{{border:1px solid #ddd;border-radius:6px;padding:.4em .8em;margin:.6em 0}}
.prov{{color:#555;font-size:.85em;margin:.2em 0}}
blockquote{{margin:.4em 0;padding-left:.8em;border-left:3px solid #aaa}}
img{{image-rendering:pixelated;border:1px solid #ccc}}
</style></head><body>
<h1>{_e(title)}</h1>
<p class="prov">release {_e(release.get("release_id", ""))} · collection {_e(release.get("collection", ""))}
· {facts}</p>
<h2>Outputs</h2>
<table><tr><th>kind</th><th>published</th><th>rejected</th></tr>{rows}</table>
{"".join(sections)}
<h2>Rejected outputs ({len(rejected)})</h2>
{f"<table><tr><th>rule</th><th>outputs</th></tr>{rule_rows}</table>" if rule_rows else "<p>None.</p>"}
{f"<table><tr><th>id</th><th>kind</th><th>reasons</th></tr>{rej_rows}</table>" if rej_rows else ""}
</body></html>
"""
