"""ANN index: hnswlib (our default) against exact numpy search and against Voyager, at the same recall.

Data: 100k x 64 L2-normalised float32 vectors from a seeded gaussian mixture (clustered like real
embeddings) and 1,000 held-out queries from the same mixture; exact ground truth by brute force.

Each backend is built with 2 threads (build times in ``params``), then tuned with the project's own
:func:`tune_and_check` to the smallest ef_search on a fine ladder whose recall@10 reaches 0.95 on all
1,000 queries. Queries are then measured with one thread (BLAS pinned to one thread too):

* ``qps_single_query``: one query per call, as a serving request makes it; hnswlib against numpy
  brute force (one mat-vec + argpartition per query) and against Voyager;
* ``qps_batch``: all queries in one call; hnswlib against batched numpy matmul + argpartition (in
  blocks of 160 queries, a 64 MB score block: the figure where brute force looks best, recorded so
  nobody is misled by the single-query one);
* ``qps_single_query[AnnIndex.query ...]`` and ``qps_batch[AnnIndex.query ...]``: :meth:`AnnIndex.query`
  (validation, id mapping, result tuples) against the bare hnswlib ``knn_query`` it wraps, on the same
  index at the same ef: what the wrapper costs per request (issue 20: target >= 0.9x);
* ``...[AnnIndex.query heavy listener ...]``: the same with each query excluding a heavy listener's
  3,000 played tracks (its 5 exact nearest neighbours plus 2,995 random ones), against the bare call
  without exclusions: exclusions must not raise ef (target >= 0.9x);
* ``incremental_update_1pct``: adding 1 % new items (1,000) to the built 100k index in place against a
  full rebuild of the 101k items, same threads, with both indexes' recall@10 against brute force at the
  same ef in ``params`` (target >= 20x faster, recall within 0.01).

Every QPS is the best of 3 passes in process CPU time (one query thread; the machine is shared and
noisy, and CPU time is what other processes disturb least). The ``AnnIndex.query`` figures are the best of
9 passes interleaved with the bare call's (bare, plain, heavy, bare, ...), so a burst of load hits the
wrapper and its baseline alike. Run ``python -m bench.ann``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import record

N_ITEMS = 100_000
DIM = 64
N_QUERIES = 1_000
K = 10
RECALL = 0.95
M = 16
EF_CONSTRUCTION = 200
BUILD_THREADS = 2
#: Finer than the production ladder, so "smallest ef reaching 0.95" is close to the true smallest.
LADDER = (10, 12, 14, 16, 18, 20, 24, 28, 32, 36, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 256, 320, 384, 512)
NUMPY_SINGLE_QUERIES = 200  # brute force is slow per query: fewer queries keep the bench short
NUMPY_BATCH_BLOCK = 160  # queries per matmul in the batched baseline: a 64 MB float32 score block
REPEATS = 3
CENTERS = 1_000
#: New items added in place by the incremental-update figure (1 % of the index).
NEW_ITEMS = N_ITEMS // 100
#: A heavy listener: this many played tracks excluded from each query (its nearest few among them).
HEAVY_PLAYED = 3_000
HEAVY_NEAREST = 5
#: Cluster spread: 1.2 overlaps the clusters enough that hnswlib needs ef_search ~64 for recall@10 = 0.95
#: (tighter clusters, e.g. 0.5, reach it at ef 12 and flatter every ratio; 2.0 is near-uniform on the sphere).
SPREAD = 1.2


def clustered_vectors(n: int, dim: int, *, centers: int = CENTERS, spread: float = SPREAD, seed: int = 0) -> np.ndarray:
    """``n`` points of a seeded gaussian mixture, projected on the unit sphere (float32)."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((centers, dim)).astype(np.float32)
    x = mu[rng.integers(0, centers, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    out: np.ndarray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def _best_qps(run_all: Callable[[], Any], n: int) -> float:
    """Queries per second of ``run_all`` (which answers ``n`` queries), best of ``REPEATS`` passes.

    Timed in this process's CPU time: every query runs on one thread (the libraries' and BLAS's), so
    CPU time is its cost, and other processes on a shared machine inflate it far less than wall time.
    """
    run_all()  # warm caches
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.process_time()
        run_all()
        best = min(best, time.process_time() - t0)
    return n / best


#: Interleaved passes of the wrapper-vs-bare comparisons (each pass is ~0.1 s of 1,000 queries).
PAIRED_REPEATS = 9


def _paired_qps(runs: dict[str, Callable[[], Any]], n: int) -> dict[str, float]:
    """Queries per second of each of ``runs`` (each answers ``n`` queries), best of ``PAIRED_REPEATS``.

    The passes are interleaved (a, b, c, a, b, c, ...) so that a burst of load on a shared machine
    hits every contender alike: the ratios of the wrapper against the bare library call come from
    passes a few milliseconds apart, not from runs a second apart. Process CPU time, as in :func:`_best_qps`.
    """
    for run_all in runs.values():
        run_all()  # warm caches
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(PAIRED_REPEATS):
        for name, run_all in runs.items():
            t0 = time.process_time()
            run_all()
            best[name] = min(best[name], time.process_time() - t0)
    return {name: n / seconds for name, seconds in best.items()}


def bench_ann() -> list[dict[str, Any]]:
    """Build, tune and time hnswlib, Voyager and exact numpy search; one record per figure."""
    from threadpoolctl import threadpool_limits

    from aitasks.recommendation_update.index import (
        IndexConfig,
        build_index,
        exact_topk,
        recall_at_k,
        tune_and_check,
    )

    data = clustered_vectors(N_ITEMS + N_QUERIES, DIM)
    items, queries = data[:N_ITEMS], data[N_ITEMS:]
    ids = [f"t{i:06d}" for i in range(N_ITEMS)]

    built: dict[str, Any] = {}
    facts: dict[str, Any] = {}
    for backend in ("hnswlib", "voyager"):
        cfg = IndexConfig(
            backend=backend,  # type: ignore[arg-type]
            m=M,
            ef_construction=EF_CONSTRUCTION,
            ef_search_ladder=LADDER,
            k=K,
            recall_floor=RECALL,
            target_recall=RECALL,
            sample_queries=N_QUERIES,
            num_threads=BUILD_THREADS,
        )
        t0 = time.perf_counter()
        index = build_index(items, ids, cfg)
        build_s = time.perf_counter() - t0
        with threadpool_limits(1):
            report = tune_and_check(index, items, queries, cfg)
        if not report.passed:
            raise RuntimeError(f"{backend} never reached recall@{K} {RECALL}: {report.ladder}")
        built[backend] = index
        facts[backend] = {
            "build_s": round(build_s, 2),
            "ef_search": report.ef,
            "ladder": [(ef, round(r, 4)) for ef, r in report.ladder],
        }

    hnsw, voy = built["hnswlib"], built["voyager"]
    native_h, native_v = hnsw._native, voy._native  # the bare library calls, for a fair backend comparison
    ef_h, ef_v = facts["hnswlib"]["ef_search"], facts["voyager"]["ef_search"]
    native_h.set_ef(ef_h)
    rows = [queries[i : i + 1] for i in range(N_QUERIES)]

    with threadpool_limits(1):
        t0 = time.perf_counter()
        exact = exact_topk(queries, items, K)
        exact_s = time.perf_counter() - t0
        approx_h, _ = native_h.knn_query(queries, k=K, num_threads=1)
        approx_v, _ = native_v.query(queries, k=K, num_threads=1, query_ef=ef_v)
        recall_h = recall_at_k(approx_h.astype(np.int64), exact)
        recall_v = recall_at_k(np.asarray(approx_v, dtype=np.int64), exact)

        def hnsw_single() -> None:
            for q in rows:
                native_h.knn_query(q, k=K, num_threads=1)

        def voyager_single() -> None:
            for q in queries:
                native_v.query(q, k=K, num_threads=1, query_ef=ef_v)

        def numpy_single() -> None:
            for q in queries[:NUMPY_SINGLE_QUERIES]:
                scores = items @ q
                top = np.argpartition(scores, N_ITEMS - K)[N_ITEMS - K :]
                top[np.argsort(-scores[top], kind="stable")]

        def wrapper_single() -> None:
            for q in rows:
                hnsw.query(q, K)

        qps_h = _best_qps(hnsw_single, N_QUERIES)
        qps_v = _best_qps(voyager_single, N_QUERIES)
        qps_np = _best_qps(numpy_single, NUMPY_SINGLE_QUERIES)
        batch_h = _best_qps(lambda: native_h.knn_query(queries, k=K, num_threads=1), N_QUERIES)

        def numpy_batch() -> None:
            for s in range(0, N_QUERIES, NUMPY_BATCH_BLOCK):
                scores = queries[s : s + NUMPY_BATCH_BLOCK] @ items.T
                top = np.argpartition(scores, N_ITEMS - K, axis=1)[:, N_ITEMS - K :]
                np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)

        batch_np = _best_qps(numpy_batch, N_QUERIES)

        # Issue 20: the wrapper's query path against the bare call, plain and with a heavy listener's
        # exclusions (sets, as a serving process keeps them), single and batched.
        rng = np.random.default_rng(1)
        heavy = []
        for r in range(N_QUERIES):
            played = set(rng.choice(N_ITEMS, HEAVY_PLAYED - HEAVY_NEAREST, replace=False).tolist())
            played.update(exact[r, :HEAVY_NEAREST].tolist())
            heavy.append({ids[i] for i in played})

        def wrapper_single_heavy() -> None:
            for i, q in enumerate(rows):
                hnsw.query(q, K, exclude=[heavy[i]])

        # Each wrapper figure against a bare call timed in the same interleaved passes.
        single = _paired_qps({"bare": hnsw_single, "plain": wrapper_single, "heavy": wrapper_single_heavy}, N_QUERIES)
        batch = _paired_qps(
            {
                "bare": lambda: native_h.knn_query(queries, k=K, num_threads=1),
                "plain": lambda: hnsw.query(queries, K),
                "heavy": lambda: hnsw.query(queries, K, exclude=heavy),
            },
            N_QUERIES,
        )
        heavy_ok = all(
            len(row) == K and not {i for i, _ in row} & heavy[r]
            for r, row in enumerate(hnsw.query(queries, K, exclude=heavy))
        )
        if not heavy_ok:
            raise RuntimeError("AnnIndex.query returned an excluded id or fewer than k results")

    incremental = _bench_incremental(items, ids, facts["hnswlib"]["build_s"], ef_h)

    params = {
        "items": N_ITEMS,
        "dim": DIM,
        "queries": N_QUERIES,
        "k": K,
        "recall_target": RECALL,
        "data": f"gaussian mixture, {CENTERS} centers, spread {SPREAD}, L2-normalised, seed 0; held-out queries",
        "M": M,
        "ef_construction": EF_CONSTRUCTION,
        "build_threads": BUILD_THREADS,
        "query_threads": 1,
        "hnswlib_build_s": facts["hnswlib"]["build_s"],
        "voyager_build_s": facts["voyager"]["build_s"],
        "hnswlib_ef_search": ef_h,
        "voyager_ef_search": ef_v,
        "hnswlib_recall_at_10": round(recall_h, 4),
        "voyager_recall_at_10": round(recall_v, 4),
        "hnswlib_ladder": facts["hnswlib"]["ladder"],
        "voyager_ladder": facts["voyager"]["ladder"],
        "exact_ground_truth_s": round(exact_s, 3),
        "heavy_listener": f"{HEAVY_PLAYED} played tracks excluded per query ({HEAVY_NEAREST} of its exact "
        "nearest neighbours + random ones), given as sets",
        "numpy_single_queries_timed": NUMPY_SINGLE_QUERIES,
        "numpy_batch_block": NUMPY_BATCH_BLOCK,
        "timing": f"best of {REPEATS} passes, process CPU time (one query thread); the AnnIndex.query figures: "
        f"best of {PAIRED_REPEATS} passes interleaved with the bare call's",
    }
    return [
        record(
            "ann_index",
            "qps_single_query[hnswlib vs numpy]",
            qps_h,
            "queries/s",
            "numpy_bruteforce_single",
            qps_np,
            params,
            higher_is_better=True,
        ),
        record(
            "ann_index",
            "qps_single_query[hnswlib vs voyager]",
            qps_h,
            "queries/s",
            "voyager_same_recall",
            qps_v,
            params,
            higher_is_better=True,
        ),
        record(
            "ann_index",
            "qps_batch[hnswlib vs numpy]",
            batch_h,
            "queries/s",
            "numpy_batched_matmul",
            batch_np,
            params,
            higher_is_better=True,
        ),
        record(
            "ann_index",
            "qps_single_query[AnnIndex.query vs bare hnswlib]",
            single["plain"],
            "queries/s",
            "hnswlib_knn_query",
            single["bare"],
            params,
            higher_is_better=True,
        ),
        record(
            "ann_index",
            "qps_batch[AnnIndex.query vs bare hnswlib]",
            batch["plain"],
            "queries/s",
            "hnswlib_knn_query_batch",
            batch["bare"],
            params,
            higher_is_better=True,
        ),
        record(
            "ann_index",
            "qps_single_query[AnnIndex.query heavy listener vs bare hnswlib]",
            single["heavy"],
            "queries/s",
            "hnswlib_knn_query_no_exclusion",
            single["bare"],
            params,
            higher_is_better=True,
        ),
        record(
            "ann_index",
            "qps_batch[AnnIndex.query heavy listener vs bare hnswlib]",
            batch["heavy"],
            "queries/s",
            "hnswlib_knn_query_batch_no_exclusion",
            batch["bare"],
            params,
            higher_is_better=True,
        ),
        *incremental,
    ]


def _bench_incremental(items: np.ndarray, ids: list[str], first_build_s: float, ef: int) -> list[dict[str, Any]]:
    """1 % new items added in place to the 100k index vs a full rebuild of the 101k; recall of both.

    The base index is built once and saved; each timed pass loads a fresh copy (not timed) and adds the
    new items. The rebuild is timed once (tens of seconds: noise matters less than for the update). Both
    use the same threads; the ratio is of process CPU time (the total work), wall times are in params.
    """
    import tempfile
    from pathlib import Path

    from threadpoolctl import threadpool_limits

    from aitasks.recommendation_update.index import AnnIndex, IndexConfig, build_index, exact_topk, recall_at_k

    data = clustered_vectors(N_ITEMS + N_QUERIES + NEW_ITEMS, DIM)
    new = data[N_ITEMS + N_QUERIES :]
    queries = data[N_ITEMS : N_ITEMS + N_QUERIES]
    new_ids = [f"n{i:06d}" for i in range(NEW_ITEMS)]
    everything = np.vstack([items, new])
    cfg = IndexConfig(m=M, ef_construction=EF_CONSTRUCTION, num_threads=BUILD_THREADS, seed=0)
    with tempfile.TemporaryDirectory(prefix="bench-ann-") as tmp:
        base = build_index(items, ids, cfg)
        base.save(Path(tmp))
        best = float("inf")
        updated = base
        best_wall = float("inf")
        for _ in range(REPEATS):
            updated = AnnIndex.load(Path(tmp))
            t0, w0 = time.process_time(), time.perf_counter()
            updated.update(new, new_ids, num_threads=BUILD_THREADS)
            best = min(best, time.process_time() - t0)
            best_wall = min(best_wall, time.perf_counter() - w0)
    t0, w0 = time.process_time(), time.perf_counter()
    rebuilt = build_index(everything, [*ids, *new_ids], cfg)
    rebuild_s, rebuild_wall = time.process_time() - t0, time.perf_counter() - w0
    with threadpool_limits(1):
        exact = exact_topk(queries, everything, K)
        recalls = {}
        for name, index in (("incremental", updated), ("rebuild", rebuilt)):
            index.set_ef(ef)
            approx, _ = index.search(queries, K)
            recalls[name] = recall_at_k(approx, exact)
        # The new items themselves are found: each new item's own vector finds it first.
        rows, _ = updated.search(new, 1)
        self_found = float((rows[:, 0] == np.arange(N_ITEMS, N_ITEMS + NEW_ITEMS)).mean())
    params = {
        "items": N_ITEMS,
        "new_items": NEW_ITEMS,
        "dim": DIM,
        "M": M,
        "ef_construction": EF_CONSTRUCTION,
        "threads": BUILD_THREADS,
        "ef_search": ef,
        "recall_at_10_incremental": round(recalls["incremental"], 4),
        "recall_at_10_rebuild": round(recalls["rebuild"], 4),
        "recall_difference": round(recalls["rebuild"] - recalls["incremental"], 4),
        "new_items_found_first": round(self_found, 4),
        "rebuild_cpu_s": round(rebuild_s, 2),
        "rebuild_wall_s": round(rebuild_wall, 2),
        "update_wall_s": round(best_wall, 4),
        "first_100k_build_s": first_build_s,
        "timing": f"update: best of {REPEATS} fresh copies; rebuild: once",
    }
    return [
        record(
            "ann_index",
            "incremental_update_1pct[add_items vs full rebuild]",
            rebuild_s / best,
            "x (rebuild / update, process CPU s)",
            "full_rebuild",
            1.0,
            {**params, "update_cpu_s": round(best, 4)},
            higher_is_better=True,
        ),
        record(
            "ann_index",
            "recall_at_10[incremental vs rebuild]",
            recalls["incremental"],
            "recall@10",
            "full_rebuild_recall",
            recalls["rebuild"],
            params,
            higher_is_better=True,
        ),
    ]


if __name__ == "__main__":
    t0 = time.perf_counter()
    out = bench_ann()
    print(json.dumps(out, indent=2))
    print(f"total {time.perf_counter() - t0:.1f} s")
