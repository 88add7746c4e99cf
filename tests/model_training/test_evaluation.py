"""Retrieval metrics on hand-computed cases, top-k semantics, baselines, the paired gate and the report."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aitasks.model_training.evaluation import (
    Blessing,
    BlessingRule,
    PairedComparison,
    ProtocolMetrics,
    RetrievalMetrics,
    choose_serving,
    decide_blessing,
    paired_bootstrap,
    per_user_scores,
    render_report,
    retrieval_metrics,
    topk_from_embeddings,
    topk_own_history,
    topk_popularity,
)
from aitasks.runtime.errors import InvalidInputError

KS = (1, 2, 5, 10, 20, 50, 100)


def padded(rows: list[list[int]], width: int = 100) -> np.ndarray:
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def arr(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.int64)


def metrics(recall10: float, ndcg10: float = 0.1, curve: list[tuple[int, float]] | None = None) -> RetrievalMetrics:
    return RetrievalMetrics(
        recall_at_10=recall10,
        recall_at_50=min(1.0, recall10 * 2),
        ndcg_at_10=ndcg10,
        coverage_at_10=0.5,
        users=100,
        recall_curve=curve or [(1, recall10 / 4), (10, recall10), (100, min(1.0, recall10 * 3))],
    )


# ------------------------------------------------------------------------------------ metrics


def test_hand_computed_recall_ndcg_coverage() -> None:
    # user 0: hit at rank 2 of targets {1, 4}; user 1: hit at rank 1 of {4}; user 2: no targets (skipped).
    top = padded([[0, 1, 2, 3], [4, 5], [7, 8]])
    m = retrieval_metrics(top, [arr(1, 4), arr(4), arr()], n_items=10)
    curve = dict(m.recall_curve)
    assert list(curve) == list(KS)
    assert curve[1] == pytest.approx((0 + 1) / 2)
    assert curve[2] == pytest.approx((0.5 + 1) / 2)
    assert m.recall_at_10 == pytest.approx(0.75) and m.recall_at_50 == pytest.approx(0.75)
    ndcg_user0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert m.ndcg_at_10 == pytest.approx((ndcg_user0 + 1.0) / 2)
    # The skipped user's list (items 7, 8) does not count: items 0-5 of 10.
    assert m.coverage_at_10 == pytest.approx(0.6)
    assert m.users == 2 and m.skipped_users == 1


def test_duplicate_targets_count_once_and_perfect_ranking_scores_one() -> None:
    m = retrieval_metrics(padded([[3, 2, 1]]), [arr(1, 2, 3, 3, 2)], n_items=5)
    assert m.recall_at_10 == 1.0 and m.ndcg_at_10 == pytest.approx(1.0)
    assert dict(m.recall_curve)[2] == pytest.approx(2 / 3)


def test_ndcg_with_fewer_than_ten_targets_uses_the_partial_ideal() -> None:
    # |T| = 3, hits at ranks 1, 3 and 5 (item 9 is no target): DCG over IDCG of 3 hits at ranks 1-3.
    top = padded([[4, 9, 6, 8, 5, 0, 1]])
    m = retrieval_metrics(top, [arr(4, 5, 6)], n_items=10, ks=(1, 3, 5, 10))
    dcg = 1 / math.log2(2) + 1 / math.log2(4) + 1 / math.log2(6)
    ideal = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert m.ndcg_at_10 == pytest.approx(dcg / ideal)
    assert m.ndcg_at_10 == pytest.approx(0.8855, abs=1e-4)
    assert m.recall_curve == [(1, pytest.approx(1 / 3)), (3, pytest.approx(2 / 3)), (5, 1.0), (10, 1.0)]
    assert m.coverage_at_10 == pytest.approx(0.7)  # 7 distinct items of 10
    # The same hits further down score less; no hit in the top 10 scores 0 while recall@50 still counts.
    late = retrieval_metrics(padded([[*range(10, 20), 4, 5, 6]]), [arr(4, 5, 6)], n_items=30)
    assert late.ndcg_at_10 == 0.0 and late.recall_at_10 == 0.0 and late.recall_at_50 == 1.0


def test_ndcg_ideal_is_capped_at_ten_targets() -> None:
    # 20 targets, all 10 slots hit: NDCG@10 is 1 (ideal DCG over min(|T|, 10)) while recall@10 is 0.5.
    targets = np.arange(20, dtype=np.int64)
    m = retrieval_metrics(padded([list(range(10))]), [targets], n_items=30)
    assert m.ndcg_at_10 == pytest.approx(1.0) and m.recall_at_10 == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("top", "targets", "n_items", "field"),
    [
        (np.zeros(100, dtype=np.int64), [arr(1)], 5, "topk"),  # 1-D
        (np.zeros((1, 100)), [arr(1)], 5, "topk"),  # floats
        (padded([[0, 1]], width=20), [arr(1)], 5, "topk"),  # narrower than max(ks)
        (padded([[0, 1]]), [arr(1), arr(2)], 5, "targets"),  # 1 row, 2 users
        (padded([[0, 9]]), [arr(1)], 5, "topk"),  # index out of range
        (padded([[0, 1, 0]]), [arr(1)], 5, "topk"),  # repeated item
        (padded([[0, 1]]), [arr(7)], 5, "targets[0]"),  # target out of range
        (padded([[0, 1]]), [arr()], 5, "targets"),  # nobody to evaluate
        (padded([[0, 1]]), [arr(1)], 0, "n_items"),
    ],
)
def test_invalid_inputs_name_the_field(top: np.ndarray, targets: list[np.ndarray], n_items: int, field: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        retrieval_metrics(top, targets, n_items)
    assert err.value.task == "model.evaluate" and field in err.value.fields


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_recall_is_monotone_in_k_and_within_unit_interval(data: st.DataObject) -> None:
    n_items = data.draw(st.integers(1, 40))
    n_users = data.draw(st.integers(1, 6))
    rows, targets = [], []
    for _ in range(n_users):
        ranked = data.draw(st.permutations(range(n_items)))
        rows.append(list(ranked[: data.draw(st.integers(0, n_items))]))
        targets.append(np.array(data.draw(st.lists(st.integers(0, n_items - 1), max_size=8)), dtype=np.int64))
    targets[0] = np.append(targets[0], 0)  # at least one evaluable user
    m = retrieval_metrics(padded(rows), targets, n_items)
    values = [r for _, r in m.recall_curve]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values == sorted(values)
    assert dict(m.recall_curve)[10] == m.recall_at_10
    assert 0.0 <= m.ndcg_at_10 <= 1.0 + 1e-12 and 0.0 <= m.coverage_at_10 <= 1.0


# -------------------------------------------------------------------------------------- top-k


def test_topk_from_embeddings_ranks_by_score_with_index_ties() -> None:
    users = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    items = np.array([[1.0, 0.0], [0.5, 0.0], [0.0, 1.0], [0.0, 2.0]], dtype=np.float32)
    top = topk_from_embeddings(users, items, 6)
    assert top.dtype == np.int64 and top.shape == (3, 6)
    assert top[0].tolist() == [0, 1, 2, 3, -1, -1]  # items 2 and 3 tie at 0: lower index first
    assert top[1].tolist() == [3, 2, 0, 1, -1, -1]
    assert top[2].tolist() == [0, 1, 2, 3, -1, -1]  # all tied


def test_topk_exclusion_drops_items_and_pads() -> None:
    users = np.array([[1.0, 0.0], [0.0, 1.0]])
    items = np.array([[1.0, 0.0], [0.5, 0.0], [0.0, 1.0], [0.0, 2.0]])
    top = topk_from_embeddings(users, items, 4, exclude=[arr(0, 2), arr()])
    assert top[0].tolist() == [1, 3, -1, -1]
    assert top[1].tolist() == [3, 2, 0, 1]


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_excluded_items_never_appear_and_short_lists_are_padded(data: st.DataObject) -> None:
    n_items = data.draw(st.integers(1, 12))
    n_users = data.draw(st.integers(1, 4))
    k = data.draw(st.integers(1, 15))
    small = st.integers(-2, 2)  # small integer scores: many exact ties
    users = np.array(data.draw(st.lists(st.lists(small, min_size=2, max_size=2), min_size=n_users, max_size=n_users)))
    items = np.array(data.draw(st.lists(st.lists(small, min_size=2, max_size=2), min_size=n_items, max_size=n_items)))
    counts = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n_items, max_size=n_items)), dtype=np.float64)
    exclude = [
        np.array(data.draw(st.lists(st.integers(0, n_items - 1), max_size=n_items)), dtype=np.int64)
        for _ in range(n_users)
    ]
    for top in (
        topk_from_embeddings(users.astype(np.float64), items.astype(np.float64), k, exclude=exclude),
        topk_popularity(counts, n_users, k, exclude=exclude),
    ):
        assert top.shape == (n_users, k) and top.dtype == np.int64
        for row, x in zip(top, exclude, strict=True):
            kept = row[row >= 0]
            expected = min(k, n_items - np.unique(x).size)
            assert kept.size == expected and (row[expected:] == -1).all()  # padding only at the tail
            assert not np.isin(kept, x).any() and np.unique(kept).size == kept.size


def test_topk_matches_a_stable_full_sort_with_many_ties_and_any_chunk() -> None:
    rng = np.random.default_rng(7)
    users = rng.integers(-2, 3, size=(37, 4)).astype(np.float64)  # small integers: many exact ties
    items = rng.integers(-2, 3, size=(60, 4)).astype(np.float64)
    exclude = [rng.choice(60, size=rng.integers(0, 10), replace=False) for _ in range(37)]
    scores = users @ items.T
    for u, x in enumerate(exclude):
        scores[u, x] = -np.inf
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :15]
    for chunk in (1, 5, 1024):
        got = topk_from_embeddings(users, items, 15, exclude=exclude, chunk=chunk)
        assert np.array_equal(got, expected)


def test_topk_popularity_matches_the_embedding_ranker() -> None:
    counts = np.array([5.0, 9.0, 9.0, 1.0, 0.0])
    top = topk_popularity(counts, 3, 6, exclude=[arr(2), arr(), arr(0, 1, 2, 3, 4)])
    assert top[0].tolist() == [1, 0, 3, 4, -1, -1]
    assert top[1].tolist() == [1, 2, 0, 3, 4, -1]
    assert top[2].tolist() == [-1] * 6
    same = topk_from_embeddings(np.ones((3, 1)), counts[:, None], 6, exclude=[arr(2), arr(), arr(0, 1, 2, 3, 4)])
    assert np.array_equal(top, same)
    assert topk_popularity(counts, 2, 2).tolist() == [[1, 2], [1, 2]]


def test_topk_invalid_inputs() -> None:
    with pytest.raises(InvalidInputError):
        topk_from_embeddings(np.ones((2, 3)), np.ones((4, 2)), 2)
    with pytest.raises(InvalidInputError):
        topk_from_embeddings(np.ones((2, 3)), np.full((4, 3), np.nan), 2)
    with pytest.raises(InvalidInputError) as err:
        topk_from_embeddings(np.ones((2, 3)), np.ones((4, 3)), 2, exclude=[arr(1)])
    assert "exclude" in err.value.fields
    with pytest.raises(InvalidInputError):
        topk_popularity(np.ones(4), 1, 2, exclude=[arr(4)])
    with pytest.raises(InvalidInputError):
        topk_popularity(np.ones(4), 1, 0)


# --------------------------------------------------------------------------- own-history baseline


def test_own_history_puts_favourites_first_then_popularity() -> None:
    counts = np.array([50.0, 40, 30, 20, 10, 5])
    top = topk_own_history([arr(4, 2), arr(), arr(5)], counts, 4)
    assert top.tolist() == [[4, 2, 0, 1], [0, 1, 2, 3], [5, 0, 1, 2]]


def test_own_history_under_discovery_exclusions_is_popularity() -> None:
    counts = np.array([50.0, 40, 30, 20, 10, 5])
    played = [arr(4, 2), arr(0)]
    own = topk_own_history([arr(4, 2), arr(0)], counts, 3, exclude=played)
    assert own.tolist() == topk_popularity(counts, 2, 3, exclude=played).tolist() == [[0, 1, 3], [1, 2, 3]]
    # Only part of the history excluded: the rest still leads.
    partial = topk_own_history([arr(4, 2)], counts, 3, exclude=[arr(4)])
    assert partial.tolist() == [[2, 0, 1]]


def test_own_history_short_catalog_pads_and_bad_history_is_refused() -> None:
    top = topk_own_history([arr(1)], np.array([1.0, 2.0]), 4)
    assert top.tolist() == [[1, 0, -1, -1]]
    with pytest.raises(InvalidInputError, match=r"ranked_history\[0\]"):
        topk_own_history([arr(7)], np.ones(3), 2)


# ------------------------------------------------------------------------- paired comparisons


def test_per_user_scores_average_to_the_metrics_and_mark_users_without_targets() -> None:
    rng = np.random.default_rng(3)
    n_items, users = 40, 30
    top = padded([rng.permutation(n_items).tolist() for _ in range(users)])
    targets = [rng.choice(n_items, size=rng.integers(0, 5), replace=False) for _ in range(users)]
    targets[0] = arr()
    m = retrieval_metrics(top, targets, n_items)
    recall = per_user_scores(top, targets, n_items, "recall_at_10")
    ndcg = per_user_scores(top, targets, n_items, "ndcg_at_10")
    assert np.isnan(recall[0]) and np.isnan(ndcg[0])
    assert np.nanmean(recall) == pytest.approx(m.recall_at_10)
    assert np.nanmean(ndcg) == pytest.approx(m.ndcg_at_10)


def test_bootstrap_of_identical_rankers_is_exactly_no_change() -> None:
    x = np.random.default_rng(0).random(200)
    c = paired_bootstrap(x, x, reference_name="champion")
    assert c.difference == c.difference_low == c.difference_high == 0.0
    assert c.ratio == c.ratio_low == c.ratio_high == 1.0
    assert c.users == 200 and c.resamples == 2000 and c.confidence == 0.95


def test_bootstrap_is_seeded_and_its_interval_tracks_the_noise() -> None:
    rng = np.random.default_rng(1)
    base = rng.random(500)
    better = base + 0.05 + rng.normal(0, 0.05, 500)  # a real, paired improvement
    first = paired_bootstrap(better, base, reference_name="popularity", seed=4)
    assert first == paired_bootstrap(better, base, reference_name="popularity", seed=4)
    assert first != paired_bootstrap(better, base, reference_name="popularity", seed=5)
    assert first.difference_low > 0.04 and first.difference_high < 0.06
    assert first.ratio_low > 1.0 and first.ratio_low < first.ratio < first.ratio_high
    # Pure noise around the same mean: the interval holds "no change".
    noisy = base + rng.normal(0, 0.2, 500)
    c = paired_bootstrap(noisy, base, reference_name="champion")
    assert c.ratio_low < 1.0 < c.ratio_high and c.difference_low < 0 < c.difference_high
    # Pairing matters: the same two score sets shuffled (unpaired) give a much wider interval.
    unpaired = paired_bootstrap(better, rng.permutation(base), reference_name="popularity")
    assert unpaired.difference_high - unpaired.difference_low > 3 * (first.difference_high - first.difference_low)


def test_bootstrap_coverage_of_a_known_difference() -> None:
    """Over many simulated days the 90% interval holds the true mean difference about 90% of the time."""
    rng = np.random.default_rng(7)
    hits = 0
    trials = 200
    for t in range(trials):
        a = rng.binomial(1, 0.3, 300).astype(float)
        b = np.where(rng.random(300) < 0.8, a, rng.binomial(1, 0.25, 300))  # correlated with a
        true_diff = 0.3 - (0.8 * 0.3 + 0.2 * 0.25)
        c = paired_bootstrap(a, b, reference_name="x", confidence=0.9, resamples=400, seed=t)
        hits += c.difference_low <= true_diff <= c.difference_high
    assert 0.82 <= hits / trials <= 0.97


def test_bootstrap_skips_unscored_users_and_refuses_bad_input() -> None:
    a = np.array([0.5, np.nan, 0.2, 0.1])
    b = np.array([0.1, 0.3, np.nan, 0.1])
    c = paired_bootstrap(a, b, reference_name="x")
    assert c.users == 2 and c.model == pytest.approx(0.3) and c.reference_value == pytest.approx(0.1)
    with pytest.raises(InvalidInputError, match="reference"):
        paired_bootstrap(a, b[:3], reference_name="x")
    with pytest.raises(InvalidInputError, match="no user"):
        paired_bootstrap(np.array([np.nan]), np.array([1.0]), reference_name="x")
    with pytest.raises(InvalidInputError, match="confidence"):
        paired_bootstrap(a, b, reference_name="x", confidence=1.0)
    zero = paired_bootstrap(np.zeros(5), np.zeros(5), reference_name="x")
    assert zero.ratio == zero.ratio_low == 1.0  # 0 / 0: no change, not a regression


# ----------------------------------------------------------------------------------- blessing


def comparison(model: float, reference: float, low: float, high: float, name: str = "popularity") -> PairedComparison:
    """A paired comparison with a given point ratio interval (difference interval scaled alike)."""
    return PairedComparison(
        reference=name,
        metric="recall_at_10",
        users=600,
        model=model,
        reference_value=reference,
        difference=model - reference,
        difference_low=reference * low - reference,
        difference_high=reference * high - reference,
        ratio=model / reference if reference else 1.0,
        ratio_low=low,
        ratio_high=high,
        confidence=0.95,
        resamples=2000,
        seed=0,
    )


def test_blessed_without_champion_on_the_lower_bound() -> None:
    b = decide_blessing(comparison(0.30, 0.20, 1.3, 1.7), None, BlessingRule())
    assert b.blessed and b.vs_champion is None
    assert b.lift_over_popularity == pytest.approx(1.5)
    assert len(b.reasons) == 2 and b.reasons[0].startswith("pass")
    assert "1.500x [1.300, 1.700]" in b.reasons[0] and ">= 1.20x" in b.reasons[0] and "600 users" in b.reasons[0]
    assert "no champion" in b.reasons[1]
    assert b.vs_popularity_test is not None and b.vs_popularity_test.ratio_low == 1.3


def test_lift_must_clear_the_rule_with_confidence_not_just_on_the_point() -> None:
    # 1.5x on the point estimate, but the day's noise allows 1.1x: not blessed.
    b = decide_blessing(comparison(0.30, 0.20, 1.1, 1.9), None, BlessingRule())
    assert not b.blessed and b.reasons[0].startswith("fail") and "[1.100, 1.900]" in b.reasons[0]
    assert b.reasons[1].startswith("pass")


def test_champion_rule_is_non_inferiority_on_the_lower_bound() -> None:
    rule = BlessingRule(max_regression_vs_champion=0.02)
    pop = comparison(0.30, 0.20, 1.4, 1.6)
    worse = decide_blessing(pop, comparison(0.30, 0.32, 0.90, 0.97, "champion"), rule)
    assert not worse.blessed and worse.reasons[0].startswith("pass") and worse.reasons[1].startswith("fail")
    assert worse.vs_champion == pytest.approx(0.30 / 0.32)
    for number in ("0.3000", "0.3200", "2.0%", ">= 0.980x", "[0.900, 0.970]"):
        assert number in worse.reasons[1]
    assert re.search(r"\(-6\.[23]%\)", worse.reasons[1])
    assert "Inconclusive" not in worse.reasons[1]  # the whole interval is below 1: worse, not noise
    same = decide_blessing(pop, comparison(0.30, 0.30, 0.985, 1.015, "champion"), rule)
    assert same.blessed and same.reasons[1].startswith("pass")
    noisy = decide_blessing(pop, comparison(0.30, 0.30, 0.95, 1.05, "champion"), rule)
    assert not noisy.blessed and "Inconclusive rather than worse" in noisy.reasons[1]


def test_rule_metric_and_zero_model() -> None:
    rule = BlessingRule(metric="ndcg_at_10", min_lift_over_popularity=2.0)
    c = comparison(0.5, 0.2, 2.1, 2.9).model_copy(update={"metric": "ndcg_at_10"})
    b = decide_blessing(c, None, rule)
    assert b.blessed and b.lift_over_popularity == pytest.approx(2.5) and "NDCG@10" in b.reasons[0]
    nothing = decide_blessing(comparison(0.0, 0.0, 1.0, 1.0), None, BlessingRule(min_lift_over_popularity=0.0))
    assert not nothing.blessed and nothing.lift_over_popularity == 0.0
    with pytest.raises(ValueError):
        BlessingRule(max_regression_vs_champion=1.5)
    with pytest.raises(ValueError):
        BlessingRule(confidence=1.0)


def test_serving_mode_follows_the_next_plays_it_recovers() -> None:
    keep = choose_serving(0.22, 0.05, metric="recall_at_10")
    assert keep.protocol == "all" and keep.filter_played is False and keep.chosen_by == "auto"
    assert "0.2200" in keep.reason and "0.0500" in keep.reason
    drop = choose_serving(0.05, 0.08, metric="recall_at_10")
    assert drop.protocol == "discovery" and drop.filter_played is True
    tie = choose_serving(0.1, 0.1, metric="recall_at_10")
    assert tie.protocol == "all"
    forced = choose_serving(0.22, 0.05, metric="recall_at_10", configured="discovery")
    assert forced.filter_played is True and forced.chosen_by == "configured"


# ------------------------------------------------------------------------------------- report


def _svg(text: str) -> ET.Element:
    match = re.search(r"<svg\b.*?</svg>", text, flags=re.S)
    assert match is not None
    return ET.fromstring(match.group(0))


def _protocols(champion: bool = True) -> list[ProtocolMetrics]:
    return [
        ProtocolMetrics(
            protocol="all",
            model=metrics(0.3123),
            popularity=metrics(0.2011),
            own_history=metrics(0.3456),
            champion=metrics(0.3001) if champion else None,
        ),
        ProtocolMetrics(
            protocol="discovery",
            model=metrics(0.1212),
            popularity=metrics(0.0404),
            own_history=metrics(0.0404),
            champion=metrics(0.1111) if champion else None,
        ),
    ]


def test_report_shows_both_protocols_own_history_the_gate_and_the_serving_mode() -> None:
    rule = BlessingRule()
    vs_pop = comparison(0.3123, 0.2011, 1.41, 1.70)
    vs_champ = comparison(0.3123, 0.3001, 0.99, 1.09, "champion")
    vs_own = comparison(0.3123, 0.3456, 0.85, 0.96, "own history")
    blessing = decide_blessing(vs_pop, vs_champ, rule)
    serving = choose_serving(0.3123, 0.0800, metric="recall_at_10")
    md, page = render_report(
        protocols=_protocols(),
        serving=serving,
        blessing=blessing,
        title="Evaluation",
        facts={"model version": "7", "holdout day": "2026-10-30"},
        rule=rule,
        vs_own_history=vs_own,
    )
    for text in (md, page):
        for number in ("0.3123", "0.2011", "0.3456", "0.3001", "0.1212", "0.0404", "0.1111"):
            assert number in text
        assert "1.55x" in text  # lift in the table
        assert "all next plays (re-listens count)" in text and "discovery (tracks the user had not played)" in text
        assert "filter_played=false" in text and "BLESSED" in text
        assert "[1.410, 1.700]" in text and "[0.850, 0.960]" in text and "reported, not gated" in text
        assert "model version" in text and "2026-10-30" in text
    assert all(r.split(":")[0] in page for r in blessing.reasons)
    lines = md.splitlines()
    header = (
        "| metric | model | popularity | own history | champion | model / popularity | model / own history "
        "| model / champion |"
    )
    assert lines.count(header) == 2  # one table per protocol
    at = lines.index(header)
    assert lines[at + 1] == "|---|---|---|---|---|---|---|---|"
    assert lines[at + 2] == "| recall@10 | 0.3123 | 0.2011 | 0.3456 | 0.3001 | 1.55x | 0.90x | 1.04x |"
    assert "| users evaluated | 100 | 100 | 100 | 100 |  |  |  |" in lines
    assert "## Protocol: all next plays (re-listens count) (gate and serving mode)" in lines
    assert (
        "| popularity | 0.3123 | 0.2011 | 1.553x | [1.410, 1.700] | +0.1112 | [+0.0825, +0.1408] | &gt;= 1.20x |"
        in lines
    )
    assert "| model version | 7 |" in lines and "**Decision: BLESSED**" in lines
    assert "<td>0.3123</td>" in page and "<td>1.55x</td>" in page
    assert page.count("<svg") == 1 and "data:" not in md  # KFP's Markdown viewer drops data: images
    root = _svg(page)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    lines_drawn = root.findall(".//{http://www.w3.org/2000/svg}polyline")
    assert len(lines_drawn) == 8  # four rankers x two protocols
    dashed = [p for p in lines_drawn if p.get("stroke-dasharray")]
    assert len(dashed) == 4  # discovery
    # The chart in the Markdown is text: a recall@k table and recall@10 bars in a code block.
    assert "| ranker · protocol | k=1 | k=10 | k=100 |" in lines
    bars = lines[lines.index("```text") + 1 : lines.index("```", lines.index("```text") + 1)]
    assert len(bars) == 8 and bars[0].startswith("model · all") and bars[0].endswith("0.3123")
    # Self-contained: no script, no external resource.
    assert "<script" not in page.lower() and "src=" not in page and "href=" not in page


def test_report_without_champion_and_hostile_text_is_escaped() -> None:
    attack = "<script>alert(1)</script>"
    blessing = Blessing(
        blessed=False, reasons=["fail: <img src=x onerror=alert(1)>"], lift_over_popularity=1.5, vs_champion=None
    )
    md, page = render_report(
        protocols=_protocols(champion=False),
        serving=choose_serving(0.3, 0.1, metric="recall_at_10"),
        blessing=blessing,
        title=f"{attack} | report",
        facts={"<b>key</b>": "a|b & <i>c</i>", "data snapshot": attack},
    )
    for text in (md, page):
        assert attack not in text and "<script" not in text.lower()
        assert "<img" not in text and "<b>" not in text and "<i>" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "NOT BLESSED" in text and "n/a" in text
    # In the page, the title (twice: <title> and <h1>) and the fact are all escaped.
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 3
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>" in page
    assert "a\\|b &amp; &lt;i&gt;c&lt;/i&gt;" in md  # pipes cannot break the Markdown table
    assert "| data snapshot | &lt;script&gt;alert(1)&lt;/script&gt; |" in md.splitlines()
    root = _svg(page)
    assert len(root.findall(".//{http://www.w3.org/2000/svg}polyline")) == 6
    assert "script" not in {el.tag.rsplit("}", 1)[-1] for el in root.iter()}
