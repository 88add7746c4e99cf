"""ANN index: recall against exact search, the quality gate, exclusions, both backends, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError

from aitasks.recommendation_update.index import (
    AnnIndex,
    IndexConfig,
    IndexQualityError,
    build_index,
    exact_topk,
    recall_at_k,
    require_quality,
    tune_and_check,
)
from aitasks.runtime.errors import DataFormatError, FatalError, InvalidInputError


def clustered(n: int, dim: int, *, centers: int = 64, seed: int = 0) -> np.ndarray:
    """A gaussian mixture on the unit sphere: clustered like real embeddings, L2-normalised float32."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((centers, dim)).astype(np.float32)
    x = mu[rng.integers(0, centers, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    out: np.ndarray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def ids_for(n: int) -> list[str]:
    return [f"t{i:06d}" for i in range(n)]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    both = clustered(20_500, 32)
    return both[:20_000], both[20_000:]  # items, held-out queries from the same mixture


@pytest.fixture(scope="module")
def hnsw(data: tuple[np.ndarray, np.ndarray]) -> AnnIndex:
    items, _ = data
    return build_index(items, ids_for(len(items)), IndexConfig(num_threads=2))


# ---------------------------------------------------------------------------------------- exact search
def test_exact_topk_matches_a_naive_argsort() -> None:
    rng = np.random.default_rng(1)
    q, x = rng.standard_normal((300, 16)), rng.standard_normal((2_000, 16))
    naive = np.argsort(-(q.astype(np.float32) @ x.astype(np.float32).T), axis=1, kind="stable")[:, :10]
    got = exact_topk(q, x, 10, chunk=37)  # chunks that do not divide the query count
    assert got.dtype == np.int64 and got.shape == (300, 10)
    np.testing.assert_array_equal(got, naive)
    np.testing.assert_array_equal(exact_topk(q[:5], x[:7], 50), np.argsort(-(q[:5] @ x[:7].T), axis=1)[:, :7])


def test_exact_topk_breaks_ties_by_lower_row() -> None:
    x = np.tile(np.eye(4, dtype=np.float32), (5, 1))  # rows i, i+4, i+8, ... are the same vector
    got = exact_topk(np.eye(4, dtype=np.float32)[:1], x, 3)
    assert got.tolist() == [[0, 4, 8]]


@settings(max_examples=60, deadline=None)
@given(
    q=hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.just(3)), elements=st.integers(-3, 3).map(float)),
    x=hnp.arrays(np.float32, st.tuples(st.integers(1, 40), st.just(3)), elements=st.integers(-3, 3).map(float)),
    k=st.integers(1, 50),
    chunk=st.integers(1, 8),
)
def test_exact_topk_property(q: np.ndarray, x: np.ndarray, k: int, chunk: int) -> None:
    """Small-integer vectors give exact float scores with many ties: the result is a stable sort."""
    expected = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, : min(k, len(x))]
    np.testing.assert_array_equal(exact_topk(q, x, k, chunk=chunk), expected)


# ---------------------------------------------------------------------------------------- recall gate
def test_tuned_hnswlib_reaches_the_recall_floor(hnsw: AnnIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
    items, queries = data
    cfg = IndexConfig()
    report = tune_and_check(hnsw, items, queries, cfg)
    assert report.passed and report.recall_at_k >= 0.95 and report.k == 10 and report.queries == len(queries)
    assert hnsw.ef == report.ef
    # It stopped at the first rung reaching the target, and every rung before it was short of it.
    assert report.ladder[-1][0] == report.ef and report.ladder[-1][1] >= cfg.target_recall
    assert all(r < cfg.target_recall for _, r in report.ladder[:-1])
    # Checked independently: the index as left by the tuning, against brute force.
    approx, scores = hnsw.search(queries, 10)
    assert recall_at_k(approx, exact_topk(queries, items, 10)) >= 0.95
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, items[approx]), atol=1e-5)  # ip scores


