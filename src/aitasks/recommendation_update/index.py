"""ANN index over track embeddings: build, tune ef_search against exact search, gate on recall.

Vectors are L2-normalised float32 embeddings; similarity is the inner product (cosine). hnswlib is
the default backend: on this kind of machine it answers ~1.7x the queries per second of Voyager's
PyPI wheel at the same recall (FIELD_NOTES; ``python -m bench.ann`` measures it again). Voyager stays
available (``backend="voyager"``). Both save to their own binary format; nothing is pickled.

Both backends report ``distance = 1 - inner product``; this module turns it back into the score.
"""

from __future__ import annotations

import json
import math
import struct
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
Backend = Literal["hnswlib", "voyager"]
_BACKENDS: Final = ("hnswlib", "voyager")
# Cap on one chunk of the exact score matrix (float32 elements): 2**24 is 64 MiB, whatever the item count.
_MAX_CHUNK_ELEMENTS: Final = 1 << 24
_F32 = npt.NDArray[np.float32]
_F32_DTYPE: Final = np.dtype(np.float32)
_I64 = npt.NDArray[np.int64]


class IndexConfig(BaseModel):
    """How to build and check an index.

    Attributes:
        backend: HNSW implementation (hnswlib is faster here; Voyager is the alternative).
        m: Graph degree.
        ef_construction: Beam width while building.
        ef_search_ladder: The ef_search values tried, smallest first, when tuning.
        k: The k of recall@k.
        recall_floor: Below this recall@k the index is refused.
        target_recall: Tuning stops at the first ef reaching this (>= ``recall_floor``, for margin).
        sample_queries: At most this many queries are checked against exact search.
        seed: Seeds the graph construction and the query sample.
        num_threads: Threads used to build (queries always use one per call).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Backend = "hnswlib"
    m: int = Field(default=16, ge=2, le=128)
    ef_construction: int = Field(default=200, ge=8, le=4096)
    ef_search_ladder: tuple[int, ...] = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
    k: int = Field(default=10, ge=1, le=1000)
    recall_floor: float = Field(default=0.95, gt=0, le=1)
    target_recall: float = Field(default=0.97, gt=0, le=1)
    sample_queries: int = Field(default=1000, ge=1, le=1_000_000)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    num_threads: int = Field(default=1, ge=1, le=256)

    @model_validator(mode="after")
    def _check(self) -> IndexConfig:
        if self.target_recall < self.recall_floor:
            raise ValueError("target_recall must be >= recall_floor")
        ladder = self.ef_search_ladder
        if not ladder or list(ladder) != sorted(set(ladder)) or ladder[0] < 1:
            raise ValueError("ef_search_ladder must be positive, strictly increasing and not empty")
        return self


class RecallReport(BaseModel):
    """Outcome of :func:`tune_and_check`: the chosen ef_search, its recall and every rung tried."""

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


def _as_matrix(value: Any, name: str) -> _F32:
    """A C-contiguous float32 copy/view of a finite, non-empty 2-D float array, else InvalidInputError."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise InvalidInputError(_TASK, [FieldIssue(name, f"not an array: {exc}")]) from None
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InvalidInputError(_TASK, [FieldIssue(name, f"must be a non-empty 2-D array, got shape {arr.shape}")])
    if arr.dtype.kind != "f":
        raise InvalidInputError(_TASK, [FieldIssue(name, f"must be floating point, got {arr.dtype}")])
    # Cheap whole-array check first: this runs on every serving request.
    if not np.isfinite(arr).all():
        bad = int(arr.shape[0] - np.isfinite(arr).all(axis=1).sum())
        raise InvalidInputError(_TASK, [FieldIssue(name, f"{bad} row(s) hold NaN or infinite values")])
    return np.ascontiguousarray(arr, dtype=np.float32)


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InvalidInputError(_TASK, [FieldIssue("k", f"must be a positive integer, got {k!r}")])


