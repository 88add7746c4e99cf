"""ANN index: incremental updates (add, update in place, mark deleted) and the query path of issue 20."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aitasks.recommendation_update.index import (
    AnnIndex,
    IndexConfig,
    build_index,
    exact_topk,
    read_deleted,
    recall_at_k,
    tune_and_check,
)
from aitasks.runtime.errors import DataFormatError, InvalidInputError
from tests.recommendation_update.test_index import clustered, ids_for


def old_query(
    index: AnnIndex, q: np.ndarray, k: int, exclude: Sequence[Collection[str]] | None
) -> list[list[tuple[str, float]]]:
    """The query path before issue 20 (asks k + len(exclude) per query, Python lists), kept as the reference."""
    banned = [set(e) for e in exclude] if exclude is not None else [set() for _ in range(q.shape[0])]
    size = index.live
    want = [min(size, k + len(b)) for b in banned]
    out: list[list[tuple[str, float]] | None] = [None] * q.shape[0]
    todo = list(range(q.shape[0]))
    while todo:
        rows, scores = index.search(q[todo], max(want[i] for i in todo))
        pending = []
        for j, i in enumerate(todo):
            hits = [(index.ids[r], s) for r, s in zip(rows[j].tolist(), scores[j].tolist(), strict=True) if r >= 0]
            kept = [h for h in hits if h[0] not in banned[i]]
            if len(kept) >= k or want[i] >= size:
                out[i] = kept[:k]
            else:
                want[i] = min(size, max(want[i], len(hits)) * 2)
                pending.append(i)
        todo = pending
    return [r if r is not None else [] for r in out]


def same_answers(got: list[list[tuple[str, float]]], want: list[list[tuple[str, float]]]) -> bool:
    """Same ids in the same order, and scores equal to float32 rounding (query's are exact doubles of
    ``1 - distance``, the old path's came through :meth:`AnnIndex.search`'s float32)."""
    return [[i for i, _ in row] for row in got] == [[i for i, _ in row] for row in want] and all(
        np.allclose([s for _, s in a], [s for _, s in b], rtol=0, atol=1e-6) for a, b in zip(got, want, strict=True)
    )


def brute_force(
    items: np.ndarray, ids: list[str], q: np.ndarray, k: int, exclude: Sequence[Collection[str]], live: set[str]
) -> list[list[str]]:
    out = []
    for r in range(q.shape[0]):
        scores = items @ q[r]
        order = [ids[j] for j in np.argsort(-scores, kind="stable") if ids[j] in live and ids[j] not in exclude[r]]
        out.append(order[:k])
    return out


# ---------------------------------------------------------------------------------------- query path
@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, AnnIndex]:
    x = clustered(300, 8, seed=11)
    index = build_index(x, ids_for(300), IndexConfig(ef_construction=300, m=24))
    index.set_ef(300)  # the beam holds every row: the search is exact, so paths can be compared exactly
    return x, index


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.integers(0, 299), min_size=1, max_size=6),
    k=st.integers(1, 40),
    excluded=st.lists(st.lists(st.integers(0, 299), max_size=290), min_size=6, max_size=6),
    as_sets=st.booleans(),
    noise=st.integers(0, 10_000),
)
def test_query_path_returns_what_the_old_path_returned(
    small: tuple[np.ndarray, AnnIndex], rows: list[int], k: int, excluded: list[list[int]], as_sets: bool, noise: int
) -> None:
    """Property: same ids and scores as the old path, and the brute-force answer, with any exclusions."""
    x, index = small
    rng = np.random.default_rng(noise)
    q = (x[rows] + 0.1 * rng.standard_normal((len(rows), 8))).astype(np.float32)
    ids = list(index.ids)
    ex: list[Collection[str]] = [
        ({ids[i] for i in e} if as_sets else [ids[i] for i in e]) for e in excluded[: len(rows)]
    ]
    got = index.query(q, k, exclude=ex)
    assert same_answers(got, old_query(index, q, k, ex))
    want = brute_force(x, ids, q, k, [set(e) for e in ex], set(ids))
    assert [[i for i, _ in row] for row in got] == want
    for row, r in zip(got, range(len(rows)), strict=True):
        np.testing.assert_allclose([s for _, s in row], [float(x[int(i[1:])] @ q[r]) for i, _ in row], atol=1e-5)
    # Without exclusions: the plain path, single and batched, is the old path too.
    assert same_answers(index.query(q, k), old_query(index, q, k, None))
    assert [index.query(q[i : i + 1], k)[0] for i in range(len(rows))] == index.query(q, k)
    # Every path gives the same doubles for the same hit: single, batched, with exclusions.
    nothing_of_it = [{"no-such-id"}] * len(rows)
    assert index.query(q, k, exclude=nothing_of_it) == index.query(q, k)
    assert [index.query(q[i : i + 1], k, exclude=[{"no-such-id"}])[0] for i in range(len(rows))] == index.query(q, k)


def test_query_of_a_heavy_listener_keeps_ef_and_still_returns_k() -> None:
    """Thousands of played tracks do not widen the beam for the request (nor for anyone else)."""
    x = clustered(5_000, 16, seed=4)
    index = build_index(x, ids_for(5_000), IndexConfig(num_threads=2))
    index.set_ef(32)
    rng = np.random.default_rng(0)
    heavy = {f"t{i:06d}" for i in rng.choice(5_000, 3_000, replace=False)}
    q = x[:20] + 0.05
    got = index.query(q.astype(np.float32), 10, exclude=[heavy] * 20)
    assert all(len(row) == 10 and not {i for i, _ in row} & heavy for row in got)
    assert index.ef == 32 and index._native_ef <= 5_000


def test_query_rejects_non_finite_vectors_on_the_fast_path(small: tuple[np.ndarray, AnnIndex]) -> None:
    _, index = small
    q = np.ones((3, 8), np.float32)
    q[1, 2] = np.nan
    with pytest.raises(InvalidInputError, match=r"1 row\(s\) hold NaN"):
        index.query(q, 5)
    q[1, 2] = np.inf
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        index.query(q, 5, exclude=[set(), {"t000001"}, set()])
    with pytest.raises(InvalidInputError, match="dim 4 != index dim 8"):
        index.query(np.ones((1, 4), np.float32), 5)
    # Other dtypes and layouts take the checked path and give the same answer.
    base = np.asarray(clustered(2, 8, seed=1), np.float32)
    assert index.query(base.astype(np.float64), 3) == index.query(base, 3)
    assert index.query(np.asfortranarray(base), 3) == index.query(base, 3)


# ---------------------------------------------------------------------------------------- incremental
@pytest.fixture(scope="module")
def grown() -> tuple[np.ndarray, np.ndarray, AnnIndex]:
    both = clustered(11_300, 24, seed=7)
    base, extra, queries = both[:10_000], both[10_000:11_000], both[11_000:]
    cfg = IndexConfig(num_threads=2)
    index = build_index(base, ids_for(10_000), cfg)
    report = index.update(extra, [f"n{i:06d}" for i in range(1_000)], num_threads=2)
    assert (report.added, report.updated, report.restored) == (1_000, 0, 0)
    return np.vstack([base, extra]), queries, index


def test_incremental_update_reaches_recall_against_brute_force(grown: tuple[np.ndarray, np.ndarray, AnnIndex]) -> None:
    items, queries, index = grown
    assert index.size == index.live == 11_000
    np.testing.assert_array_equal(index.vectors([0, 10_500]), items[[0, 10_500]])
    report = tune_and_check(index, index.vectors(), queries, IndexConfig())
    assert report.passed and report.recall_at_k >= 0.95
    # Against brute force on the grown catalog, with our own exact search.
    approx, _ = index.search(queries, 10)
    assert recall_at_k(approx, exact_topk(queries, items, 10)) >= 0.95
    # New items are found: each one is its own nearest neighbour.
    rows, _ = index.search(items[10_000:10_200], 1)
    assert (rows[:, 0] == np.arange(10_000, 10_200)).mean() >= 0.98


def test_deleted_items_are_never_returned_and_come_back_on_their_row(tmp_path: Path) -> None:
    x = clustered(3_000, 16, seed=9)
    ids = ids_for(3_000)
    index = build_index(x, ids, IndexConfig(num_threads=2))
    gone = set(ids[:300]) | {ids[i] for i in range(0, 3_000, 7)}
    assert index.delete([*gone, "never-indexed"]).deleted == len(gone)
    assert index.delete(gone).deleted == 0  # idempotent
    live = set(ids) - gone
    # Queries right on the deleted vectors, asking for many results and the whole index.
    for k in (10, 200, 3_000):
        for row in index.query(x[:64], k):
            assert not {i for i, _ in row} & gone
            assert len(row) == min(k, len(live))
    rows, _ = index.search(x[:64], 50)
    assert not set(rows.ravel().tolist()) & {index.row_of(i) for i in gone}
    report = tune_and_check(index, index.vectors(), x[:200] + 0.01, IndexConfig())
    assert report.passed

    # Save / load keeps the deletions (the id map lists the rows; the library keeps its marks).
    index.save(tmp_path / "idx")
    assert read_deleted(tmp_path / "idx") == sorted(index.row_of(i) for i in gone)  # type: ignore[type-var]
    loaded = AnnIndex.load(tmp_path / "idx", count=3_000)
    assert loaded.live == len(live) and abs(loaded.deleted_fraction - len(gone) / 3_000) < 1e-9
    assert not {i for row in loaded.query(x[:64], 100) for i, _ in row} & gone

    # A deleted id that comes back reuses its row, with its new vector; a known one is updated in place.
    new_vec = clustered(2, 16, seed=99)
    rep = loaded.update(new_vec, [ids[0], ids[1_000]])
    assert (rep.added, rep.updated, rep.restored) == (0, 1, 1) and loaded.size == 3_000
    assert loaded.query(new_vec[:1], 1)[0][0][0] == ids[0]
    np.testing.assert_array_equal(loaded.vectors([0, 1_000]), new_vec)


def test_incremental_updates_are_refused_with_a_clear_error() -> None:
    x = clustered(200, 8, seed=1)
    index = build_index(x, ids_for(200), IndexConfig(ef_construction=32))
    with pytest.raises(InvalidInputError, match="would leave the index empty"):
        index.delete(ids_for(200))
    with pytest.raises(InvalidInputError, match="dim 4 != index dim 8"):
        index.update(np.ones((1, 4), np.float32), ["x"])
    with pytest.raises(InvalidInputError, match="duplicate"):
        index.update(x[:2], ["a", "a"])
    voy = build_index(x, ids_for(200), IndexConfig(backend="voyager", ef_construction=32))
    with pytest.raises(InvalidInputError, match="voyager has no in-place update"):
        voy.update(x[:1], ["new"])


def test_a_lying_deleted_list_is_refused(tmp_path: Path) -> None:
    x = clustered(100, 8, seed=1)
    d = tmp_path / "idx"
    build_index(x, ids_for(100), IndexConfig(ef_construction=32)).save(d)
    meta = json.loads((d / "ids.json").read_text())
    for bad, text in (([5, 3], "sorted"), ([100], "sorted, unique row numbers"), (list(range(100)), "every row")):
        (d / "ids.json").write_text(json.dumps({**meta, "deleted": bad}))
        with pytest.raises(DataFormatError, match=text):
            AnnIndex.load(d)
    (d / "ids.json").write_text(json.dumps({**meta, "deleted": ["1"]}))
    with pytest.raises(DataFormatError, match="list of row numbers"):
        AnnIndex.load(d)
