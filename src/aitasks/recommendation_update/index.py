"""ANN index over track embeddings: build, tune ef_search against exact search, gate on recall.

Vectors are L2-normalised float32 embeddings; similarity is the inner product (cosine). hnswlib is
the default backend: on this kind of machine it answers ~1.7x the queries per second of Voyager's
PyPI wheel at the same recall (FIELD_NOTES; `make bench` measures it again). Voyager stays available
(`backend="voyager"`). Both save to their own binary format; nothing is pickled.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aitasks.runtime.errors import DataFormatError, FatalError, FieldIssue, InvalidInputError
from aitasks.runtime.hashing import sha256_file

_TASK: Final = "index.build"
INDEX_FILE: Final = "index.bin"
IDS_FILE: Final = "ids.json"
_F32 = npt.NDArray[np.float32]


class IndexConfig(BaseModel):
    """How to build and check an index."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Literal["hnswlib", "voyager"] = "hnswlib"
    m: int = Field(default=16, ge=2, le=128)
    ef_construction: int = Field(default=200, ge=8, le=4096)
    ef_search_ladder: tuple[int, ...] = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
    k: int = Field(default=10, ge=1, le=1000)
    recall_floor: float = Field(default=0.95, gt=0, le=1)
    target_recall: float = Field(default=0.97, gt=0, le=1)
    sample_queries: int = Field(default=1000, ge=1, le=1_000_000)
    seed: int = Field(default=0, ge=0)
    num_threads: int = Field(default=1, ge=1, le=256)

    @model_validator(mode="after")
    def _check(self) -> IndexConfig:
        if self.target_recall < self.recall_floor:
            raise ValueError("target_recall must be >= recall_floor")
        if not self.ef_search_ladder or list(self.ef_search_ladder) != sorted(set(self.ef_search_ladder)):
            raise ValueError("ef_search_ladder must be strictly increasing and not empty")
        return self


