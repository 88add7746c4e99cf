"""Index refresh: incremental update vs rebuild thresholds, catalog diff, damaged previous versions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from aitasks.recommendation_update.index import AnnIndex, IndexConfig, IndexQualityError, exact_topk, recall_at_k
from aitasks.recommendation_update.publish import list_versions, publish_index, read_pointer
from aitasks.recommendation_update.refresh import (
    Previous,
    RefreshConfig,
    RefreshReport,
    diff_catalog,
    merge_seen,
    open_previous,
    refresh_index,
    write_version_files,
)
from aitasks.runtime.errors import DataFormatError, InvalidInputError
from tests.recommendation_update.test_index import clustered

DIM = 16
COLS = [f"f{i}" for i in range(DIM)]


def catalog(vectors: np.ndarray, ids: list[str]) -> pl.DataFrame:
    """A track frame whose tower inputs are the vector's coordinates (the test embedder normalises them)."""
    return pl.DataFrame({"track_id": ids, **{c: vectors[:, i].astype(np.float64) for i, c in enumerate(COLS)}})


def embed(frame: pl.DataFrame) -> np.ndarray:
    x = frame.select(COLS).to_numpy().astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


CFG = RefreshConfig(index=IndexConfig(num_threads=2, m=16, ef_construction=200))


@pytest.fixture(scope="module")
def world() -> dict[str, object]:
    x = clustered(6_600, DIM, seed=21)
    return {"items": x[:6_000], "extra": x[6_000:6_200], "queries": x[6_200:6_300], "holdout": x[6_300:]}


def _first(world: dict[str, object]) -> tuple[AnnIndex, RefreshReport, pl.DataFrame]:
    items = world["items"]
    assert isinstance(items, np.ndarray)
    cat = catalog(items, [f"t{i:05d}" for i in range(len(items))])
    index, report = refresh_index(cat, embed, world["queries"], CFG, model_version=1)  # type: ignore[arg-type]
    return index, report, cat


def _previous(report: RefreshReport, version: int = 1, model_version: int = 1) -> Previous:
    return Previous(
        version=version,
        model_version=model_version,
        backend="hnswlib",
        m=16,
        ef_construction=200,
        recall_at_k=report.recall_at_k,
        build_recall_at_k=report.build_recall_at_k,
    )


def test_first_refresh_builds_and_reaches_recall(world: dict[str, object]) -> None:
    _, report, _ = _first(world)
    assert report.mode == "rebuild" and report.reasons == ["no published index yet"]
    assert report.live == 6_000 and report.recall_at_k >= 0.95


