"""Offline retrieval evaluation, the blessing rule and the evaluation report.

Definitions (identical for every ranker, so numbers compare):

- A user is evaluated when its target set ``T`` (distinct tracks played, not skipped, on the held-out
  day; minus already-played tracks when those are excluded) is not empty.
- recall@k = |top-k ∩ T| / |T|, averaged over evaluated users.
- NDCG@10 with binary relevance: DCG = Σ 1/log2(rank + 1) over hits in the top 10, divided by the
  ideal DCG of min(|T|, 10) hits.
- coverage@10 = share of the catalog that appears in at least one evaluated user's top 10.
- Excluded items (per user) are removed from the ranking before the top-k is taken.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from aitasks.runtime.errors import FieldIssue, InvalidInputError

_TASK: Final = "model.evaluate"
CURVE_KS: Final = (1, 2, 5, 10, 20, 50, 100)

_I64 = npt.NDArray[np.int64]


class RetrievalMetrics(BaseModel):
    """Retrieval quality of one ranker on the held-out day."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    recall_at_10: float
    recall_at_50: float
    ndcg_at_10: float
    coverage_at_10: float
    users: int
    skipped_users: int = 0
    recall_curve: list[tuple[int, float]] = Field(default_factory=list)


def _exclusion_mask(rows: int, n_items: int, exclude: Sequence[_I64] | None, offset: int = 0) -> list[_I64]:
    if exclude is None:
        return []
    return [np.asarray(exclude[offset + r], dtype=np.int64) for r in range(rows)]


def _topk_rows(scores: npt.NDArray[np.float64] | npt.NDArray[np.float32], k: int) -> _I64:
    """Row-wise top-k indices by score descending, ties to the lower index (stable and deterministic)."""
    n = scores.shape[1]
    k = min(k, n)
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        # argpartition does not break ties by index: widen to every item tied with the k-th score.
        kth = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
        cand_mask = scores >= kth
    else:
        cand_mask = np.ones_like(scores, dtype=bool)
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    for r in range(scores.shape[0]):
        cand = np.flatnonzero(cand_mask[r])
        order = np.lexsort((cand, -scores[r, cand]))
        out[r] = cand[order[:k]]
    return out


def topk_from_embeddings(
    user_vecs: npt.NDArray[np.float32],
    item_vecs: npt.NDArray[np.float32],
    k: int,
    *,
    exclude: Sequence[_I64] | None = None,
    chunk: int = 1024,
) -> _I64:
    """Exact top-``k`` item indices per user by inner product (chunked), excluded items never returned."""
    if user_vecs.ndim != 2 or item_vecs.ndim != 2 or user_vecs.shape[1] != item_vecs.shape[1]:
        raise InvalidInputError(
            _TASK, [FieldIssue("vectors", f"shapes {user_vecs.shape} and {item_vecs.shape} do not match")]
        )
    if exclude is not None and len(exclude) != user_vecs.shape[0]:
        raise InvalidInputError(_TASK, [FieldIssue("exclude", "needs one entry per user")])
    out = []
    for start in range(0, user_vecs.shape[0], chunk):
        scores = user_vecs[start : start + chunk] @ item_vecs.T
        for r, x in enumerate(_exclusion_mask(scores.shape[0], item_vecs.shape[0], exclude, start)):
            scores[r, x] = -np.inf
        top = _topk_rows(scores, k)
        top[np.isneginf(np.take_along_axis(scores, top, axis=1))] = -1  # never an excluded item
        out.append(top)
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def topk_popularity(
    item_counts: npt.NDArray[np.float64], n_users: int, k: int, *, exclude: Sequence[_I64] | None = None
) -> _I64:
    """The same most-popular ranking for every user, minus that user's excluded items."""
    order = np.lexsort((np.arange(item_counts.shape[0]), -item_counts))
    if exclude is None:
        return np.tile(order[:k], (n_users, 1)).astype(np.int64)
    if len(exclude) != n_users:
        raise InvalidInputError(_TASK, [FieldIssue("exclude", "needs one entry per user")])
    out = np.empty((n_users, min(k, item_counts.shape[0])), dtype=np.int64)
    for u in range(n_users):
        ranked = order[~np.isin(order, exclude[u])][:k]
        out[u, : ranked.shape[0]] = ranked
        out[u, ranked.shape[0] :] = -1  # fewer candidates than k: nothing to fill with
    return out