class RecallReport(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    recall_at_k: float
    k: int
    ef: int
    queries: int
    ladder: list[tuple[int, float]]
    floor: float
    passed: bool


class IndexQualityError(FatalError):
    """The index misses too many exact neighbours to be published."""

    kind = "index_quality"


def _check_vectors(vectors: Any, name: str) -> _F32:
    arr = np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InvalidInputError(_TASK, [FieldIssue(name, f"must be a non-empty 2-D array, got shape {arr.shape}")])
    if not np.issubdtype(arr.dtype, np.floating):
        raise InvalidInputError(_TASK, [FieldIssue(name, f"must be floating point, got {arr.dtype}")])
    bad = int((~np.isfinite(arr)).any(axis=1).sum())
    if bad:
        raise InvalidInputError(_TASK, [FieldIssue(name, f"{bad} row(s) hold NaN or infinite values")])
    return np.ascontiguousarray(arr, dtype=np.float32)


def exact_topk(queries: npt.ArrayLike, items: npt.ArrayLike, k: int, *, chunk: int = 1024) -> npt.NDArray[np.int64]:
    """Exact top-``k`` item rows per query by inner product, best first; ties go to the lower row."""
    q = _check_vectors(queries, "queries")
    x = _check_vectors(items, "items")
    if q.shape[1] != x.shape[1]:
        raise InvalidInputError(_TASK, [FieldIssue("queries", f"dim {q.shape[1]} != items dim {x.shape[1]}")])
    k = min(k, x.shape[0])
    out = np.empty((q.shape[0], k), dtype=np.int64)
    rows = np.arange(x.shape[0])
    for s in range(0, q.shape[0], chunk):
        scores = q[s : s + chunk] @ x.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < x.shape[0] else np.tile(rows, (len(scores), 1))
        for r in range(scores.shape[0]):
            # Items tied with the k-th score join the candidates, so ties resolve by row, not by chance.
            kth = scores[r, part[r]].min()
            cand = np.flatnonzero(scores[r] >= kth)
            order = np.lexsort((cand, -scores[r, cand]))
            out[s + r] = cand[order[:k]]
    return out


class AnnIndex:
    """An HNSW index over item vectors with their string ids."""

    def __init__(self, backend: Literal["hnswlib", "voyager"], native: Any, ids: Sequence[str], dim: int) -> None:
        self.backend = backend
        self._native = native
        self.ids: tuple[str, ...] = tuple(ids)
        self.dim = dim
        self._ef = 10

    @property
    def size(self) -> int:
        return len(self.ids)

    @property
    def ef(self) -> int:
        return self._ef

    def set_ef(self, ef: int) -> None:
        ef = max(int(ef), 1)
        if self.backend == "hnswlib":
            self._native.set_ef(ef)
        self._ef = ef

    def search(self, queries: npt.ArrayLike, k: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Row indices and inner-product scores of the approximate top-``k`` per query."""
        q = _check_vectors(queries, "queries")
        k = min(k, self.size)
        if self.backend == "hnswlib":
            self._native.set_ef(max(self._ef, k))
            labels, dist = self._native.knn_query(q, k=k, num_threads=1)
            return labels.astype(np.int64), (1.0 - dist).astype(np.float32)
        labels, dist = self._native.query(q, k=k, num_threads=1, query_ef=max(self._ef, k))
        return np.asarray(labels, dtype=np.int64), (1.0 - np.asarray(dist)).astype(np.float32)

    def query(
        self, vectors: npt.ArrayLike, k: int, *, exclude: Sequence[Collection[str]] | None = None
    ) -> list[list[tuple[str, float]]]:
        """Per query the top-``k`` (id, score), skipping that query's excluded ids."""
        q = _check_vectors(vectors, "vectors")
        if exclude is not None and len(exclude) != q.shape[0]:
            raise InvalidInputError(_TASK, [FieldIssue("exclude", "needs one collection per query")])
        out: list[list[tuple[str, float]]] = []
        for i in range(q.shape[0]):
            banned = set(exclude[i]) if exclude is not None else set()
            want = min(self.size, k + len(banned))
            while True:
                rows, scores = self.search(q[i : i + 1], want)
                hits = [(self.ids[r], float(s)) for r, s in zip(rows[0], scores[0], strict=True)]
                hits = [h for h in hits if h[0] not in banned]
                if len(hits) >= k or want >= self.size:
                    break
                want = min(self.size, want * 2)
            out.append(hits[:k])
        return out

    def save(self, directory: Path) -> dict[str, str]:
        """Write ``index.bin`` (the backend's native format) and ``ids.json``; returns their sha256."""
        directory.mkdir(parents=True, exist_ok=True)
        if self.backend == "hnswlib":
            self._native.save_index(str(directory / INDEX_FILE))
        else:
            self._native.save(str(directory / INDEX_FILE))
        (directory / IDS_FILE).write_text(
            json.dumps({"backend": self.backend, "dim": self.dim, "ids": list(self.ids)}), "utf-8"
        )
        return {n: sha256_file(directory / n) for n in (INDEX_FILE, IDS_FILE)}

    @classmethod
    def load(cls, directory: Path, *, ef: int | None = None) -> AnnIndex:
        """Load what :meth:`save` wrote (a malformed ids file or index raises :class:`DataFormatError`)."""
        try:
            meta = json.loads((directory / IDS_FILE).read_text("utf-8"))
            backend, dim, ids = meta["backend"], int(meta["dim"]), [str(i) for i in meta["ids"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataFormatError(str(directory / IDS_FILE), f"unreadable id map: {exc}") from None
        if backend not in ("hnswlib", "voyager"):
            raise DataFormatError(str(directory / IDS_FILE), f"unknown backend {backend!r}")
        path = directory / INDEX_FILE
        try:
            if backend == "hnswlib":
                import hnswlib

                native = hnswlib.Index(space="ip", dim=dim)
                native.load_index(str(path), max_elements=len(ids))
                count = native.get_current_count()
            else:
                import voyager

                native = voyager.Index.load(str(path))
                count = len(native)
        except Exception as exc:  # the native loaders raise RuntimeError and friends on bad files
            raise DataFormatError(str(path), f"unreadable {backend} index: {exc}") from None
        if count != len(ids):
            raise DataFormatError(str(path), f"index holds {count} vectors, id map {len(ids)}")
        index = cls(backend, native, ids, dim)
        if ef is not None:
            index.set_ef(ef)
        return index


def build_index(vectors: npt.ArrayLike, ids: Sequence[str], config: IndexConfig) -> AnnIndex:
    """An HNSW index of ``vectors`` (row i is ``ids[i]``)."""
    x = _check_vectors(vectors, "vectors")
    issues = []
    if len(ids) != x.shape[0]:
        issues.append(FieldIssue("ids", f"{len(ids)} ids for {x.shape[0]} vectors"))
    if any(not isinstance(i, str) or not i for i in ids):
        issues.append(FieldIssue("ids", "must be non-empty strings"))
    elif len(set(ids)) != len(ids):
        issues.append(FieldIssue("ids", f"{len(ids) - len(set(ids))} duplicate id(s)"))
    if issues:
        raise InvalidInputError(_TASK, issues)
    n, dim = x.shape
    if config.backend == "hnswlib":
        import hnswlib

        native: Any = hnswlib.Index(space="ip", dim=dim)
        native.init_index(max_elements=n, M=config.m, ef_construction=config.ef_construction, random_seed=config.seed)
        native.add_items(x, np.arange(n), num_threads=config.num_threads)
    else:
        import voyager

        native = voyager.Index(
            voyager.Space.InnerProduct,
            num_dimensions=dim,
            M=config.m,
            ef_construction=config.ef_construction,
            random_seed=config.seed,
            max_elements=n,
        )
        native.add_items(x, ids=list(range(n)), num_threads=config.num_threads)
    index = AnnIndex(config.backend, native, ids, dim)
    index.set_ef(config.ef_search_ladder[0])
    return index


def recall_at_k(approx: npt.NDArray[np.int64], exact: npt.NDArray[np.int64]) -> float:
    """Mean share of each query's exact top-k found in its approximate top-k."""
    k = exact.shape[1]
    return float(np.mean([len(set(a[:k]) & set(e)) / k for a, e in zip(approx, exact, strict=True)]))


def tune_and_check(
    index: AnnIndex, vectors: npt.ArrayLike, queries: npt.ArrayLike, config: IndexConfig
) -> RecallReport:
    """Walk the ef ladder on sampled real queries until ``target_recall``; set that ef; report recall.

    Recall is measured against exact brute force over ``vectors``; ``passed`` means
    recall@k >= ``recall_floor``.
    """
    q = _check_vectors(queries, "queries")
    rng = np.random.default_rng(config.seed)
    if q.shape[0] > config.sample_queries:
        q = q[np.sort(rng.choice(q.shape[0], size=config.sample_queries, replace=False))]
    k = min(config.k, index.size)
    exact = exact_topk(q, vectors, k)
    ladder: list[tuple[int, float]] = []
    best_ef, best = config.ef_search_ladder[0], -1.0
    for ef in config.ef_search_ladder:
        index.set_ef(ef)
        approx, _ = index.search(q, k)
        r = recall_at_k(approx, exact)
        ladder.append((ef, r))
        if r > best:
            best_ef, best = ef, r
        if r >= config.target_recall:
            best_ef, best = ef, r
            break
    index.set_ef(best_ef)
    return RecallReport(
        recall_at_k=best,
        k=k,
        ef=best_ef,
        queries=int(q.shape[0]),
        ladder=ladder,
        floor=config.recall_floor,
        passed=best >= config.recall_floor,
    )


def require_quality(report: RecallReport) -> None:
    """Raise :class:`IndexQualityError` when the index fell below its recall floor."""
    if not report.passed:
        tried = max(ef for ef, _ in report.ladder) if report.ladder else report.ef
        raise IndexQualityError(
            f"index recall@{report.k} {report.recall_at_k:.4f} is below the floor {report.floor:.4f} "
            f"(largest ef_search tried: {tried}, {report.queries} queries); not publishing"
        )