def test_incremental_update_adds_updates_deletes_and_keeps_recall(world: dict[str, object]) -> None:
    index, first, cat = _first(world)
    extra = world["extra"]
    assert isinstance(extra, np.ndarray)
    # 100 new tracks, 30 with changed features, 40 gone from the catalog.
    changed_ids = [f"t{i:05d}" for i in range(1_000, 1_030)]
    rng = np.random.default_rng(3)
    moved = catalog(clustered(30, DIM, seed=99), changed_ids)
    today = pl.concat(
        [
            cat.filter(~pl.col("track_id").is_in(changed_ids)).slice(40),
            moved,
            catalog(extra[:100], [f"n{i:05d}" for i in range(100)]),
        ]
    ).sample(fraction=1.0, shuffle=True, seed=int(rng.integers(1 << 30)))
    gone = set(cat["track_id"].to_list()[:40])
    index2, report = refresh_index(
        today, embed, world["queries"], CFG, previous=_previous(first), index=index, snapshot=cat, model_version=1
    )  # type: ignore[arg-type]
    assert report.mode == "incremental" and report.reasons == []
    assert (report.added, report.updated, report.deleted, report.restored) == (100, 30, 40, 0)
    assert report.unchanged == today.height - 130 and report.base_version == 1
    assert index2 is index and index2.live == 6_060 and index2.size == 6_100
    # The changed tracks carry their new vectors; the deleted ones are never returned.
    np.testing.assert_allclose(index2.vectors([index2.row_of(t) for t in changed_ids]), embed(moved), atol=1e-6)  # type: ignore[misc]
    hits = index2.query(embed(cat.filter(pl.col("track_id").is_in(list(gone)))), 50)
    assert not {i for row in hits for i, _ in row} & gone
    # Recall against brute force over today's catalog, on queries the check did not use.
    q = world["holdout"]
    assert isinstance(q, np.ndarray)
    vecs = embed(today)
    ids = today["track_id"].to_list()
    approx = np.array([[ids.index(i) for i, _ in row] for row in index2.query(q, 10)])
    assert recall_at_k(approx, exact_topk(q, vecs, 10)) >= 0.95
    assert report.recall_at_k >= 0.95 and report.recall_drift <= CFG.max_recall_drift


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("deleted", "max_deleted_fraction"),
        ("changed", "max_changed_fraction"),
        ("drift", "max_recall_drift"),
        ("champion", "champion changed"),
        ("force", "force_rebuild"),
        ("snapshot", "no track snapshot"),
        ("columns", "tower inputs changed"),
    ],
)
def test_thresholds_and_changes_trigger_a_rebuild(world: dict[str, object], case: str, reason: str) -> None:
    index, first, cat = _first(world)
    cfg, today, snapshot, model_version = CFG, cat, cat, 1
    previous = _previous(first)
    if case == "deleted":
        cfg = CFG.model_copy(update={"max_deleted_fraction": 0.1})
        today = cat.slice(700)  # 700 of 6,000 gone: 11.7 %
    elif case == "changed":
        cfg = CFG.model_copy(update={"max_changed_fraction": 0.05})
        today = pl.concat([cat.slice(400), catalog(clustered(400, DIM, seed=7), cat["track_id"].to_list()[:400])])
    elif case == "drift":
        # A baseline no index reaches and no tolerance: the update's recall is a drift.
        cfg = CFG.model_copy(update={"max_recall_drift": 0.0})
        previous = previous.model_copy(update={"build_recall_at_k": 1.0})
        today = cat.slice(10)
    elif case == "champion":
        model_version = 2
    elif case == "force":
        cfg = CFG.model_copy(update={"force_rebuild": True})
    elif case == "snapshot":
        snapshot = None  # type: ignore[assignment]
    elif case == "columns":
        snapshot = cat.drop("f3")
    rebuilt, report = refresh_index(
        today,
        embed,
        world["queries"],
        cfg,
        previous=previous,
        index=index,
        snapshot=snapshot,
        model_version=model_version,
    )  # type: ignore[arg-type]
    assert report.mode == "rebuild", report
    assert any(reason in r for r in report.reasons), report.reasons
    assert rebuilt is not index and rebuilt.size == rebuilt.live == today.height and rebuilt.deleted_fraction == 0
    assert report.recall_at_k >= 0.95 and report.build_recall_at_k == report.recall_at_k


def test_below_the_thresholds_no_rebuild(world: dict[str, object]) -> None:
    index, first, cat = _first(world)
    today = cat.slice(500)  # 500 of 6,000 gone: 8.3 % < 20 %
    _, report = refresh_index(
        today, embed, world["queries"], CFG, previous=_previous(first), index=index, snapshot=cat, model_version=1
    )  # type: ignore[arg-type]
    assert report.mode == "incremental" and report.deleted == 500
    assert abs(report.deleted_fraction - 500 / 6_000) < 1e-9


def test_a_track_that_comes_back_reuses_its_row(world: dict[str, object]) -> None:
    index, first, cat = _first(world)
    without = cat.slice(5)
    _, r1 = refresh_index(
        without, embed, world["queries"], CFG, previous=_previous(first), index=index, snapshot=cat, model_version=1
    )  # type: ignore[arg-type]
    _, r2 = refresh_index(
        cat, embed, world["queries"], CFG, previous=_previous(r1, 2), index=index, snapshot=without, model_version=1
    )  # type: ignore[arg-type]
    assert (r1.deleted, r2.restored, r2.added) == (5, 5, 0) and index.live == index.size == 6_000