def test_tuning_samples_queries_with_its_seed(hnsw: AnnIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
    items, queries = data
    cfg = IndexConfig(sample_queries=100, ef_search_ladder=(16, 64))
    a, b = tune_and_check(hnsw, items, queries, cfg), tune_and_check(hnsw, items, queries, cfg)
    assert a.queries == 100 and a == b


def test_quality_gate_refuses_an_index_below_the_floor(hnsw: AnnIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
    items, queries = data
    # A degenerate graph (m=2, tiny beam) and a ladder that stops at ef 2 cannot reach a floor of 1.0.
    cfg = IndexConfig(m=2, ef_construction=8, recall_floor=1.0, target_recall=1.0, ef_search_ladder=(1, 2))
    poor = build_index(items, ids_for(len(items)), cfg)
    report = tune_and_check(poor, items, queries, cfg)
    assert not report.passed and report.recall_at_k < 1.0 and [ef for ef, _ in report.ladder] == [1, 2]
    assert report.recall_at_k == max(r for _, r in report.ladder) and poor.ef == report.ef  # best rung kept
    with pytest.raises(IndexQualityError) as info:
        require_quality(report)
    msg = str(info.value)
    assert f"recall@10 {report.recall_at_k:.4f}" in msg and "floor 1.0000" in msg, msg
    assert "largest ef_search tried: 2" in msg and f"{len(queries)} queries" in msg
    assert isinstance(info.value, FatalError) and info.value.kind == "index_quality" and not info.value.retryable
    require_quality(tune_and_check(hnsw, items, queries, IndexConfig()))  # the m=16 index passes the default floor


def test_tune_refuses_vectors_that_are_not_the_indexed_ones(
    hnsw: AnnIndex, data: tuple[np.ndarray, np.ndarray]
) -> None:
    items, queries = data
    with pytest.raises(InvalidInputError, match="vectors"):
        tune_and_check(hnsw, items[:100], queries, IndexConfig())


# ---------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("vectors", "ids", "field", "text"),
    [
        (np.array([[np.nan, 0.0], [1.0, 0.0], [np.inf, 1.0]]), ["a", "b", "c"], "vectors", "2 row(s)"),
        (np.eye(3), ["a", "b", "a"], "ids", "1 duplicate"),
        (np.eye(3), ["a", "b"], "ids", "2 ids for 3 vectors"),
        (np.eye(2), ["a", ""], "ids", "not non-empty strings"),
        (np.eye(2, dtype=np.int64), ["a", "b"], "vectors", "floating point"),
        (np.ones(3), ["a"], "vectors", "2-D"),
        (np.zeros((0, 4)), [], "vectors", "non-empty"),
        (np.zeros((2, 0)), ["a", "b"], "vectors", "non-empty"),
        ([[1.0, 2.0], [3.0]], ["a", "b"], "vectors", "not an array"),
    ],
)
def test_build_rejects_bad_input(vectors: object, ids: list[str], field: str, text: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        build_index(vectors, ids, IndexConfig())  # type: ignore[arg-type]
    assert field in info.value.fields and text in str(info.value)


def test_config_is_strict() -> None:
    assert IndexConfig().backend == "hnswlib"
    for bad in (
        {"recall_floor": 0.0},
        {"recall_floor": 1.1},
        {"recall_floor": 0.99, "target_recall": 0.97},
        {"ef_search_ladder": (32, 16)},
        {"ef_search_ladder": ()},
        {"backend": "faiss"},
        {"nope": 1},
    ):
        with pytest.raises(ValidationError):
            IndexConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        IndexConfig().k = 5  # type: ignore[misc]


def test_search_rejects_wrong_dimension_and_k(hnsw: AnnIndex) -> None:
    with pytest.raises(InvalidInputError, match="dim 8 != index dim 32"):
        hnsw.search(np.ones((1, 8), np.float32), 5)
    with pytest.raises(InvalidInputError, match="k"):
        hnsw.query(np.ones((1, 32), np.float32), 0)
    with pytest.raises(InvalidInputError, match="exclude"):
        hnsw.query(np.ones((2, 32), np.float32), 3, exclude=[{"t000001"}])


# ---------------------------------------------------------------------------------------- query / exclude
def test_query_with_exclude_never_returns_excluded_ids_and_still_returns_k(
    hnsw: AnnIndex, data: tuple[np.ndarray, np.ndarray]
) -> None:
    items, queries = data
    q = queries[:50]
    hnsw.set_ef(64)
    # Exclude each query's own top 25 (its whole neighbourhood) plus ids that are far away or unknown.
    exclude = [{i for i, _ in row} | {"t000000", "no-such-id"} for row in hnsw.query(q, 25)]
    got = hnsw.query(q, 10, exclude=exclude)
    scores_all = q @ items.T
    found = 0
    for r, (row, ex) in enumerate(zip(got, exclude, strict=True)):
        ids = [i for i, _ in row]
        assert len(ids) == 10 == len(set(ids)) and not set(ids) & ex
        scores = [s for _, s in row]
        assert scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, [scores_all[r, int(i[1:])] for i in ids], atol=1e-5)
        # Against exact search over the ids that are not excluded.
        masked = scores_all[r].copy()
        masked[[int(i[1:]) for i in ex if i.startswith("t")]] = -np.inf
        found += len({f"t{j:06d}" for j in np.argsort(-masked)[:10]} & set(ids))
    assert found / (10 * len(q)) >= 0.9


def test_query_when_exclusions_leave_few_ids() -> None:
    x = clustered(200, 8, seed=3)
    index = build_index(x, ids_for(200), IndexConfig(ef_construction=64))
    excluded = set(ids_for(200)[:195])
    got = index.query(x[:2], 10, exclude=[excluded, set()])
    assert sorted(i for i, _ in got[0]) == ids_for(200)[195:]  # all that is left, fewer than k
    assert len(got[1]) == 10
    assert len(index.query(x[:1], 500)[0]) == 200  # k beyond the index size


# ---------------------------------------------------------------------------------------- backends, files
@pytest.mark.parametrize("backend", ["hnswlib", "voyager"])
def test_backend_recall_and_save_load_roundtrip(backend: str, tmp_path: Path) -> None:
    both = clustered(5_200, 24, seed=5)
    items, queries = both[:5_000], both[5_000:]
    cfg = IndexConfig(backend=backend, num_threads=2)  # type: ignore[arg-type]
    index = build_index(items, ids_for(5_000), cfg)
    report = tune_and_check(index, items, queries, cfg)
    assert report.passed and report.recall_at_k >= 0.95

    digests = index.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["ids.json", "index.bin"] == sorted(digests)
    assert json.loads((tmp_path / "idx" / "ids.json").read_text())["backend"] == backend
    loaded = AnnIndex.load(tmp_path / "idx", ef=index.ef, backend=backend, dim=24, count=5_000)
    assert (loaded.backend, loaded.size, loaded.dim, loaded.ef, loaded.ids) == (backend, 5_000, 24, index.ef, index.ids)
    a, b = index.search(queries, 10), loaded.search(queries, 10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[1], np.einsum("qd,qkd->qk", queries, items[a[0]]), atol=1e-5)  # ip, best first
    assert (np.diff(a[1], axis=1) <= 1e-6).all()
    assert index.query(queries[:3], 5, exclude=[{"t000001"}] * 3) == loaded.query(
        queries[:3], 5, exclude=[{"t000001"}] * 3
    )


@pytest.mark.parametrize("backend", ["hnswlib", "voyager"])
def test_load_refuses_broken_or_unexpected_files(backend: str, tmp_path: Path) -> None:
    x = clustered(300, 8, seed=2)
    d = tmp_path / "idx"
    build_index(x, ids_for(300), IndexConfig(backend=backend, ef_construction=32)).save(d)  # type: ignore[arg-type]
    raw, meta = (d / "index.bin").read_bytes(), json.loads((d / "ids.json").read_text())
    other = "voyager" if backend == "hnswlib" else "hnswlib"
    with pytest.raises(DataFormatError, match="dim 8 != expected 16"):
        AnnIndex.load(d, dim=16)
    with pytest.raises(DataFormatError, match=f"backend '{backend}' != expected '{other}'"):
        AnnIndex.load(d, backend=other)
    with pytest.raises(DataFormatError, match="count 300 != expected 299"):
        AnnIndex.load(d, count=299)

    # A truncated index file, wherever it is cut.
    for cut in (0, 10, 47, len(raw) // 3, len(raw) - 100, len(raw) - 1):
        (d / "index.bin").write_bytes(raw[:cut])
        with pytest.raises(DataFormatError, match=r"index\.bin"):
            AnnIndex.load(d)
    (d / "index.bin").unlink()
    with pytest.raises(DataFormatError, match=r"index\.bin"):
        AnnIndex.load(d)
    (d / "index.bin").write_bytes(raw)
    assert AnnIndex.load(d).size == 300

    # A malformed or lying id map.
    def ids_json(text: str) -> None:
        (d / "ids.json").write_text(text)

    cases = [
        ("{not json", "unreadable id map"),
        ("[]", "unreadable id map"),
        (json.dumps({**meta, "ids": "t0"}), "list of non-empty strings"),
        (json.dumps({**meta, "ids": ["a", "a"]}), "all unique"),
        (json.dumps({**meta, "ids": []}), "at least one id"),
        (json.dumps({k: v for k, v in meta.items() if k != "dim"}), "dim"),
        (json.dumps({**meta, "backend": "faiss"}), "unknown backend"),
        (json.dumps({**meta, "ids": meta["ids"][:299]}), "holds 300"),  # fewer ids than vectors
        (json.dumps({**meta, "ids": [*meta["ids"], "extra"]}), r"index\.bin"),  # more ids than vectors
        (json.dumps({**meta, "backend": other}), r"index\.bin"),  # the other library's file
        # The dimension must come from the file: hnswlib alone would trust it and read past each vector.
        (json.dumps({**meta, "dim": 16}), r"8-dim vectors, id map says 16|holds 300 x 8, id map 300 x 16"),
        (json.dumps({**meta, "dim": 4}), r"8-dim vectors, id map says 4|holds 300 x 8, id map 300 x 4"),
    ]
    for text, match in cases:
        ids_json(text)
        with pytest.raises(DataFormatError, match=match):
            AnnIndex.load(d)
    (d / "ids.json").unlink()
    with pytest.raises(DataFormatError, match=r"ids\.json"):
        AnnIndex.load(d)
