"""Offline retrieval evaluation: exact top-k, recall / NDCG / coverage, a statistical gate, a report.

Every ranker (the model, the popularity baseline, the user's own history, the champion) goes
through the same two steps: a top-k list per user (:func:`topk_from_embeddings`,
:func:`topk_popularity`, :func:`topk_own_history`), then :func:`retrieval_metrics` on those lists
(and :func:`per_user_scores` for the paired comparisons of the gate, :func:`paired_bootstrap`).
The top-k functions rank by score descending and break ties by the lower item index, drop the
user's ``exclude`` items before ranking, and pad with ``-1`` when fewer than ``k`` items are left,
so a comparison never depends on which function made a list.

Definitions (per user with a non-empty target set ``T``: the distinct tracks played and not skipped
on the held-out day, as item indices):

* ``recall@k = |top-k ∩ T| / |T|``, averaged over users.
* ``NDCG@10`` with binary relevance: ``DCG = Σ_{rank r ≤ 10, item in T} 1 / log2(r + 1)``, divided by the
  ideal DCG of ``min(|T|, 10)`` hits at the top ranks; averaged over users.
* ``coverage@10``: the fraction of the catalog that appears in at least one evaluated user's top-10.

Users whose target set is empty are skipped (and counted in ``skipped_users``).

Two protocols (:data:`PROTOCOL_LABELS`) decide the targets and exclusions: *all next plays* (every
track played on the held-out day, re-listens included, nothing excluded) and *discovery* (only
tracks the user had not played, which every ranker then leaves out). The gate
(:class:`BlessingRule`) compares the model with popularity and the champion per user on the same
day and blesses only when the lower bounds of the bootstrap intervals clear the rule.
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

__all__ = [
    "DEFAULT_KS",
    "PROTOCOL_LABELS",
    "Blessing",
    "BlessingRule",
    "MetricName",
    "PairedComparison",
    "Protocol",
    "ProtocolMetrics",
    "RetrievalMetrics",
    "ServingChoice",
    "choose_serving",
    "decide_blessing",
    "paired_bootstrap",
    "per_user_scores",
    "recall_plot_svg",
    "render_report",
    "retrieval_metrics",
    "topk_from_embeddings",
    "topk_own_history",
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
#: The metrics a blessing rule and a paired comparison may use (both are per-user means).
MetricName = Literal["recall_at_10", "ndcg_at_10"]


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


def topk_own_history(
    ranked_history: Sequence[np.ndarray],
    item_counts: np.ndarray,
    k: int,
    *,
    exclude: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """The user's own favourites first (in the given order), then the popularity list.

    The "what they already play" baseline: a listener's most played tracks are a strong guess of
    what they play next when re-listens count. A user with fewer than ``k`` such tracks (or none
    left after ``exclude``, as in the discovery protocol, where this becomes the popularity list)
    gets the most popular tracks after them.

    Args:
        ranked_history: Per user, item indices in preference order (e.g. most played first); no repeats.
        item_counts: ``[n]`` popularity per item (the fill).
        k: List length; columns beyond the available items are ``-1``.
        exclude: Per user, item indices that must not appear.

    Returns:
        ``int64 [u, k]``.

    Raises:
        InvalidInputError: Bad counts, ``k < 1``, bad exclusions or history indices.
    """
    n_users = len(ranked_history)
    out = topk_popularity(item_counts, n_users, k, exclude=exclude)
    n_items = int(np.asarray(item_counts).shape[0])
    ex = _check_exclude(exclude, n_users, n_items)
    for u, h in enumerate(ranked_history):
        own = np.asarray(h)
        if own.size == 0:
            continue
        if own.ndim != 1 or not np.issubdtype(own.dtype, np.integer) or own.min() < 0 or own.max() >= n_items:
            raise _issue(f"ranked_history[{u}]", f"must be a 1-D array of item indices in [0, {n_items})")
        own = own.astype(np.int64, copy=False)
        if ex is not None and ex[u].size:
            own = own[~np.isin(own, ex[u])]
        if own.size == 0:
            continue
        own = own[:k]
        fill = out[u][(out[u] >= 0) & ~np.isin(out[u], own)]
        row = np.concatenate([own, fill])[:k]
        out[u] = -1
        out[u, : row.size] = row
    return out


# --------------------------------------------------------------------------------------- metrics


def _hits(
    topk: np.ndarray, targets: Sequence[np.ndarray], n_items: int, width: int
) -> tuple[_I64, _I64, npt.NDArray[np.bool_], _I64]:
    """Validate the lists and targets; (evaluated user rows, target sizes, hit matrix, their lists).

    Only users with a non-empty target set are kept; ``hits[r, j]`` says whether the ``j``-th item of
    user row ``r``'s list is one of its targets.
    """
    top = np.asarray(topk)
    if top.ndim != 2 or not np.issubdtype(top.dtype, np.integer):
        raise _issue("topk", f"must be a 2-D integer array, got {top.dtype} {top.shape}")
    if n_items < 1:
        raise _issue("n_items", "must be >= 1")
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
    return users.astype(np.int64), sizes, hits, top


_DISCOUNTS: Final = 1.0 / np.log2(np.arange(2, 12, dtype=np.float64))


def _ndcg10(hits: npt.NDArray[np.bool_], sizes: _I64) -> npt.NDArray[np.float64]:
    dcg = hits[:, :10] @ _DISCOUNTS
    ideal = np.cumsum(_DISCOUNTS)[np.minimum(sizes, 10) - 1]
    out: npt.NDArray[np.float64] = dcg / ideal
    return out


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
    curve_ks = sorted({int(k) for k in ks})
    if not curve_ks or curve_ks[0] < 1:
        raise _issue("ks", "must be positive integers")
    users, sizes, hits, top = _hits(topk, targets, n_items, max(curve_ks[-1], 50))
    cum = np.cumsum(hits, axis=1)

    def recall(k: int) -> float:
        return float(np.mean(cum[:, k - 1] / sizes))

    head = top[:, :10]
    coverage = np.unique(head[head >= 0]).size / n_items
    return RetrievalMetrics(
        recall_at_10=recall(10),
        recall_at_50=recall(50),
        ndcg_at_10=float(np.mean(_ndcg10(hits, sizes))),
        coverage_at_10=float(coverage),
        users=int(users.size),
        skipped_users=len(targets) - int(users.size),
        recall_curve=[(k, recall(k)) for k in curve_ks],
    )


def per_user_scores(
    topk: np.ndarray, targets: Sequence[np.ndarray], n_items: int, metric: MetricName = "recall_at_10"
) -> npt.NDArray[np.float64]:
    """One user's ``metric`` per row of ``topk`` (NaN for a user with no target): the paired samples.

    The mean over the non-NaN entries is the ``metric`` of :func:`retrieval_metrics` on the same lists.

    Raises:
        InvalidInputError: As :func:`retrieval_metrics`.
    """
    users, sizes, hits, _ = _hits(topk, targets, n_items, 10)
    value = np.sum(hits, axis=1) / sizes if metric == "recall_at_10" else _ndcg10(hits, sizes)
    out = np.full(len(targets), np.nan, dtype=np.float64)
    out[users] = value
    return out


class PairedComparison(BaseModel):
    """The model against one reference ranker, per user on the same held-out day (paired bootstrap).

    ``difference = mean(model) - mean(reference)`` and ``ratio = mean(model) / mean(reference)`` over the
    users both were evaluated on; the intervals are percentile intervals of the same statistics over
    ``resamples`` bootstrap resamples of those users (one resample draws users with replacement and
    keeps each user's two scores together, so what both rankers share about a user cancels out).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    reference: str = Field(description="The reference ranker: popularity, champion, own history.")
    metric: MetricName
    users: int = Field(ge=1)
    model: float = Field(description="Mean of the model's per-user metric.")
    reference_value: float = Field(description="Mean of the reference's per-user metric.")
    difference: float
    difference_low: float = Field(description="Lower bound of the interval of the difference.")
    difference_high: float = Field(description="Upper bound of the interval of the difference.")
    ratio: float = Field(description="model / reference (capped at 1e6; 1 when both are 0).")
    ratio_low: float = Field(description="Lower bound of the interval of the ratio.")
    ratio_high: float = Field(description="Upper bound of the interval of the ratio.")
    confidence: float = Field(gt=0, lt=1)
    resamples: int = Field(ge=1)
    seed: int = Field(ge=0)


def _ratios(num: npt.NDArray[np.float64], den: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Elementwise num / den, capped; ``x / 0`` is the cap for ``x > 0`` and 1 for ``0 / 0`` (no change)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num > 0, _RATIO_CAP, 1.0))
    out: npt.NDArray[np.float64] = np.minimum(r, _RATIO_CAP)
    return out