def test_bad_catalogs_are_refused(world: dict[str, object]) -> None:
    _, _, cat = _first(world)
    with pytest.raises(InvalidInputError, match="duplicate track id"):
        refresh_index(pl.concat([cat, cat.head(3)]), embed, world["queries"], CFG, model_version=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="no tracks"):
        refresh_index(cat.head(0), embed, world["queries"], CFG, model_version=1)  # type: ignore[arg-type]


def test_a_rebuild_below_the_floor_publishes_nothing(world: dict[str, object]) -> None:
    cfg = RefreshConfig(
        index=IndexConfig(ef_search_ladder=(1,), m=2, ef_construction=8, recall_floor=0.999, target_recall=0.999)
    )
    _, _, cat = _first(world)
    with pytest.raises(IndexQualityError, match="below the floor"):
        refresh_index(cat, embed, world["queries"], cfg, model_version=1)  # type: ignore[arg-type]


def test_diff_is_null_aware() -> None:
    prev = pl.DataFrame({"track_id": ["a", "b", "c"], "x": [1.0, None, 3.0]})
    cur = pl.DataFrame({"track_id": ["a", "b", "c", "d"], "x": [1.0, None, 4.0, 5.0]})
    diff = diff_catalog(prev, cur, {"a", "b", "c"})
    assert (diff.new, diff.changed, diff.removed, diff.unchanged) == (["d"], ["c"], [], 2)
    # A track deleted from the index but still in the snapshot is new again.
    assert diff_catalog(prev, cur, {"a", "c"}).new == ["b", "d"]


def test_merge_seen_keeps_every_pair() -> None:
    prev = pl.DataFrame({"user_id": ["u1"], "track_id": ["a"], "plays": [5]})
    events = pl.DataFrame({"user_id": ["u1", "u1", "u2"], "track_id": ["a", "b", "a"]})
    got = merge_seen(prev, events)
    assert got.rows() == [("u1", "a", 5), ("u1", "b", 1), ("u2", "a", 1)]


# ------------------------------------------------------------------------------ previous version on disk
def _publish(root: Path, index: AnnIndex, report: RefreshReport, cat: pl.DataFrame, tmp: Path) -> int:
    out = tmp / f"src{len(list(tmp.iterdir()))}"
    seen = pl.DataFrame({"user_id": ["u1"], "track_id": [cat["track_id"][0]], "plays": [1]})
    write_version_files(out, index, report, tracks=cat, seen=seen)
    res = publish_index(
        str(root),
        "reco-tracks",
        out,
        backend="hnswlib",
        dim=index.dim,
        m=16,
        ef_construction=200,
        ef_search=report.ef_search,
        recall_at_k=report.recall_at_k,
        k=report.k,
        model_name="reco-two-tower",
        model_version=1,
    )
    return res.version


def test_open_previous_reads_what_a_refresh_published(world: dict[str, object], tmp_path: Path) -> None:
    index, report, cat = _first(world)
    root, work = tmp_path / "root", tmp_path / "work"
    work.mkdir()
    assert open_previous(str(root), "reco-tracks", force_rebuild=False) is None  # nothing published yet
    assert _publish(root, index, report, cat, work) == 1
    prev = open_previous(str(root), "reco-tracks", force_rebuild=False)
    assert prev is not None and prev.previous.version == 1 and prev.previous.build_recall_at_k == report.recall_at_k
    assert prev.snapshot is not None and prev.snapshot.equals(cat.sort("track_id"))
    assert prev.seen is not None and prev.seen.height == 1 and prev.index.live == 6_000