def exact_topk(queries: npt.ArrayLike, items: npt.ArrayLike, k: int, *, chunk: int = 1024) -> _I64:
    """Exact top-``k`` item rows per query by inner product (brute force).

    Args:
        queries: ``[q, d]`` float vectors.
        items: ``[n, d]`` float vectors.
        k: Neighbours per query (capped at ``n``).
        chunk: Queries per matrix product; lowered so one score block stays under 64 MiB.

    Returns:
        ``int64 [q, min(k, n)]`` item rows, best score first; ties go to the lower row.
    """
    q = _as_matrix(queries, "queries")
    x = _as_matrix(items, "items")
    _check_k(k)
    if q.shape[1] != x.shape[1]:
        raise InvalidInputError(_TASK, [FieldIssue("queries", f"dim {q.shape[1]} != items dim {x.shape[1]}")])
    n = x.shape[0]
    k = min(int(k), n)
    step = max(1, min(int(chunk), _MAX_CHUNK_ELEMENTS // n))
    out = np.empty((q.shape[0], k), dtype=np.int64)
    for s in range(0, q.shape[0], step):
        scores = q[s : s + step] @ x.T
        if k < n:
            top = np.argpartition(scores, n - k, axis=1)[:, n - k :]
        else:
            top = np.broadcast_to(np.arange(n), scores.shape)
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)  # score desc, then row asc
        top = np.take_along_axis(top, order, axis=1)
        if k < n:
            # argpartition picks arbitrarily among items tied with the k-th score; redo those rows so
            # the lower row wins (rare with real embeddings, common with duplicated vectors).
            kth = np.take_along_axis(scores, top[:, -1:], axis=1)
            for r in np.flatnonzero((scores >= kth).sum(axis=1) > k):
                cand = np.flatnonzero(scores[r] >= kth[r, 0])
                top[r] = cand[np.lexsort((cand, -scores[r, cand]))[:k]]
        out[s : s + scores.shape[0]] = top
    return out


def recall_at_k(approx: npt.NDArray[np.integer], exact: npt.NDArray[np.integer]) -> float:
    """Mean share of each query's exact top-k rows found in its approximate top-k."""
    k = exact.shape[1]
    found = (approx[:, :k, None] == exact[:, None, :]).any(axis=2).sum(axis=1)
    return float(found.mean() / k)


def read_id_map(directory: Path) -> tuple[Backend, int, list[str]]:
    """Backend, dimension and row ids recorded by :meth:`AnnIndex.save` (DataFormatError when malformed).

    The ids cover every stored row, rows marked deleted included (see :func:`read_deleted`).
    """
    backend, dim, ids, _ = _read_meta(directory)
    return backend, dim, ids


def read_deleted(directory: Path) -> list[int]:
    """Rows of the id map marked deleted (sorted; empty for an index that never had a deletion)."""
    return _read_meta(directory)[3]


def _read_meta(directory: Path) -> tuple[Backend, int, list[str], list[int]]:
    path = directory / IDS_FILE
    try:
        meta = json.loads(path.read_text("utf-8"))
        backend, dim, ids = meta["backend"], int(meta["dim"]), meta["ids"]
        deleted = meta.get("deleted", [])
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            raise TypeError("ids must be a list of non-empty strings")
        if not isinstance(deleted, list) or not all(type(r) is int for r in deleted):
            raise TypeError("deleted must be a list of row numbers")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataFormatError(str(path), f"unreadable id map: {exc}") from None
    if backend not in _BACKENDS:
        raise DataFormatError(str(path), f"unknown backend {backend!r}")
    if dim < 1 or not ids or len(set(ids)) != len(ids):
        raise DataFormatError(str(path), "id map needs dim >= 1 and at least one id, all unique")
    if deleted != sorted(set(deleted)) or (deleted and (deleted[0] < 0 or deleted[-1] >= len(ids))):
        raise DataFormatError(str(path), "deleted rows must be sorted, unique row numbers of the id map")
    if len(deleted) == len(ids):
        raise DataFormatError(str(path), "every row is marked deleted")
    return backend, dim, ids, deleted


class UpdateReport(BaseModel):
    """What :meth:`AnnIndex.update` and :meth:`AnnIndex.delete` changed, in rows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    added: int = 0
    updated: int = 0
    restored: int = 0
    deleted: int = 0


class AnnIndex:
    """An HNSW inner-product index over item vectors, with the string id of every row.

    Row ``r`` (the library's label) holds ``ids[r]``. Rows can be added, updated in place and marked
    deleted (:meth:`update`, :meth:`delete`; hnswlib only): a deleted row keeps its id in :attr:`ids`
    (an id that comes back reuses its row) but is never returned by a search.

    Not safe for concurrent queries that change ``ef`` from several threads; serve one index per
    worker (or never call :meth:`set_ef` after loading).
    """

    def __init__(
        self, backend: Backend, native: Any, ids: Sequence[str], dim: int, deleted: Collection[int] = ()
    ) -> None:
        self.backend: Backend = backend
        self._native = native
        self.ids: tuple[str, ...] = tuple(ids)
        self.dim = dim
        self._ef = 10
        self._native_ef = -1  # what hnswlib currently holds: set_ef only when it must change
        # Row -> id as a numpy object array too: a block of results maps in one C-level take.
        self._id_array: npt.NDArray[np.object_] = np.array(self.ids, dtype=object)
        self._row_of: dict[str, int] | None = None  # built on first use (updates, deletes)
        self._deleted: set[int] = {int(r) for r in deleted}

    @property
    def size(self) -> int:
        """Number of stored rows, rows marked deleted included (the id map's length)."""
        return len(self.ids)

    @property
    def live(self) -> int:
        """Number of rows a search can return (stored rows not marked deleted)."""
        return len(self.ids) - len(self._deleted)

    @property
    def deleted_rows(self) -> list[int]:
        """Rows marked deleted, sorted."""
        return sorted(self._deleted)

    @property
    def deleted_fraction(self) -> float:
        """Share of the stored rows that are marked deleted (what a rebuild would reclaim)."""
        return len(self._deleted) / len(self.ids) if self.ids else 0.0

    def live_rows(self) -> _I64:
        """Rows not marked deleted, ascending."""
        mask = np.ones(len(self.ids), dtype=bool)
        if self._deleted:
            mask[np.fromiter(self._deleted, dtype=np.int64, count=len(self._deleted))] = False
        return np.flatnonzero(mask).astype(np.int64)

    def row_of(self, item_id: str) -> int | None:
        """The row holding ``item_id`` (deleted rows included), None when unknown."""
        if self._row_of is None:
            self._row_of = {i: r for r, i in enumerate(self.ids)}
        return self._row_of.get(item_id)

    def is_deleted(self, row: int) -> bool:
        """Whether ``row`` is marked deleted."""
        return int(row) in self._deleted

    @property
    def ef(self) -> int:
        """The ef_search used by queries (raised to k when k is larger)."""
        return self._ef

    def set_ef(self, ef: int) -> None:
        """Set ef_search (>= 1) for the following queries."""
        if isinstance(ef, bool) or not isinstance(ef, int | np.integer) or ef < 1:
            raise InvalidInputError(_TASK, [FieldIssue("ef", f"must be a positive integer, got {ef!r}")])
        self._ef = int(ef)

    def vectors(self, rows: npt.ArrayLike | None = None) -> _F32:
        """The stored vectors of ``rows`` (default: every row), ``float32 [len(rows), dim]``.

        Rows marked deleted come back as zeros (the library no longer hands them out); searches and
        :func:`tune_and_check` never use them.
        """
        sel = np.arange(len(self.ids), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        out = np.zeros((sel.size, self.dim), dtype=np.float32)
        keep = (
            np.flatnonzero([int(r) not in self._deleted for r in sel.tolist()])
            if self._deleted
            else np.arange(sel.size)
        )
        if keep.size == 0:
            return out
        if self.backend == "hnswlib":
            got = self._native.get_items(sel[keep], return_type="numpy")
        else:
            got = self._native.get_vectors(sel[keep].tolist())
        out[keep] = np.asarray(got, dtype=np.float32).reshape(keep.size, self.dim)
        return out

    def search(self, queries: npt.ArrayLike, k: int) -> tuple[_I64, _F32]:
        """Rows and inner-product scores of the approximate top-``k`` per query, best first.

        Args:
            queries: ``[q, dim]`` float vectors.
            k: Neighbours per query (capped at :attr:`live`).

        Returns:
            ``int64 [q, k']`` rows and ``float32 [q, k']`` scores, ``k' = min(k, live)``.
        """
        q = self._queries(queries, "queries")
        _check_k(k)
        return self._search(q, min(int(k), self.live))

    def _queries(self, value: Any, name: str) -> _F32:
        q = _as_matrix(value, name)
        if q.shape[1] != self.dim:
            raise InvalidInputError(_TASK, [FieldIssue(name, f"dim {q.shape[1]} != index dim {self.dim}")])
        return q

    def _search(self, q: _F32, k: int) -> tuple[_I64, _F32]:
        """:meth:`search` on validated queries, ``1 <= k <= live``."""
        labels, dist = self._native_search(q, k)
        rows = np.asarray(labels).reshape(q.shape[0], -1).astype(np.int64)
        scores = 1.0 - np.asarray(dist, dtype=np.float32).reshape(q.shape[0], -1)
        return rows, scores

    def query(
        self, vectors: npt.ArrayLike, k: int, *, exclude: Sequence[Collection[str]] | None = None
    ) -> list[list[tuple[str, float]]]:
        """Per query the top-``k`` ``(id, score)`` pairs, best first, without that query's excluded ids.

        The search beam holds ``ef`` candidates whatever ``k`` is, so a query with exclusions asks for
        ``k`` plus up to ``k`` more neighbours (never more than ``ef``: free, the beam is searched anyway)
        and keeps the first ``k`` that are not excluded, instead of asking for ``k + len(exclude)``
        (which would widen the beam to thousands for a heavy listener). A query still short of ``k``
        asks again, over-fetching by the share of excluded ids it met (at least twice as many), up to
        every live row. An exclusion that is a ``set``/``frozenset`` is used as it is (no copy per
        request).

        Validation costs next to nothing on the hot path: a float32 ``[q, dim]`` array is searched
        as it is (any layout), and non-finite values (which make every distance NaN or infinite) are
        caught on the results, then reported by the full check. A score is the inner product
        ``1.0 - distance`` as a Python float, the same in every path (single, batched, with exclusions);
        :meth:`search` gives the same values rounded to float32.

        Args:
            vectors: ``[q, dim]`` query vectors.
            k: Results per query (fewer only when the index has fewer non-excluded ids).
            exclude: One collection of ids per query (e.g. the tracks the user already played).

        Raises:
            InvalidInputError: Bad vectors (shape, dimension, NaN or infinite values), ``k`` or ``exclude``.
        """
        if (
            type(vectors) is np.ndarray
            and vectors.dtype is _F32_DTYPE  # any layout: the libraries copy to C order themselves
            and vectors.ndim == 2
            and vectors.shape[0] >= 1
            and vectors.shape[1] == self.dim
            and type(k) is int
            and k >= 1
        ):
            q: _F32 = vectors
        else:
            q = self._queries(vectors, "vectors")
            _check_k(k)
        n = q.shape[0]
        if exclude is not None and len(exclude) != n:
            raise InvalidInputError(_TASK, [FieldIssue("exclude", f"{len(exclude)} collections for {n} queries")])
        live = len(self.ids) - len(self._deleted)
        k = min(k, live)
        ids = self.ids
        if exclude is None or not any(exclude):
            # The hot path: one search, rows mapped to ids by C-level iteration, nothing per result
            # beyond the (id, score) tuple.
            labels, dist = self._native_search(q, k)
            if n == 1:
                # One query (the serving path): plain Python beats numpy's per-call overhead here.
                dists = dist[0].tolist()
                if not math.isfinite(sum(dists)):
                    self._queries(vectors, "vectors")  # names the bad rows (NaN or inf make the distances so)
                return [[(ids[r], 1.0 - d) for r, d in zip(labels[0].tolist(), dists, strict=True)]]
            all_scores = np.subtract(1.0, dist, dtype=np.float64).tolist()  # what 1.0 - d gives one by one
            out = []
            for found, scores in zip(self._id_array[labels].tolist(), all_scores, strict=True):
                if not math.isfinite(sum(scores)):
                    self._queries(vectors, "vectors")
                out.append(list(zip(found, scores, strict=True)))
            return out
        banned = [e if isinstance(e, set | frozenset) else set(e) for e in exclude]
        if n == 1:
            return [self._query_one_excluding(q, k, banned[0], live)]
        # First round: k plus up to k more for the excluded ones met on the way, never past the beam
        # (asking for up to ef results costs the search nothing); a query stops at its k-th kept id.
        want = [min(live, max(k, min(self._ef, k + min(len(b), k)))) for b in banned]
        result: list[list[tuple[str, float]]] = [[] for _ in range(n)]
        todo = list(range(n))
        while todo:
            sub = q if len(todo) == n else q[todo]
            labels, dist = self._native_search(sub, max(want[i] for i in todo))
            pending = []
            for i, rows, dists in zip(todo, labels.tolist(), dist.tolist(), strict=True):
                if not math.isfinite(sum(dists)):
                    self._queries(vectors, "vectors")
                ban = banned[i]
                kept: list[tuple[str, float]] = []
                for r, d in zip(rows, dists, strict=True):
                    t = ids[r]  # mapped lazily: most rows stop after k + a few
                    if t not in ban:
                        kept.append((t, 1.0 - d))
                        if len(kept) == k:
                            break
                if len(kept) >= k or want[i] >= live:
                    result[i] = kept
                else:
                    # Over-fetch by the excluded share met so far (at least twice as many), up to every live row.
                    need = int(np.ceil(k * len(rows) / max(1, len(kept)))) + 1
                    want[i] = min(live, max(2 * want[i], need))
                    pending.append(i)
            todo = pending
        return result

    def _query_one_excluding(self, q: _F32, k: int, ban: Collection[str], live: int) -> list[tuple[str, float]]:
        """:meth:`query` of one query with exclusions (the per-request serving path), without batch bookkeeping."""
        ids = self.ids
        want = min(live, max(k, min(self._ef, k + min(len(ban), k))))
        while True:
            labels, dist = self._native_search(q, want)
            rows, dists = labels[0].tolist(), dist[0].tolist()
            if not math.isfinite(sum(dists)):
                self._queries(q, "vectors")
            kept: list[tuple[str, float]] = []
            for r, d in zip(rows, dists, strict=True):
                t = ids[r]
                if t not in ban:
                    kept.append((t, 1.0 - d))
                    if len(kept) == k:
                        return kept
            if want >= live:
                return kept
            want = min(live, max(2 * want, int(np.ceil(k * len(rows) / max(1, len(kept)))) + 1))

    def _native_search(self, q: _F32, k: int) -> tuple[Any, Any]:
        """The library's raw (labels, distances) for validated queries, ``1 <= k <= live``."""
        ef = max(self._ef, k)  # both libraries need ef >= k to return k results
        if self.backend == "hnswlib":
            if ef != self._native_ef:
                self._native.set_ef(ef)
                self._native_ef = ef
            found: tuple[Any, Any]
            try:
                found = self._native.knn_query(q, k=k, num_threads=1)
            except RuntimeError:
                # With rows marked deleted the beam can end with fewer than k live rows: widen it to
                # every stored row (exhaustive), which always finds k of the live ones.
                self._native.set_ef(len(self.ids))
                self._native_ef = len(self.ids)
                found = self._native.knn_query(q, k=k, num_threads=1)
            return found
        labels, dist = self._native.query(q, k=k, num_threads=1, query_ef=ef)
        return np.asarray(labels).reshape(q.shape[0], -1), np.asarray(dist).reshape(q.shape[0], -1)

    # ------------------------------------------------------------------------------ incremental updates
    def _require_mutable(self) -> None:
        if self.backend != "hnswlib":
            raise InvalidInputError(
                _TASK, [FieldIssue("backend", f"{self.backend} has no in-place update here: rebuild the index")]
            )

    def update(self, vectors: npt.ArrayLike, ids: Sequence[str], *, num_threads: int = 1) -> UpdateReport:
        """Add new ids and replace the vectors of known ones (a deleted id comes back on its old row).

        New rows grow the index (``resize_index`` by at least a quarter, so repeated small updates do
        not copy the graph each time); known rows are updated in place and their graph links repaired
        by hnswlib.

        Raises:
            InvalidInputError: Bad vectors or ids (shape, non-finite values, empty or duplicated ids),
                or a backend without in-place updates (Voyager).
        """
        self._require_mutable()
        ids = list(ids)
        if not ids:
            return UpdateReport()
        x = _as_matrix(vectors, "vectors")
        _check_ids(ids, x.shape[0])
        if x.shape[1] != self.dim:
            raise InvalidInputError(_TASK, [FieldIssue("vectors", f"dim {x.shape[1]} != index dim {self.dim}")])
        rows = np.empty(len(ids), dtype=np.int64)
        new_ids: list[str] = []
        updated = restored = 0
        for j, item in enumerate(ids):
            row = self.row_of(item)
            if row is None:
                row = len(self.ids) + len(new_ids)
                new_ids.append(item)
            elif row in self._deleted:
                restored += 1
            else:
                updated += 1
            rows[j] = row
        need = len(self.ids) + len(new_ids)
        capacity = int(self._native.get_max_elements())
        if need > capacity:
            self._native.resize_index(max(need, capacity + capacity // 4))
        self._native.add_items(x, rows, num_threads=num_threads)
        if new_ids:
            assert self._row_of is not None  # built by row_of above
            for r, item in enumerate(new_ids, start=len(self.ids)):
                self._row_of[item] = r
            self.ids = (*self.ids, *new_ids)
            self._id_array = np.concatenate([self._id_array, np.array(new_ids, dtype=object)])
        self._deleted.difference_update(int(r) for r in rows)
        return UpdateReport(added=len(new_ids), updated=updated, restored=restored)

    def delete(self, ids: Collection[str]) -> UpdateReport:
        """Mark ``ids`` deleted: searches never return them again. Unknown or already deleted ids are ignored.

        Raises:
            InvalidInputError: The deletion would leave no live row, or a backend without deletes here.
        """
        self._require_mutable()
        rows = sorted({r for i in ids if (r := self.row_of(i)) is not None and r not in self._deleted})
        if len(rows) >= self.live:
            raise InvalidInputError(_TASK, [FieldIssue("ids", "deleting them would leave the index empty")])
        for r in rows:
            self._native.mark_deleted(r)
        self._deleted.update(rows)
        return UpdateReport(deleted=len(rows))

    def save(self, directory: Path) -> dict[str, str]:
        """Write ``index.bin`` (the backend's native format) and ``ids.json``.

        Returns:
            ``{file name: sha256}`` of both files.
        """
        directory.mkdir(parents=True, exist_ok=True)
        if self.backend == "hnswlib":
            self._native.save_index(str(directory / INDEX_FILE))
        else:
            self._native.save(str(directory / INDEX_FILE))
        meta: dict[str, Any] = {"backend": self.backend, "dim": self.dim, "ids": list(self.ids)}
        if self._deleted:
            meta["deleted"] = sorted(self._deleted)
        (directory / IDS_FILE).write_text(json.dumps(meta), "utf-8")
        return {n: sha256_file(directory / n) for n in (INDEX_FILE, IDS_FILE)}

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        ef: int | None = None,
        backend: str | None = None,
        dim: int | None = None,
        count: int | None = None,
    ) -> AnnIndex:
        """Load what :meth:`save` wrote; the id map says which backend and dimension.

        Args:
            directory: Holds ``index.bin`` and ``ids.json``.
            ef: ef_search to use (default: the backend's 10).
            backend: Expected backend, checked when given (e.g. from a manifest).
            dim: Expected dimension, checked when given.
            count: Expected number of vectors, checked when given.

        Raises:
            DataFormatError: A malformed id map or index, or one that disagrees with the expectations.
        """
        found_backend, found_dim, ids, deleted = _read_meta(directory)
        path = directory / INDEX_FILE
        expected = {"backend": backend, "dim": dim, "count": count}
        found: dict[str, object] = {"backend": found_backend, "dim": found_dim, "count": len(ids)}
        wrong = [
            f"{key} {found[key]!r} != expected {want!r}"
            for key, want in expected.items()
            if want is not None and found[key] != want
        ]
        if wrong:
            raise DataFormatError(str(directory / IDS_FILE), "; ".join(wrong))
        try:
            if found_backend == "hnswlib":
                import hnswlib

                # hnswlib takes the dimension from the caller, not the file: a wrong one would make it
                # read past each stored vector. The header's label and data offsets give the real one.
                with path.open("rb") as fh:
                    header = fh.read(48)
                if len(header) < 48:
                    raise ValueError("shorter than the hnswlib header")
                label_offset, data_offset = struct.unpack("<2Q", header[32:48])
                if label_offset - data_offset != 4 * found_dim:
                    raise ValueError(
                        f"it stores {(label_offset - data_offset) / 4:g}-dim vectors, id map says {found_dim}"
                    )
                native = hnswlib.Index(space="ip", dim=found_dim)
                native.load_index(str(path), max_elements=len(ids))
                n, native_dim = native.get_current_count(), native.dim
            else:
                import voyager

                native = voyager.Index.load(str(path))
                n, native_dim = len(native), native.num_dimensions
                if native.space != voyager.Space.InnerProduct:
                    raise ValueError(f"space {native.space}, not InnerProduct")
        except Exception as exc:  # the native loaders raise RuntimeError and friends on bad files
            raise DataFormatError(str(path), f"unreadable {found_backend} index: {exc}") from None
        if n != len(ids) or native_dim != found_dim:
            raise DataFormatError(str(path), f"index holds {n} x {native_dim}, id map {len(ids)} x {found_dim}")
        index = cls(found_backend, native, ids, found_dim, deleted)
        if ef is not None:
            index.set_ef(ef)
        return index


def _check_ids(ids: Sequence[str], rows: int) -> None:
    issues = []
    if len(ids) != rows:
        issues.append(FieldIssue("ids", f"{len(ids)} ids for {rows} vectors"))
    empty = sum(1 for i in ids if not isinstance(i, str) or not i)
    if empty:
        issues.append(FieldIssue("ids", f"{empty} id(s) are not non-empty strings"))
    elif len(set(ids)) != len(ids):
        issues.append(FieldIssue("ids", f"{len(ids) - len(set(ids))} duplicate id(s)"))
    if issues:
        raise InvalidInputError(_TASK, issues)


def build_index(vectors: npt.ArrayLike, ids: Sequence[str], config: IndexConfig) -> AnnIndex:
    """An HNSW inner-product index of ``vectors``; row ``i`` is ``ids[i]``.

    Args:
        vectors: ``[n, dim]`` L2-normalised float embeddings (finite).
        ids: ``n`` unique non-empty strings.
        config: Backend and graph parameters; ef_search starts at the ladder's first rung.

    Raises:
        InvalidInputError: Bad shape, non-finite rows, or ids that are missing, empty or duplicated.
    """
    x = _as_matrix(vectors, "vectors")
    ids = list(ids)
    _check_ids(ids, x.shape[0])
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


def tune_and_check(
    index: AnnIndex, vectors: npt.ArrayLike, queries: npt.ArrayLike, config: IndexConfig
) -> RecallReport:
    """Tune ef_search on real queries against exact search, set it on ``index`` and report recall@k.

    Samples up to ``config.sample_queries`` of ``queries`` (seeded), computes their exact top-k by
    brute force over ``vectors`` (the indexed vectors, same row order; rows marked deleted are left
    out), then walks
    ``config.ef_search_ladder`` and stops at the first ef reaching ``config.target_recall``. When no
    rung reaches it, the best rung is kept. ``passed`` means recall@k >= ``config.recall_floor``.

    Raises:
        InvalidInputError: ``vectors`` is not the indexed matrix's shape, or bad queries.
    """
    x = _as_matrix(vectors, "vectors")
    if x.shape != (index.size, index.dim):
        raise InvalidInputError(
            _TASK, [FieldIssue("vectors", f"shape {x.shape} is not the index's ({index.size}, {index.dim})")]
        )
    q = _as_matrix(queries, "queries")
    if q.shape[0] > config.sample_queries:
        rng = np.random.default_rng(config.seed)
        q = q[np.sort(rng.choice(q.shape[0], size=config.sample_queries, replace=False))]
    k = min(config.k, index.live)
    if index.live < index.size:  # rows marked deleted are not answers: exact search over the live rows
        live = index.live_rows()
        exact = live[exact_topk(q, x[live], k)]
    else:
        exact = exact_topk(q, x, k)
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
