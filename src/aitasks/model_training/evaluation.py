"""Offline retrieval evaluation: exact top-k, recall / NDCG / coverage, blessing, and a report.

Every ranker (the model, the popularity baseline, the champion) goes through the same two steps:
a top-k list per user (:func:`topk_from_embeddings`, :func:`topk_popularity`), then
:func:`retrieval_metrics` on those lists. Both top-k functions rank by score descending and break
ties by the lower item index, drop the user's ``exclude`` items before ranking, and pad with ``-1``
when fewer than ``k`` items are left, so a comparison never depends on which function made a list.

Definitions (per user with a non-empty target set ``T``: the distinct tracks played and not skipped
on the held-out day, as item indices):

* ``recall@k = |top-k ∩ T| / |T|``, averaged over users.
* ``NDCG@10`` with binary relevance: ``DCG = Σ_{rank r ≤ 10, item in T} 1 / log2(r + 1)``, divided by the
  ideal DCG of ``min(|T|, 10)`` hits at the top ranks; averaged over users.
* ``coverage@10``: the fraction of the catalog that appears in at least one evaluated user's top-10.

Users whose target set is empty are skipped (and counted in ``skipped_users``).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from aitasks.runtime.errors import FieldIssue, InvalidInputError

__all__ = [
    "DEFAULT_KS",
    "Blessing",
    "BlessingRule",
    "RetrievalMetrics",
    "decide_blessing",
    "recall_plot_svg",
    "render_report",
    "retrieval_metrics",
    "topk_from_embeddings",
    "topk_popularity",
]

_TASK: Final = "model.evaluate"
#: The k of the recall curve.
DEFAULT_KS: Final = (1, 2, 5, 10, 20, 50, 100)
#: Largest score block (users x items) one matmul chunk may hold: bounds memory on big catalogs.
_MAX_BLOCK: Final = 1 << 24
#: Lift and ratio reported when the reference scores exactly 0 and the model does not (keeps JSON finite).
_RATIO_CAP: Final = 1e6

_I64 = npt.NDArray[np.int64]


class RetrievalMetrics(BaseModel):
    """Retrieval quality of one ranker on one held-out set (definitions in the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recall_at_10: float = Field(ge=0.0, le=1.0)
    recall_at_50: float = Field(ge=0.0, le=1.0)
    ndcg_at_10: float = Field(ge=0.0, le=1.0)
    coverage_at_10: float = Field(ge=0.0, le=1.0, description="Fraction of the catalog in some user's top-10.")
    users: int = Field(ge=1, description="Users evaluated (non-empty target set).")
    skipped_users: int = Field(default=0, ge=0, description="Users skipped for an empty target set.")
    recall_curve: list[tuple[int, float]] = Field(description="(k, recall@k), k ascending.")


# ----------------------------------------------------------------------------------------- top-k


def _issue(field: str, problem: str) -> InvalidInputError:
    return InvalidInputError(_TASK, [FieldIssue(field, problem)])


def _check_exclude(exclude: Sequence[npt.ArrayLike] | None, n_users: int, n_items: int) -> list[_I64] | None:
    if exclude is None:
        return None
    if len(exclude) != n_users:
        raise _issue("exclude", f"has {len(exclude)} entries for {n_users} users")
    out: list[_I64] = []
    for u, x in enumerate(exclude):
        arr = np.asarray(x)
        if arr.size == 0:
            out.append(np.zeros(0, dtype=np.int64))
            continue
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise _issue(f"exclude[{u}]", "must be a 1-D array of item indices")
        if arr.min() < 0 or arr.max() >= n_items:
            raise _issue(f"exclude[{u}]", f"item index outside [0, {n_items})")
        out.append(arr.astype(np.int64, copy=False))
    return out


def _rank_block(scores: npt.NDArray[np.floating], k: int) -> _I64:
    """Top-``k`` columns of each row by (score desc, index asc); ``-inf`` scores become ``-1``.

    ``argpartition`` picks an arbitrary subset among items tied at the k-th score, so rows with such
    a boundary tie are re-ranked exactly; with float embeddings they are rare.
    """
    rows, n = scores.shape
    kk = min(k, n)
    out = np.full((rows, k), -1, dtype=np.int64)
    if rows == 0 or kk == 0:
        return out
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    part_scores = np.take_along_axis(scores, part, axis=1)
    threshold = part_scores.min(axis=1)
    ties = (scores >= threshold[:, None]).sum(axis=1) > kk
    for r in np.flatnonzero(ties):
        cand = np.flatnonzero(scores[r] >= threshold[r])
        order = np.lexsort((cand, -scores[r, cand]))[:kk]
        part[r] = cand[order]
        part_scores[r] = scores[r, part[r]]
    order = np.lexsort((part, -part_scores), axis=1)
    top = np.take_along_axis(part, order, axis=1)
    top_scores = np.take_along_axis(part_scores, order, axis=1)
    top[np.isneginf(top_scores)] = -1
    out[:, :kk] = top
    return out


def topk_from_embeddings(
    user_vecs: np.ndarray,
    item_vecs: np.ndarray,
    k: int,
    *,
    exclude: Sequence[np.ndarray] | None = None,
    chunk: int = 1024,
) -> np.ndarray:
    """Exact top-``k`` items per user by inner product, computed in chunks of users.

    Args:
        user_vecs: ``[u, d]`` user embeddings.
        item_vecs: ``[n, d]`` item embeddings.
        k: List length; columns beyond the available items are ``-1``.
        exclude: Per user, item indices that must not be ranked (e.g. already played); they score ``-inf``.
        chunk: Users per matmul; lowered automatically so one block stays under 16M scores.

    Returns:
        ``int64 [u, k]`` item indices, best first; ties broken by the lower item index.

    Raises:
        InvalidInputError: Shapes that do not match, non-finite vectors, ``k < 1`` or bad exclusions.
    """
    uv = np.asarray(user_vecs)
    iv = np.asarray(item_vecs)
    if uv.ndim != 2 or iv.ndim != 2 or uv.shape[1] != iv.shape[1]:
        raise _issue("user_vecs", f"need [u, d] users and [n, d] items, got {uv.shape} and {iv.shape}")
    if k < 1 or chunk < 1:
        raise _issue("k", "k and chunk must be >= 1")
    if not (np.isfinite(uv).all() and np.isfinite(iv).all()):
        raise _issue("user_vecs", "embeddings must be finite")
    n_users, n_items = uv.shape[0], iv.shape[0]
    ex = _check_exclude(exclude, n_users, n_items)
    dtype = np.result_type(uv.dtype, iv.dtype, np.float32)
    uv, iv_t = uv.astype(dtype, copy=False), np.ascontiguousarray(iv.astype(dtype, copy=False).T)
    step = max(1, min(chunk, _MAX_BLOCK // max(n_items, 1)))
    out = np.full((n_users, k), -1, dtype=np.int64)
    for start in range(0, n_users, step):
        stop = min(start + step, n_users)
        scores = uv[start:stop] @ iv_t
        if ex is not None:
            block = ex[start:stop]
            lengths = [len(x) for x in block]
            if sum(lengths):
                rows = np.repeat(np.arange(stop - start), lengths)
                scores[rows, np.concatenate(block)] = -np.inf
        out[start:stop] = _rank_block(scores, k)
    return out


def topk_popularity(
    item_counts: np.ndarray, n_users: int, k: int, *, exclude: Sequence[np.ndarray] | None = None
) -> np.ndarray:
    """The same most-popular list for every user, minus that user's excluded items.

    Args:
        item_counts: ``[n]`` popularity per item (plays in the training window).
        n_users: Rows to return.
        k: List length; columns beyond the available items are ``-1``.
        exclude: Per user, item indices to drop before taking the top ``k``.

    Returns:
        ``int64 [n_users, k]``, ranked by count descending, ties by the lower item index.

    Raises:
        InvalidInputError: Non-1-D or non-finite counts, ``k < 1``, ``n_users < 0`` or bad exclusions.
    """
    counts = np.asarray(item_counts, dtype=np.float64)
    if counts.ndim != 1 or not np.isfinite(counts).all():
        raise _issue("item_counts", "must be a finite 1-D array")
    if k < 1 or n_users < 0:
        raise _issue("k", "k must be >= 1 and n_users >= 0")
    n_items = counts.shape[0]
    ex = _check_exclude(exclude, n_users, n_items)
    ranking = np.lexsort((np.arange(n_items), -counts))
    head = np.full(k, -1, dtype=np.int64)
    head[: min(k, n_items)] = ranking[:k]
    out = np.tile(head, (n_users, 1))
    if ex is not None:
        for u, x in enumerate(ex):
            if x.size:
                # The first k survivors lie within the first k + |x| of the global ranking.
                cand = ranking[: k + x.size]
                keep = cand[~np.isin(cand, x)][:k]
                out[u] = -1
                out[u, : keep.size] = keep
    return out


# --------------------------------------------------------------------------------------- metrics


def retrieval_metrics(
    topk: np.ndarray,
    targets: Sequence[np.ndarray],
    n_items: int,
    *,
    ks: Sequence[int] = DEFAULT_KS,
) -> RetrievalMetrics:
    """Recall@k curve, recall@10/50, NDCG@10 and coverage@10 of ranked lists against held-out targets.

    Args:
        topk: ``int [u, K]`` item indices per user, best first; ``-1`` pads a short list. ``K`` must be
            at least ``max(ks)`` and 50.
        targets: Per user, the held-out item indices (duplicates count once).
        n_items: Catalog size (the denominator of coverage).
        ks: The k of the recall curve.

    Returns:
        The metrics over users with a non-empty target set.

    Raises:
        InvalidInputError: Mismatched shapes, indices out of range, a repeated item in one list,
            or no user with a non-empty target set.
    """
    top = np.asarray(topk)
    if top.ndim != 2 or not np.issubdtype(top.dtype, np.integer):
        raise _issue("topk", f"must be a 2-D integer array, got {top.dtype} {top.shape}")
    if n_items < 1:
        raise _issue("n_items", "must be >= 1")
    curve_ks = sorted({int(k) for k in ks})
    if not curve_ks or curve_ks[0] < 1:
        raise _issue("ks", "must be positive integers")
    width = max(curve_ks[-1], 50)
    if top.shape[1] < width:
        raise _issue("topk", f"has {top.shape[1]} columns, needs at least {width}")
    if len(targets) != top.shape[0]:
        raise _issue("targets", f"has {len(targets)} users, topk has {top.shape[0]}")
    top = top[:, :width].astype(np.int64, copy=False)
    if top.size and (top.min() < -1 or top.max() >= n_items):
        raise _issue("topk", f"item index outside [0, {n_items}) (or -1 for padding)")
    ordered = np.sort(top, axis=1)
    if ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any():
        raise _issue("topk", "an item appears twice in one user's list")

    sets: list[_I64] = []
    for u, t in enumerate(targets):
        arr = np.asarray(t)
        if arr.size and (arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer)):
            raise _issue(f"targets[{u}]", "must be a 1-D array of item indices")
        arr = np.unique(arr.astype(np.int64))
        if arr.size and (arr[0] < 0 or arr[-1] >= n_items):
            raise _issue(f"targets[{u}]", f"item index outside [0, {n_items})")
        sets.append(arr)
    sizes = np.array([s.size for s in sets], dtype=np.int64)
    users = np.flatnonzero(sizes > 0)
    if users.size == 0:
        raise _issue("targets", "no user has a non-empty target set")

    top, sizes = top[users], sizes[users]
    # Membership test in one vectorised pass: key = user row * n_items + item.
    row_ids = np.arange(users.size, dtype=np.int64)
    target_keys = np.concatenate([r * n_items + sets[u] for r, u in zip(row_ids, users, strict=True)])
    hits = np.isin(row_ids[:, None] * n_items + top, target_keys) & (top >= 0)
    cum = np.cumsum(hits, axis=1)

    def recall(k: int) -> float:
        return float(np.mean(cum[:, k - 1] / sizes))

    discounts = 1.0 / np.log2(np.arange(2, 12, dtype=np.float64))
    dcg = hits[:, :10] @ discounts
    ideal = np.cumsum(discounts)[np.minimum(sizes, 10) - 1]
    head = top[:, :10]
    coverage = np.unique(head[head >= 0]).size / n_items
    return RetrievalMetrics(
        recall_at_10=recall(10),
        recall_at_50=recall(50),
        ndcg_at_10=float(np.mean(dcg / ideal)),
        coverage_at_10=float(coverage),
        users=int(users.size),
        skipped_users=len(sets) - int(users.size),
        recall_curve=[(k, recall(k)) for k in curve_ks],
    )


# -------------------------------------------------------------------------------------- blessing


MetricName = Literal["recall_at_10", "ndcg_at_10"]
_LABELS: Final = {
    "recall_at_10": "recall@10",
    "recall_at_50": "recall@50",
    "ndcg_at_10": "NDCG@10",
    "coverage_at_10": "coverage@10",
}


class BlessingRule(BaseModel):
    """When a candidate model may become the champion.

    * lift: ``metric(model) >= min_lift_over_popularity * metric(popularity)`` and ``metric(model) > 0``;
    * no regression: ``metric(model) >= metric(champion) * (1 - max_regression_vs_champion)``
      (passes when there is no champion yet).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_lift_over_popularity: float = Field(default=1.2, ge=0.0, le=1000.0)
    max_regression_vs_champion: float = Field(default=0.02, ge=0.0, le=1.0)
    metric: MetricName = "recall_at_10"


class Blessing(BaseModel):
    """The verdict of :func:`decide_blessing`, with one human sentence per rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    blessed: bool
    reasons: list[str]
    lift_over_popularity: float = Field(description="metric(model) / metric(popularity), capped at 1e6.")
    vs_champion: float | None = Field(description="metric(model) / metric(champion); None without a champion.")


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return min(num / den, _RATIO_CAP)
    return _RATIO_CAP if num > 0 else 0.0


def decide_blessing(
    model: RetrievalMetrics,
    popularity: RetrievalMetrics,
    champion: RetrievalMetrics | None,
    rule: BlessingRule,
) -> Blessing:
    """Apply ``rule``: the model must beat popularity by the lift and must not regress the champion.

    Returns:
        ``blessed`` is true only when every rule passes; ``reasons`` has one sentence per rule.
    """
    name = _LABELS[rule.metric]
    m, p = getattr(model, rule.metric), getattr(popularity, rule.metric)
    lift = _ratio(m, p)
    lift_ok = m > 0 and m >= rule.min_lift_over_popularity * p
    reasons = [
        f"{'pass' if lift_ok else 'fail'}: model {name} {m:.4f} is {lift:.2f}x popularity's {p:.4f} "
        f"(needs >= {rule.min_lift_over_popularity:.2f}x and > 0)."
    ]
    vs: float | None = None
    champ_ok = True
    if champion is None:
        reasons.append("pass: no champion yet, so there is nothing to regress against.")
    else:
        c = getattr(champion, rule.metric)
        vs = _ratio(m, c)
        floor = c * (1.0 - rule.max_regression_vs_champion)
        champ_ok = m >= floor
        change = (m - c) / c * 100 if c > 0 else 0.0
        reasons.append(
            f"{'pass' if champ_ok else 'fail'}: model {name} {m:.4f} vs champion's {c:.4f} ({change:+.1f}%; "
            f"at most {rule.max_regression_vs_champion * 100:.1f}% regression allowed, floor {floor:.4f})."
        )
    return Blessing(blessed=lift_ok and champ_ok, reasons=reasons, lift_over_popularity=lift, vs_champion=vs)


# ---------------------------------------------------------------------------------------- report

_SERIES: Final = (("model", "#1f77b4", ""), ("popularity", "#7f7f7f", "6 4"), ("champion", "#d62728", "2 3"))


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def _nice_ceiling(x: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^n that is >= x (the y-axis top)."""
    if x <= 0:
        return 1.0
    exp = math.floor(math.log10(x))
    return next(m * 10.0**exp for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * 10.0**exp >= x * (1 - 1e-12))


def recall_plot_svg(curves: dict[str, list[tuple[int, float]]], *, title: str = "recall@k") -> str:
    """A self-contained SVG line chart of recall@k curves, log-scaled k; every text is escaped.

    Args:
        curves: Series name -> (k, recall) points; at most three series get distinct styles.
        title: Chart title.
    """
    width, height = 640, 360
    left, right, top, bottom = 60, 140, 40, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    ks = sorted({k for pts in curves.values() for k, _ in pts if k >= 1}) or [1, 10]
    lo, hi = math.log10(ks[0]), math.log10(ks[-1])
    span = hi - lo or 1.0
    y_top = _nice_ceiling(max((r for pts in curves.values() for _, r in pts), default=0.0))

    def px(k: int) -> float:
        return left + (math.log10(k) - lo) / span * plot_w

    def py(r: float) -> float:
        return top + (1 - r / y_top) * plot_h

    esc = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}" '
        'font-family="sans-serif" font-size="12">',
        f"<title>{esc(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left}" y="{top - 15}" font-size="14" font-weight="bold">{esc(title)}</text>',
    ]
    for i in range(6):
        r = y_top * i / 5
        y = py(r)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e0e0e0" stroke-width="1"/>'
        )
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{r:.3g}</text>')
    for k in ks:
        x = px(k)
        parts.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#f0f0f0" stroke-width="1"/>'
        )
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{k}</text>')
    parts.append(
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333333" stroke-width="1"/>'
    )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 12}" text-anchor="middle">k (log scale)</text>'
        f'<text x="16" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 16 {top + plot_h / 2:.1f})">recall@k</text>'
    )
    for i, (name, pts) in enumerate(curves.items()):
        color, dash = (_SERIES[i][1], _SERIES[i][2]) if i < len(_SERIES) else ("#2ca02c", "1 2")
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        valid = sorted((k, r) for k, r in pts if k >= 1)
        if valid:
            points = " ".join(f"{px(k):.1f},{py(r):.1f}" for k, r in valid)
            parts.append(
                f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"{dash_attr}>'
                f"<title>{esc(name)}</title></polyline>"
            )
            parts.extend(f'<circle cx="{px(k):.1f}" cy="{py(r):.1f}" r="3" fill="{color}"/>' for k, r in valid)
        ly = top + 10 + 20 * i
        lx = left + plot_w + 15
        parts.append(
            f'<line x1="{lx}" y1="{ly}" x2="{lx + 25}" y2="{ly}" stroke="{color}" stroke-width="2"{dash_attr}/>'
            f'<text x="{lx + 32}" y="{ly + 4}">{esc(name)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _table_rows(
    model: RetrievalMetrics, popularity: RetrievalMetrics, champion: RetrievalMetrics | None
) -> tuple[list[str], list[list[str]]]:
    header = ["metric", "model", "popularity", "champion", "model / popularity", "model / champion"]
    rows: list[list[str]] = []
    for key, label in _LABELS.items():
        m, p = getattr(model, key), getattr(popularity, key)
        c = None if champion is None else getattr(champion, key)
        rows.append(
            [
                label,
                _fmt(m),
                _fmt(p),
                "n/a" if c is None else _fmt(c),
                f"{_ratio(m, p):.2f}x",
                "n/a" if c is None else f"{_ratio(m, c):.2f}x",
            ]
        )
    c_users = "n/a" if champion is None else str(champion.users)
    rows.append(["users evaluated", str(model.users), str(popularity.users), c_users, "", ""])
    return header, rows


def _md(text: str) -> str:
    """Markdown-safe text: HTML-escaped (renderers pass raw HTML through) and table pipes escaped."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def render_report(
    *,
    model: RetrievalMetrics,
    popularity: RetrievalMetrics,
    champion: RetrievalMetrics | None,
    blessing: Blessing,
    title: str,
    facts: dict[str, str],
) -> tuple[str, str]:
    """The evaluation report as (Markdown, HTML).

    Both hold the comparison table (metrics x model / popularity / champion, with ratios), the
    blessing decision and its reasons, the facts (model version, data snapshot, ...) and a recall@k
    chart. The HTML page is self-contained (inline SVG and CSS, no script, no external resource, a
    restrictive Content-Security-Policy); the Markdown embeds the same SVG as a data URI image.
    Every caller-supplied text is escaped.
    """
    curves: dict[str, list[tuple[int, float]]] = {
        "model": model.recall_curve,
        "popularity": popularity.recall_curve,
    }
    if champion is not None:
        curves["champion"] = champion.recall_curve
    svg = recall_plot_svg(curves, title="recall@k on the held-out day")
    header, rows = _table_rows(model, popularity, champion)
    verdict = "BLESSED" if blessing.blessed else "NOT BLESSED"

    md = [f"# {_md(title)}", "", f"**Decision: {verdict}**", ""]
    md += [f"- {_md(r)}" for r in blessing.reasons]
    md += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    if facts:
        md += ["", "| fact | value |", "|---|---|"]
        md += [f"| {_md(k)} | {_md(v)} |" for k, v in facts.items()]
    data_uri = "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")
    md += ["", f"![recall@k]({data_uri})", ""]

    esc = html.escape
    cells = "".join(f"<th>{esc(h)}</th>" for h in header)
    body_rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    fact_rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts.items())
    reasons = "".join(f"<li>{esc(r)}</li>" for r in blessing.reasons)
    color = "#1a7f37" if blessing.blessed else "#cf222e"
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #1f2328; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #d0d7de; padding: 4px 10px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
.verdict {{ font-weight: bold; color: {color}; }}
</style>
</head>
<body>
<h1>{esc(title)}</h1>
<p class="verdict">Decision: {verdict}</p>
<ul>{reasons}</ul>
<h2>Metrics</h2>
<table><thead><tr>{cells}</tr></thead><tbody>{body_rows}</tbody></table>
<h2>Recall@k</h2>
{svg}
<h2>Facts</h2>
<table><tbody>{fact_rows}</tbody></table>
</body>
</html>
"""
    return "\n".join(md), page