@pytest.mark.parametrize("damage", ["index.bin", "tracks.parquet", "missing", "pointer"])
def test_a_damaged_current_version_is_a_clear_error_and_nothing_is_published(
    world: dict[str, object], tmp_path: Path, damage: str
) -> None:
    index, report, cat = _first(world)
    root, work = tmp_path / "root", tmp_path / "work"
    work.mkdir()
    _publish(root, index, report, cat, work)
    version_dir = root / "indexes" / "reco-tracks" / "v1"
    if damage == "index.bin":
        raw = (version_dir / "index.bin").read_bytes()
        (version_dir / "index.bin").write_bytes(raw[: len(raw) // 2])  # a torn copy
    elif damage == "tracks.parquet":
        (version_dir / "tracks.parquet").write_bytes(b"PAR1 not really")
    elif damage == "missing":
        (version_dir / "seen.parquet").unlink()
    else:
        (root / "indexes" / "reco-tracks" / "CURRENT").write_text("{half a pointer")
    before = sorted(p.name for p in (root / "indexes" / "reco-tracks").iterdir())
    with pytest.raises(DataFormatError) as info:
        open_previous(str(root), "reco-tracks", force_rebuild=False)
    message = str(info.value)
    assert "damaged" in message and "aitasks index rollback reco-tracks" in message and "force_rebuild" in message
    if damage != "pointer":
        assert damage.replace("missing", "seen.parquet") in message  # names the file
    # Nothing changed under the index: no new version, no temp directory, the same CURRENT.
    assert sorted(p.name for p in (root / "indexes" / "reco-tracks").iterdir()) == before
    if damage != "pointer":
        pointer = read_pointer(str(root), "reco-tracks")
        assert pointer is not None and pointer.version == 1
        assert [m.version for m in list_versions(str(root), "reco-tracks")] == [1]
    # force_rebuild goes past it (the refresh then rebuilds from the catalog).
    assert open_previous(str(root), "reco-tracks", force_rebuild=True) is None


def test_refresh_record_is_the_drift_baseline(world: dict[str, object], tmp_path: Path) -> None:
    index, report, cat = _first(world)
    root, work = tmp_path / "root", tmp_path / "work"
    work.mkdir()
    _publish(root, index, report.model_copy(update={"build_recall_at_k": 0.991}), cat, work)
    prev = open_previous(str(root), "reco-tracks", force_rebuild=False)
    assert prev is not None and prev.previous.build_recall_at_k == 0.991
    record = json.loads((root / "indexes" / "reco-tracks" / "v1" / "refresh.json").read_text())
    assert record["mode"] == "rebuild" and record["build_recall_at_k"] == 0.991


def test_a_refresh_that_changes_nothing_publishes_no_new_version(world: dict[str, object], tmp_path: Path) -> None:
    from aitasks.recommendation_update.refresh import reuse_version_files, unchanged

    index, report, cat = _first(world)
    root, work = tmp_path / "root", tmp_path / "work"
    work.mkdir()
    _publish(root, index, report, cat, work)
    prev = open_previous(str(root), "reco-tracks", force_rebuild=False)
    assert prev is not None and prev.seen is not None
    _, again = refresh_index(
        cat,
        embed,
        world["queries"],
        CFG,
        previous=prev.previous,
        index=prev.index,
        snapshot=prev.snapshot,
        model_version=1,
    )  # type: ignore[arg-type]
    assert unchanged(again)
    reuse_version_files(prev, work / "again", seen=prev.seen)
    res = publish_index(
        str(root),
        "reco-tracks",
        work / "again",
        backend="hnswlib",
        dim=DIM,
        m=16,
        ef_construction=200,
        ef_search=prev.ef_search,
        recall_at_k=prev.previous.recall_at_k,
        k=prev.k,
        model_name="reco-two-tower",
        model_version=1,
    )
    assert (res.version, res.created) == (1, False)
    # New plays alone make a version that differs by its played pairs only.
    more = pl.concat([prev.seen, pl.DataFrame({"user_id": ["u9"], "track_id": ["t00001"], "plays": [1]})])
    reuse_version_files(prev, work / "more", seen=more)
    v1 = root / "indexes" / "reco-tracks" / "v1"
    for name in ("index.bin", "ids.json", "tracks.parquet", "refresh.json"):
        assert (work / "more" / name).read_bytes() == (v1 / name).read_bytes(), name
    assert pl.read_parquet(work / "more" / "seen.parquet").height == 2
