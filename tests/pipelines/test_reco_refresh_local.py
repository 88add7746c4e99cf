"""reco-refresh end to end with kfp.local: after reco-training, a first refresh from the training index, a
second one updates in place (tracks added and removed), a rerun publishes no new version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from rich.console import Console

from aitasks.recommendation_update.index import exact_topk, recall_at_k
from aitasks.recommendation_update.publish import list_versions, load_current, read_pointer

# Full pipeline runs (minutes on 2 cores): `make test-all` and CI run them, `make test` does not.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

SMALL = {"events": 30_000, "dirty_rows": 0, "synthetic": {"users": 500, "tracks": 1_200}}
AS_OF = "2026-10-31T00:00:00+00:00"


def _refresh(work: Path, name: str, **params: Any) -> dict[str, Any]:
    from pipelines.demo import run_and_collect

    store = work / "store"
    outcome = run_and_collect(
        "reco-refresh",
        {"run_context": {"storage_root": str(store), "submitter": name}, "as_of": AS_OF, **params},
        work,
        Console(quiet=True),
    )
    assert outcome.run["failed"] == [], outcome.run
    return outcome.results


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from pipelines.demo import run_demo

    work = tmp_path_factory.mktemp("refresh")
    trained = run_demo(work, console=Console(quiet=True), **SMALL)
    assert trained["index"]["version"] == 1 and trained["model"]["champion"] == 1
    store = work / "store"
    # The events and catalog the training run ingested, as explicit inputs of the refreshes.
    [events] = list((store / "tasks" / "data.ingest").rglob("events.good.parquet"))
    [catalog] = list((store / "tasks" / "data.ingest").rglob("catalog.parquet"))
    inputs = store / "inputs"
    inputs.mkdir()
    pl.read_parquet(events).write_parquet(inputs / "events.parquet")
    cat = pl.read_parquet(catalog).sort("track_id")
    cat.write_parquet(inputs / "catalog.parquet")
    common = {"events_uri": str(inputs / "events.parquet")}
    first = _refresh(work, "refresh-1", catalog_uri=str(inputs / "catalog.parquet"), **common)

    # The catalog changes: 30 tracks leave, 24 arrive (copies of existing rows under new ids).
    removed = cat["track_id"].to_list()[:30]
    arrived = cat.slice(100, 24).with_columns(("new-" + pl.col("track_id")).alias("track_id"))
    pl.concat([cat.filter(~pl.col("track_id").is_in(removed)), arrived]).write_parquet(inputs / "catalog2.parquet")
    second = _refresh(work, "refresh-2", catalog_uri=str(inputs / "catalog2.parquet"), **common)
    again = _refresh(work, "refresh-3", catalog_uri=str(inputs / "catalog2.parquet"), **common)
    return {
        "store": store,
        "first": first,
        "second": second,
        "again": again,
        "removed": set(removed),
        "arrived": set(arrived["track_id"].to_list()),
    }


def test_first_refresh_starts_from_the_training_index(runs: dict[str, Any]) -> None:
    res = runs["first"]["index.refresh"]
    assert res["base_version"] == 1 and res["model_version"] == 1 and res["recall_at_k"] >= 0.95
    # The training index carries its track snapshot; the refresh reads features a day later than the
    # training set's split, so it updates in place or, past a threshold, rebuilds and says why.
    if res["mode"] == "rebuild":
        assert any("max_" in r for r in res["reasons"]), res["reasons"]
    else:
        assert res["reasons"] == [] and res["added"] == 0 and res["deleted"] == 0
    assert (runs["store"] / "indexes" / "reco-tracks" / "v1" / "tracks.parquet").is_file()
    assert runs["first"]["index.publish"]["version"] == 2 and runs["first"]["index.publish"]["created"] is True


def test_second_refresh_updates_in_place_and_never_returns_removed_tracks(runs: dict[str, Any]) -> None:
    res = runs["second"]["index.refresh"]
    assert res["mode"] == "incremental" and res["reasons"] == [] and res["base_version"] == 2
    assert res["added"] == 24 and res["deleted"] == 30 and res["updated"] == 0
    assert res["recall_at_k"] >= 0.95
    published = runs["second"]["index.publish"]
    assert published["version"] == 3 and published["created"] is True

    store = str(runs["store"])
    index, manifest, directory = load_current(store, "reco-tracks")
    assert manifest.version == 3 and manifest.model_version == 1
    assert index.live == index.size - 30 and runs["arrived"] <= set(index.ids)
    # Deleted tracks are never returned, even when the query is their own vector and k is large.
    tracks = pl.read_parquet(directory / "tracks.parquet")
    assert not set(tracks["track_id"].to_list()) & runs["removed"]
    live = index.live_rows()
    vecs = index.vectors(live)
    hits = index.query(vecs[:200], 200)
    assert not {i for row in hits for i, _ in row} & runs["removed"]
    # Recall of the published version against brute force over the live tracks, on other queries.
    rng = np.random.default_rng(0)
    q = vecs[rng.choice(len(vecs), 300, replace=False)] + 0.05 * rng.standard_normal((300, vecs.shape[1]))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    approx, _ = index.search(q, 10)
    assert recall_at_k(approx, live[exact_topk(q, vecs, 10)]) >= 0.95
    # The played pairs still travel with the version (serving filters them).
    assert (directory / "seen.parquet").is_file()


def test_a_rerun_publishes_nothing_new(runs: dict[str, Any]) -> None:
    again = runs["again"]
    # CURRENT moved (v2 -> v3) since the same inputs last ran, so the refresh runs again: it finds
    # nothing to change and hands over the current version's files, which publish as no new version.
    res = again["index.refresh"]
    assert res["mode"] == "incremental" and res["base_version"] == 3
    assert (res["added"], res["updated"], res["restored"], res["deleted"]) == (0, 0, 0, 0)
    # The bundle is byte for byte the one the second run published: the publish task's own key answers.
    published = again["index.publish"]
    assert published["version"] == 3
    assert published["status"] == "idempotent_hit" or published["created"] is False, published
    store = str(runs["store"])
    assert [m.version for m in list_versions(store, "reco-tracks")] == [1, 2, 3]
    pointer = read_pointer(store, "reco-tracks")
    assert pointer is not None and pointer.version == 3 and pointer.history == [1, 2]