def retrieval_metrics(
    topk: _I64, targets: Sequence[_I64], n_items: int, *, ks: Sequence[int] = CURVE_KS
) -> RetrievalMetrics:
    """Recall@k curve, recall@10/50, NDCG@10 and coverage@10 of ranked lists against target sets.

    Args:
        topk: ``[users, K]`` item indices, best first (``-1`` pads a short list); ``K >= max(ks)`` for
            the full curve (shorter lists cap the curve at ``K``).
        targets: Per user, the target item indices.
        n_items: Catalog size (for coverage).
        ks: The k of the recall curve.

    Raises:
        InvalidInputError: Shapes disagree, or no user has a target.
    """
    if topk.ndim != 2 or topk.shape[0] != len(targets):
        raise InvalidInputError(
            _TASK, [FieldIssue("topk", f"shape {topk.shape} does not match {len(targets)} target sets")]
        )
    if n_items < 1:
        raise InvalidInputError(_TASK, [FieldIssue("n_items", "must be at least 1")])
    depth = topk.shape[1]
    hits_at: dict[int, list[float]] = {k: [] for k in ks}
    ndcg: list[float] = []
    covered: set[int] = set()
    discounts = 1.0 / np.log2(np.arange(2, 12))
    skipped = 0
    for row, target in zip(topk, targets, strict=True):
        t = np.unique(np.asarray(target, dtype=np.int64))
        if t.size == 0:
            skipped += 1
            continue
        hit = np.isin(row, t) & (row >= 0)
        cum = np.cumsum(hit)
        for k in ks:
            hits_at[k].append(float(cum[min(k, depth) - 1]) / t.size if depth else 0.0)
        top10 = hit[:10]
        ideal = discounts[: min(t.size, 10)].sum()
        ndcg.append(float((top10 * discounts[: top10.size]).sum() / ideal))
        covered.update(int(x) for x in row[:10] if x >= 0)
    if not ndcg:
        raise InvalidInputError(_TASK, [FieldIssue("targets", "no user has a target: nothing to evaluate")])
    curve = [(k, float(np.mean(hits_at[k]))) for k in ks]
    by_k = dict(curve)
    return RetrievalMetrics(
        recall_at_10=by_k.get(10, float("nan")),
        recall_at_50=by_k.get(50, float("nan")),
        ndcg_at_10=float(np.mean(ndcg)),
        coverage_at_10=len(covered) / n_items,
        users=len(ndcg),
        skipped_users=skipped,
        recall_curve=curve,
    )