def paired_bootstrap(
    model: npt.ArrayLike,
    reference: npt.ArrayLike,
    *,
    reference_name: str,
    metric: MetricName = "recall_at_10",
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> PairedComparison:
    """Paired percentile bootstrap of the mean difference and the ratio of two rankers' per-user scores.

    Args:
        model: Per-user scores of the model (:func:`per_user_scores`); NaN = not evaluated.
        reference: The reference's scores for the same users, in the same order.
        reference_name: Name of the reference (in the result and the report).
        metric: Which metric the scores are (recorded).
        confidence: Two-sided coverage of the intervals (0.95: the 2.5th and 97.5th percentiles).
        resamples: Bootstrap resamples.
        seed: Seed of the resampling: the same inputs and seed give the same intervals.

    Returns:
        The comparison; deterministic for a given seed.

    Raises:
        InvalidInputError: Different lengths, no user with both scores, or bad settings.
    """
    a = np.asarray(model, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise _issue("reference", f"needs the model's shape {a.shape}, got {b.shape}")
    if not 0 < confidence < 1 or resamples < 1 or seed < 0:
        raise _issue("confidence", "confidence must be in (0, 1), resamples >= 1 and seed >= 0")
    both = ~(np.isnan(a) | np.isnan(b))
    a, b = a[both], b[both]
    n = a.size
    if n == 0:
        raise _issue("reference", "no user has a score from both rankers")
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples, dtype=np.float64)
    ratios = np.empty(resamples, dtype=np.float64)
    # Resample in blocks so that memory stays bounded (block x users indices at a time).
    block = max(1, min(resamples, (1 << 22) // n))
    for start in range(0, resamples, block):
        stop = min(start + block, resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        ma, mb = a[idx].mean(axis=1), b[idx].mean(axis=1)
        diffs[start:stop] = ma - mb
        ratios[start:stop] = _ratios(ma, mb)
    tail = (1.0 - confidence) / 2.0
    q = (tail, 1.0 - tail)
    d_lo, d_hi = (float(x) for x in np.quantile(diffs, q))
    r_lo, r_hi = (float(x) for x in np.quantile(ratios, q))
    ma, mb = float(a.mean()), float(b.mean())
    return PairedComparison(
        reference=reference_name,
        metric=metric,
        users=int(n),
        model=ma,
        reference_value=mb,
        difference=ma - mb,
        difference_low=d_lo,
        difference_high=d_hi,
        ratio=float(_ratios(np.array([ma]), np.array([mb]))[0]),
        ratio_low=r_lo,
        ratio_high=r_hi,
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )


# -------------------------------------------------------------------------------------- blessing


_LABELS: Final = {
    "recall_at_10": "recall@10",
    "recall_at_50": "recall@50",
    "ndcg_at_10": "NDCG@10",
    "coverage_at_10": "coverage@10",
}


class BlessingRule(BaseModel):
    """When a candidate model may become the champion: the lower confidence bounds must clear the rule.

    Both checks use a paired bootstrap over the held-out users (:func:`paired_bootstrap`) of the
    per-user ``metric`` in the gate protocol, and look at the lower bound of the two-sided
    ``confidence`` interval of the ratio ``mean(model) / mean(reference)``:

    * lift: ``lower bound of model / popularity >= min_lift_over_popularity`` and ``mean(model) > 0``;
    * no regression: ``lower bound of model / champion >= 1 - max_regression_vs_champion``
      (passes when there is no champion yet).

    A point estimate that clears the rule by less than the noise of one held-out day is not enough:
    the model has to clear it with ``confidence``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_lift_over_popularity: float = Field(default=1.2, ge=0.0, le=1000.0)
    max_regression_vs_champion: float = Field(default=0.02, ge=0.0, le=1.0)
    metric: MetricName = "recall_at_10"
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0, description="Two-sided interval coverage.")
    resamples: int = Field(default=2000, ge=100, le=100_000, description="Bootstrap resamples.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of the bootstrap resampling.")


class Blessing(BaseModel):
    """The verdict of :func:`decide_blessing`, with one human sentence per rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    blessed: bool
    reasons: list[str]
    lift_over_popularity: float = Field(description="metric(model) / metric(popularity), capped at 1e6.")
    vs_champion: float | None = Field(description="metric(model) / metric(champion); None without a champion.")
    vs_popularity_test: PairedComparison | None = Field(default=None, description="The paired comparison.")
    vs_champion_test: PairedComparison | None = Field(default=None, description="None without a champion.")


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return min(num / den, _RATIO_CAP)
    return _RATIO_CAP if num > 0 else 0.0


def _ci(c: PairedComparison) -> str:
    return f"{c.ratio:.3f}x [{c.ratio_low:.3f}, {c.ratio_high:.3f}]"


def decide_blessing(
    vs_popularity: PairedComparison, vs_champion: PairedComparison | None, rule: BlessingRule
) -> Blessing:
    """Apply ``rule`` to the paired comparisons against popularity and the champion (same users, same day).

    Returns:
        ``blessed`` is true only when every rule passes on the lower confidence bound; ``reasons`` has
        one sentence per rule with the point estimate and the interval.
    """
    name = _LABELS[rule.metric]
    level = f"{rule.confidence * 100:g}%"
    p = vs_popularity
    lift = _ratio(p.model, p.reference_value)
    lift_ok = p.model > 0 and p.ratio_low >= rule.min_lift_over_popularity
    reasons = [
        f"{'pass' if lift_ok else 'fail'}: model {name} {p.model:.4f} vs popularity's {p.reference_value:.4f}: "
        f"{_ci(p)} ({level} paired bootstrap over {p.users} users); lower bound must be "
        f">= {rule.min_lift_over_popularity:.2f}x and the model > 0."
    ]
    vs: float | None = None
    champ_ok = True
    if vs_champion is None:
        reasons.append("pass: no champion yet, so there is nothing to regress against.")
    else:
        c = vs_champion
        vs = _ratio(c.model, c.reference_value)
        floor = 1.0 - rule.max_regression_vs_champion
        champ_ok = c.ratio_low >= floor
        change = (c.model - c.reference_value) / c.reference_value * 100 if c.reference_value > 0 else 0.0
        hint = ""
        if not champ_ok and c.ratio_high >= 1.0 and (c.ratio_high - c.ratio_low) / 2 > rule.max_regression_vs_champion:
            # The interval holds "no change": the day cannot tell, which is not the same as worse.
            hint = (
                f" Inconclusive rather than worse: the interval (half-width {(c.ratio_high - c.ratio_low) * 50:.1f}%)"
                " is wider than the allowed regression; more held-out users (days) would narrow it."
            )
        reasons.append(
            f"{'pass' if champ_ok else 'fail'}: model {name} {c.model:.4f} vs champion's {c.reference_value:.4f} "
            f"({change:+.1f}%): {_ci(c)} ({level} paired bootstrap over {c.users} users); lower bound must be "
            f">= {floor:.3f}x (at most {rule.max_regression_vs_champion * 100:.1f}% regression).{hint}"
        )
    return Blessing(
        blessed=lift_ok and champ_ok,
        reasons=reasons,
        lift_over_popularity=lift,
        vs_champion=vs,
        vs_popularity_test=vs_popularity,
        vs_champion_test=vs_champion,
    )


# ---------------------------------------------------------------------------------------- report

#: Colour per ranker; the protocol sets the dash (solid: all next plays, dashed: discovery).
_COLORS: Final = {"model": "#1f77b4", "popularity": "#7f7f7f", "own history": "#2ca02c", "champion": "#d62728"}
_FALLBACK_COLORS: Final = ("#9467bd", "#8c564b", "#e377c2", "#17becf")
_DASHES: Final = {"all": "", "discovery": "6 4"}


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def _nice_ceiling(x: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^n that is >= x (the y-axis top)."""
    if x <= 0:
        return 1.0
    exp = math.floor(math.log10(x))
    return next(m * 10.0**exp for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * 10.0**exp >= x * (1 - 1e-12))


def _style(name: str, i: int) -> tuple[str, str]:
    """(colour, dash) of a series called ``"<ranker>"`` or ``"<ranker> · <protocol>"``."""
    ranker, _, protocol = name.partition(" · ")
    color = _COLORS.get(ranker, _FALLBACK_COLORS[i % len(_FALLBACK_COLORS)])
    return color, _DASHES.get(protocol, "")


def recall_plot_svg(curves: dict[str, list[tuple[int, float]]], *, title: str = "recall@k") -> str:
    """A self-contained SVG line chart of recall@k curves, log-scaled k; every text is escaped.

    Args:
        curves: Series name -> (k, recall) points. A name ``"<ranker> · <protocol>"`` takes the
            ranker's colour and the protocol's dash (discovery dashed).
        title: Chart title.
    """
    width, height = 760, 380
    left, right, top, bottom = 60, 220, 40, 50
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
        color, dash = _style(name, i)
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


Protocol = Literal["all", "discovery"]
#: What each protocol measures, as the report says it.
PROTOCOL_LABELS: Final[dict[str, str]] = {
    "all": "all next plays (re-listens count)",
    "discovery": "discovery (tracks the user had not played)",
}


class ProtocolMetrics(BaseModel):
    """Every ranker under one evaluation protocol, on the same users."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Protocol
    model: RetrievalMetrics
    popularity: RetrievalMetrics
    own_history: RetrievalMetrics
    champion: RetrievalMetrics | None = None


class ServingChoice(BaseModel):
    """The serving mode the evaluation recorded: whether `recommend` drops played tracks by default.

    ``unfiltered`` and ``filtered`` are the model's gate metric against all next plays, served as it
    ranks and with the played tracks removed; ``auto`` picks the higher (ties: unfiltered).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Protocol = Field(description="all: serve unfiltered; discovery: drop played tracks.")
    filter_played: bool
    chosen_by: Literal["auto", "configured"]
    metric: MetricName
    unfiltered: float
    filtered: float
    reason: str


def choose_serving(
    unfiltered: float, filtered: float, *, metric: MetricName, configured: Protocol | None = None
) -> ServingChoice:
    """The serving mode: ``configured`` when given, else the variant that recovers more next plays."""
    name = _LABELS[metric]
    if configured is not None:
        protocol: Protocol = configured
        reason = f"configured: serving mode {configured!r}"
    else:
        protocol = "discovery" if filtered > unfiltered else "all"
        better, worse = (filtered, unfiltered) if protocol == "discovery" else (unfiltered, filtered)
        kind = "with played tracks removed" if protocol == "discovery" else "as ranked (played tracks kept)"
        reason = (
            f"auto: served {kind}, the model's {name} on all next plays is {better:.4f} against {worse:.4f} "
            "the other way"
        )
    return ServingChoice(
        protocol=protocol,
        filter_played=protocol == "discovery",
        chosen_by="auto" if configured is None else "configured",
        metric=metric,
        unfiltered=unfiltered,
        filtered=filtered,
        reason=reason,
    )


def _protocol_rows(pm: ProtocolMetrics) -> tuple[list[str], list[list[str]]]:
    header = ["metric", "model", "popularity", "own history", "champion"]
    header += ["model / popularity", "model / own history", "model / champion"]
    rows: list[list[str]] = []
    for key, label in _LABELS.items():
        m, p, o = getattr(pm.model, key), getattr(pm.popularity, key), getattr(pm.own_history, key)
        c = None if pm.champion is None else getattr(pm.champion, key)
        rows.append(
            [
                label,
                _fmt(m),
                _fmt(p),
                _fmt(o),
                "n/a" if c is None else _fmt(c),
                f"{_ratio(m, p):.2f}x",
                f"{_ratio(m, o):.2f}x",
                "n/a" if c is None else f"{_ratio(m, c):.2f}x",
            ]
        )
    c_users = "n/a" if pm.champion is None else str(pm.champion.users)
    users = [str(pm.model.users), str(pm.popularity.users), str(pm.own_history.users), c_users]
    rows.append(["users evaluated", *users, "", "", ""])
    return header, rows


def _gate_rows(
    blessing: Blessing, vs_own_history: PairedComparison | None, rule: BlessingRule | None
) -> tuple[list[str], list[list[str]]]:
    header = ["model vs", "model", "reference", "ratio", "ratio interval", "difference", "difference interval"]
    header.append("rule (lower bound)")
    rows: list[list[str]] = []
    lift = "n/a" if rule is None else f">= {rule.min_lift_over_popularity:.2f}x"
    floor = "n/a" if rule is None else f">= {1 - rule.max_regression_vs_champion:.3f}x"
    for test, needs in (
        (blessing.vs_popularity_test, lift),
        (blessing.vs_champion_test, floor),
        (vs_own_history, "reported, not gated"),
    ):
        if test is None:
            continue
        rows.append(
            [
                test.reference,
                _fmt(test.model),
                _fmt(test.reference_value),
                f"{test.ratio:.3f}x",
                f"[{test.ratio_low:.3f}, {test.ratio_high:.3f}]",
                f"{test.difference:+.4f}",
                f"[{test.difference_low:+.4f}, {test.difference_high:+.4f}]",
                needs,
            ]
        )
    return header, rows


def _md(text: str) -> str:
    """Markdown-safe text: HTML-escaped (renderers pass raw HTML through) and table pipes escaped."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return out


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


#: Eighths of a block, for bars drawn in text (index = eighths).
_EIGHTHS: Final = " ▏▎▍▌▋▊▉"


def text_bar(value: float, top: float, width: int = 30) -> str:
    """``value`` as a bar of Unicode blocks, ``width`` characters for ``top`` (eighth-block resolution)."""
    eighths = 0 if top <= 0 or not math.isfinite(value) else round(max(0.0, min(value / top, 1.0)) * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (_EIGHTHS[part] if part else "")).ljust(width)


def _recall_markdown(curves: dict[str, list[tuple[int, float]]], *, at: int = 10) -> list[str]:
    """The recall@k curves as Markdown a viewer cannot drop: a table, then recall@``at`` as text bars.

    Many Markdown viewers (KFP's among them) drop ``data:`` images, so the chart is text: readable raw,
    rendered as a table and a ``<pre>`` block.
    """
    ks = sorted({k for pts in curves.values() for k, _ in pts if k >= 1})
    rows = [[name, *(next((_fmt(r) for kk, r in pts if kk == k), "") for k in ks)] for name, pts in curves.items()]
    out = _md_table(["ranker · protocol", *(f"k={k}" for k in ks)], rows)
    values = {name: next((r for k, r in pts if k == at), float("nan")) for name, pts in curves.items()}
    finite = [v for v in values.values() if math.isfinite(v)]
    if finite:
        top = _nice_ceiling(max(finite))
        pad = max(len(n) for n in values)
        out += ["", f"recall@{at}, one bar per ranker and protocol (bars start at 0; full width = {top:g}):"]
        out += ["", "```text"]
        out += [
            f"{name.ljust(pad)}  {text_bar(v, top)}  {_fmt(v) if math.isfinite(v) else 'n/a'}"
            for name, v in values.items()
        ]
        out += ["```"]
    out += ["", "The HTML report draws the same curves (log-scaled k)."]
    return out


def render_report(
    *,
    protocols: Sequence[ProtocolMetrics],
    serving: ServingChoice,
    blessing: Blessing,
    title: str,
    facts: dict[str, str],
    rule: BlessingRule | None = None,
    vs_own_history: PairedComparison | None = None,
) -> tuple[str, str]:
    """The evaluation report as (Markdown, HTML).

    Both hold the decision and its reasons, the gate (each paired comparison with its interval and
    the rule its lower bound must clear), the serving mode and why, one comparison table per
    protocol (model / popularity / own history / champion, with ratios), the facts and one recall@k
    chart with every ranker under both protocols. The HTML page is self-contained (inline SVG and
    CSS, no script, no external resource, a restrictive Content-Security-Policy). The Markdown is
    self-contained text: its chart is a table of recall@k and text bars (many viewers, KFP's among
    them, drop ``data:`` images). Every caller-supplied text is escaped.
    """
    curves: dict[str, list[tuple[int, float]]] = {}
    for pm in protocols:
        for ranker, m in (
            ("model", pm.model),
            ("popularity", pm.popularity),
            ("own history", pm.own_history),
            ("champion", pm.champion),
        ):
            if m is not None:
                curves[f"{ranker} · {pm.protocol}"] = m.recall_curve
    svg = recall_plot_svg(curves, title="recall@k on the held-out day (dashed: discovery)")
    verdict = "BLESSED" if blessing.blessed else "NOT BLESSED"
    gate_header, gate_rows = _gate_rows(blessing, vs_own_history, rule)
    test = blessing.vs_popularity_test
    gate_note = (
        ""
        if test is None
        else (
            f"Protocol {PROTOCOL_LABELS[serving.protocol]}; per-user {_LABELS[test.metric]}, paired percentile "
            f"bootstrap over the same held-out users ({test.resamples} resamples, seed {test.seed}), "
            f"{test.confidence * 100:g}% intervals. Blessed only when every lower bound clears its rule."
        )
    )
    serving_line = (
        f"Serving mode: {PROTOCOL_LABELS[serving.protocol]} (filter_played={str(serving.filter_played).lower()}); "
        f"{serving.reason}."
    )
    sections = [
        (
            f"Protocol: {PROTOCOL_LABELS[pm.protocol]}"
            + (" (gate and serving mode)" if pm.protocol == serving.protocol else ""),
            _protocol_rows(pm),
        )
        for pm in protocols
    ]

    md = [f"# {_md(title)}", "", f"**Decision: {verdict}**", ""]
    md += [f"- {_md(r)}" for r in blessing.reasons]
    md += ["", "## Gate", ""]
    if gate_note:
        md += [_md(gate_note), ""]
    md += _md_table(gate_header, gate_rows)
    md += ["", "## Serving mode", "", _md(serving_line)]
    for heading, (header, rows) in sections:
        md += ["", f"## {_md(heading)}", ""]
        md += _md_table(header, rows)
    if facts:
        md += ["", "## Facts", ""]
        md += _md_table(["fact", "value"], [[k, v] for k, v in facts.items()])
    md += ["", "## Recall@k", ""]
    md += _recall_markdown(curves)

    esc = html.escape
    fact_rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts.items())
    reasons = "".join(f"<li>{esc(r)}</li>" for r in blessing.reasons)
    tables = "".join(f"<h2>{esc(heading)}</h2>\n{_html_table(header, rows)}\n" for heading, (header, rows) in sections)
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
<h2>Gate</h2>
<p>{esc(gate_note)}</p>
{_html_table(gate_header, gate_rows)}
<h2>Serving mode</h2>
<p>{esc(serving_line)}</p>
{tables}<h2>Recall@k</h2>
{svg}
<h2>Facts</h2>
<table><tbody>{fact_rows}</tbody></table>
</body>
</html>
"""
    return "\n".join(md), page
