"""`make bench-report`: a small HTML and Markdown page of the figures in latest.json, with plots.

``bench/results/report.html`` (plots inline as SVG: one file to open or attach) and ``report.md`` (plots as
PNG files in ``bench/results/report_files/``). Plots, where the records give the data:

* throughput vs workers: every record whose ``params`` hold ``workers`` (or ``ranks`` / ``world_size``),
  with its single-process baseline at 1;
* recall vs queries/s of the ANN index: each backend at its tuned ``ef`` (``hnswlib_recall_at_10`` ... in the
  ``ann_index`` params) beside exact numpy search at recall 1.0; a backend's whole curve when the params hold
  ``<backend>_curve = [[ef, recall, qps], ...]``;
* step start-up per family: to task body and to body ready, against ``python -c "import numpy"``.

Every figure is also in the table, with its baseline and ratio (value / baseline, same run).
"""

from __future__ import annotations

import html
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

WORKER_KEYS = ("workers", "ranks", "world_size")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display; deterministic file output
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "aitasks", "figure.dpi": 100, "font.size": 9})
    return plt


def _workers(r: dict[str, Any]) -> int | None:
    for k in WORKER_KEYS:
        v = r.get("params", {}).get(k)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return int(v)
    return None


def plot_scaling(records: list[dict[str, Any]]) -> Any | None:
    """Throughput vs workers: one line per (benchmark, metric), the baseline (1 process) at x = 1."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    units: dict[str, str] = {}
    for r in records:
        w = _workers(r)
        if w is None:
            continue
        name = f"{r['benchmark']}: {r['metric']}"
        series[name].append((w, r["value"]))
        if w != 1 and r.get("baseline_value"):
            series[name].append((1, r["baseline_value"]))
        units[name] = r["unit"]
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, pts in sorted(series.items()):
        xs, ys = zip(*sorted(set(pts)), strict=True)
        ax.plot(xs, ys, marker="o", label=f"{name} ({units[name]})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # worker counts are whole numbers
    ax.set_xlabel("workers (1 = the single-process baseline of the same run)")
    ax.set_ylabel("throughput (per the legend's unit)")
    ax.set_title("Throughput vs workers")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_recall_qps(records: list[dict[str, Any]]) -> Any | None:
    """Recall@k vs single-query QPS of the ANN backends (points at the tuned ef; curves when recorded)."""
    by_metric = {r["metric"]: r for r in records if r["benchmark"] == "ann_index"}
    vs_numpy = by_metric.get("qps_single_query[hnswlib vs numpy]")
    vs_voyager = by_metric.get("qps_single_query[hnswlib vs voyager]")
    if vs_numpy is None:
        return None
    p = vs_numpy["params"]
    points = [("hnswlib", p.get("hnswlib_recall_at_10"), vs_numpy["value"])]
    if vs_voyager is not None:
        points.append(("voyager", p.get("voyager_recall_at_10"), vs_voyager["baseline_value"]))
    points.append(("exact numpy", 1.0, vs_numpy["baseline_value"]))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for backend in ("hnswlib", "voyager"):
        curve = p.get(f"{backend}_curve")
        if curve:
            ax.plot([c[2] for c in curve], [c[1] for c in curve], marker=".", label=f"{backend} (ef ladder)")
    for name, recall, qps in points:
        if recall is None:
            continue
        ax.scatter([qps], [recall], s=40, zorder=3)
        ax.annotate(name, (qps, recall), textcoords="offset points", xytext=(5, -10), fontsize=8)
    ax.axhline(p.get("recall_target", 0.95), color="grey", lw=0.8, ls="--", label="recall target")
    ax.set_xscale("log")
    ax.margins(x=0.25, y=0.1)
    ax.set_xlabel("queries/s, one thread, one query per call (log)")
    ax.set_ylabel(f"recall@{p.get('k', 10)} vs exact")
    ax.set_title(f"ANN index, {p.get('items', '?')} x {p.get('dim', '?')}")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_startup(records: list[dict[str, Any]]) -> Any | None:
    """Seconds from process start to task body (and body ready) per family, beside import numpy."""
    body = {r["params"]["family"]: r for r in records if r["metric"].startswith("step_to_body_s[")}
    ready = {r["params"]["family"]: r for r in records if r["metric"].startswith("step_to_ready_s[")}
    if not body:
        return None
    fams = sorted(body)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    y = range(len(fams))
    ax.barh([i + 0.2 for i in y], [ready[f]["value"] if f in ready else 0 for f in fams], 0.4, label="to body ready")
    ax.barh([i - 0.2 for i in y], [body[f]["value"] for f in fams], 0.4, label="to task body")
    base = next(iter(body.values()))["baseline_value"]
    ax.axvline(base, color="black", lw=1, label='python -c "import numpy"')
    ax.axvline(base + 1.5, color="red", lw=1, ls="--", label="target: numpy + 1.5 s")
    ax.set_yticks(list(y), fams)
    ax.set_xlabel("seconds from spawn (median)")
    ax.set_title("Step start-up per family")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


PLOTS = (
    ("scaling", "Throughput vs workers", plot_scaling),
    ("ann_recall_qps", "ANN index: recall vs queries/s", plot_recall_qps),
    ("startup", "Step start-up per family", plot_startup),
)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _rows(records: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            r["benchmark"],
            r["metric"],
            _fmt(r["value"]),
            r["unit"],
            r["baseline"],
            _fmt(r["baseline_value"]),
            _fmt(r["ratio"]),
        ]
        for r in records
    ]


HEAD = ["benchmark", "metric", "value", "unit", "baseline", "baseline value", "ratio"]


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|")


def _meta_line(meta: dict[str, Any]) -> str:
    if not meta:
        return "Run facts: not recorded (no latest.meta.json)."
    load = meta.get("load_average_1_5_15", [])
    return (
        f"Run {meta.get('date', '?')}, revision {meta.get('git_revision', '?') or '?'}, "
        f"{meta.get('usable_cpus', '?')} usable CPUs, load average {load} at the end "
        "(a shared machine: absolute figures are noisy; ratios are against baselines of the same run)."
    )


def write_report(latest: Path, out_dir: Path) -> list[Path]:
    """Render ``report.html`` and ``report.md`` (+ PNG plots) from ``latest``; returns the files written."""
    if not latest.exists():
        raise SystemExit(f"{latest} does not exist: run `make bench` first")
    records: list[dict[str, Any]] = json.loads(latest.read_text("utf-8"))
    meta_path = latest.with_name("latest.meta.json")
    meta = json.loads(meta_path.read_text("utf-8")) if meta_path.exists() else {}
    files = out_dir / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    md = ["# aitasks benchmarks", "", _meta_line(meta), ""]
    body = [f"<h1>aitasks benchmarks</h1><p>{html.escape(_meta_line(meta))}</p>"]
    plt = None
    for slug, title, make in PLOTS:
        fig = make(records)
        if fig is None:
            continue
        plt = _plt()
        png = files / f"{slug}.png"
        fig.savefig(png, format="png")
        written.append(png)
        svg = io.StringIO()
        fig.savefig(svg, format="svg", metadata={"Date": None})
        plt.close(fig)
        md += [f"## {title}", "", f"![{title}](report_files/{png.name})", ""]
        svg_text = svg.getvalue()
        svg_text = svg_text[svg_text.find("<svg") :]  # drop the XML prolog and doctype inside HTML
        body.append(f"<h2>{html.escape(title)}</h2>{svg_text}")
    skipped = [b for b in meta.get("benches", []) if b.get("status") != "ok"]
    if skipped:
        md += ["## Not measured in this run", ""]
        md += [f"- `{b['label']}`: {b['status']}: {b.get('reason', '')}" for b in skipped]
        md.append("")
        items = "".join(
            f"<li><code>{html.escape(b['label'])}</code>: {html.escape(b['status'])}: "
            f"{html.escape(b.get('reason', ''))}</li>"
            for b in skipped
        )
        body.append(f"<h2>Not measured in this run</h2><ul>{items}</ul>")
    rows = _rows(records)
    md += ["## Figures", "", "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    md += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    th = "".join(f"<th>{h}</th>" for h in HEAD)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    body.append(f"<h2>Figures</h2><table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}"
        "td:nth-child(3),td:nth-child(6),td:nth-child(7){text-align:right}svg{max-width:100%;height:auto}"
    )
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>aitasks benchmarks</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    html_path.write_text(page, "utf-8")
    md_path.write_text("\n".join(md) + "\n", "utf-8")
    return [html_path, md_path, *written]