class BlessingRule(BaseModel):
    """When a model may become the champion."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_lift_over_popularity: float = Field(default=1.2, ge=0, le=100)
    max_regression_vs_champion: float = Field(default=0.02, ge=0, le=1)
    metric: Literal["recall_at_10", "ndcg_at_10"] = "recall_at_10"


class Blessing(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    blessed: bool
    reasons: list[str]
    lift_over_popularity: float
    vs_champion: float | None


def decide_blessing(
    model: RetrievalMetrics, popularity: RetrievalMetrics, champion: RetrievalMetrics | None, rule: BlessingRule
) -> Blessing:
    """Apply ``rule``: beat popularity by the lift, and do not regress the champion beyond the margin."""
    m = getattr(model, rule.metric)
    p = getattr(popularity, rule.metric)
    lift = m / p if p > 0 else (math.inf if m > 0 else 0.0)
    ok_pop = m >= rule.min_lift_over_popularity * p and m > 0
    reasons = [
        f"{'pass' if ok_pop else 'FAIL'}: {rule.metric} {m:.4f} vs popularity {p:.4f} "
        f"(x{lift:.2f}, needs x{rule.min_lift_over_popularity:.2f})"
    ]
    vs: float | None = None
    ok_champ = True
    if champion is None:
        reasons.append("pass: no champion yet")
    else:
        c = getattr(champion, rule.metric)
        vs = m / c if c > 0 else math.inf
        floor = c * (1 - rule.max_regression_vs_champion)
        ok_champ = m >= floor
        reasons.append(
            f"{'pass' if ok_champ else 'FAIL'}: {rule.metric} {m:.4f} vs champion {c:.4f} "
            f"(needs >= {floor:.4f}, at most {rule.max_regression_vs_champion:.0%} below)"
        )
    return Blessing(blessed=ok_pop and ok_champ, reasons=reasons, lift_over_popularity=lift, vs_champion=vs)


# ------------------------------------------------------------------------------------ report

_COLORS: Final = {"model": "#1f77b4", "popularity": "#ff7f0e", "champion": "#2ca02c"}


def _svg_curves(curves: dict[str, list[tuple[int, float]]]) -> str:
    """A self-contained log-x line chart of recall@k (no scripts, no external resources)."""
    w, h, left, right, top, bottom = 560, 320, 56, 130, 20, 44
    ks = sorted({k for c in curves.values() for k, _ in c}) or [1]
    kmin, kmax = math.log10(ks[0]), math.log10(max(ks[-1], ks[0] + 1))
    ymax = max([v for c in curves.values() for _, v in c] + [0.05]) * 1.1

    def x(k: int) -> float:
        return left + (math.log10(k) - kmin) / (kmax - kmin or 1) * (w - left - right)

    def y(v: float) -> float:
        return top + (1 - v / ymax) * (h - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        'role="img" aria-label="recall at k">',
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="#333"/>',
    ]
    for k in ks:
        parts.append(f'<text x="{x(k):.1f}" y="{h - bottom + 16}" font-size="11" text-anchor="middle">{k}</text>')
    for i in range(5):
        v = ymax * i / 4
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">{v:.2f}</text>')
    parts.append(f'<text x="{(left + w - right) / 2:.0f}" y="{h - 8}" font-size="12" text-anchor="middle">k</text>')
    for i, (name, curve) in enumerate(curves.items()):
        color = _COLORS.get(name, "#555")
        pts = " ".join(f"{x(k):.1f},{y(v):.1f}" for k, v in curve)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
        ly = top + 14 + 18 * i
        parts.append(f'<line x1="{w - right + 10}" y1="{ly}" x2="{w - right + 30}" y2="{ly}" stroke="{color}"/>')
        parts.append(f'<text x="{w - right + 34}" y="{ly + 4}" font-size="12">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _rows(model: RetrievalMetrics, popularity: RetrievalMetrics, champion: RetrievalMetrics | None) -> list[list[str]]:
    rows = []
    for name in ("recall_at_10", "recall_at_50", "ndcg_at_10", "coverage_at_10"):
        m, p = getattr(model, name), getattr(popularity, name)
        row = [name, f"{m:.4f}", f"{p:.4f}", f"x{m / p:.2f}" if p > 0 else "n/a"]
        row.append(f"{getattr(champion, name):.4f}" if champion is not None else "none")
        rows.append(row)
    rows.append(["users", str(model.users), str(popularity.users), "", str(champion.users) if champion else "none"])
    return rows


def render_report(
    *,
    model: RetrievalMetrics,
    popularity: RetrievalMetrics,
    champion: RetrievalMetrics | None,
    blessing: Blessing,
    title: str,
    facts: dict[str, str],
) -> tuple[str, str]:
    """(Markdown, HTML) evaluation report: comparison table, blessing and reasons, facts, recall@k plot."""
    header = ["metric", "model", "popularity", "lift", "champion"]
    rows = _rows(model, popularity, champion)
    curves = {"model": model.recall_curve, "popularity": popularity.recall_curve}
    if champion is not None:
        curves["champion"] = champion.recall_curve
    svg = _svg_curves(curves)
    verdict = "BLESSED" if blessing.blessed else "NOT BLESSED"

    md = [f"# {title}", "", f"**{verdict}**", ""]
    md += [f"- {r}" for r in blessing.reasons]
    md += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", "| fact | value |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in facts.items()]
    md += ["", "recall@k: " + ", ".join(f"k={k}: {v:.4f}" for k, v in model.recall_curve)]
    markdown = "\n".join(md) + "\n"

    e = html.escape
    table = "".join(f"<th>{e(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    fact_rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts.items())
    reasons = "".join(f"<li>{e(r)}</li>" for r in blessing.reasons)
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}</style>"
        f"</head><body><h1>{e(title)}</h1><p><strong>{e(verdict)}</strong></p><ul>{reasons}</ul>"
        f"<table><tr>{table}</tr>{body}</table><h2>recall@k</h2>{svg}<h2>facts</h2><table>{fact_rows}</table>"
        "</body></html>\n"
    )
    return markdown, page
