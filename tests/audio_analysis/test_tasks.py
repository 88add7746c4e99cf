"""The audio tasks on a crafted catalog: every bad kind quarantined with its reason, flags, Feast, report."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from threadpoolctl import threadpool_limits

from aitasks.audio_analysis import tasks as T
from aitasks.audio_analysis.analyze import AnalysisConfig, analyze_file, read_shard
from aitasks.audio_analysis.catalog import CatalogEntry
from aitasks.runtime.bundle import open_bundle
from aitasks.runtime.errors import InvalidInputError
from tests.audio_analysis import crafted
from tests.conftest import CapturedRuntime
from tests.data_processing.conftest import redis_server  # noqa: F401 - fixture


class World:
    def __init__(self, root: Path) -> None:
        self.cap = CapturedRuntime(root)
        self.cat = root / "catalog"
        self.good = crafted.good_files(self.cat)
        self.bad = crafted.bad_files(self.cat, root / "outside")
        self.flagged = crafted.flagged_files(self.cat)
        rt = self.cap.rt
        self.listing = T.list_catalog_task({"catalog_root": str(self.cat), "shards": 2}, runtime=rt)
        self.shards = [
            T.analyze_audio_task({"listing_uri": self.listing.listing_uri, "shard_index": i}, runtime=rt)
            for i in self.listing.shard_indices
        ]
        self.collected = T.collect_task({"shard_uris": [s.shard_uri for s in self.shards]}, runtime=rt)
        self.anomalies = T.anomalies_task({"analysis_uri": self.collected.analysis_uri}, runtime=rt)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("audio-tasks"))


def _bundle_tables(world: World, uri: str, kind: str) -> dict:
    with open_bundle(uri, world.cap.rt.storage, kind=kind) as (folder, _):
        return {p.stem: pq.read_table(p).to_pylist() for p in folder.glob("*.parquet")}


def test_every_bad_file_is_quarantined_with_its_reason_and_good_ones_are_analysed(world: World) -> None:
    tables = _bundle_tables(world, world.collected.analysis_uri, "audio_analysis")
    quarantine = {Path(r["uri"]).stem: r["reason"] for r in tables["quarantine"]}
    expected = {p.stem: reason for p, reason in world.bad.values()}
    assert quarantine == expected
    analysed = {r["track_id"] for r in tables["features"]}
    assert analysed == set(world.good) | {p.stem for p, _ in world.flagged.values()}
    assert world.collected.tracks == len(analysed)
    assert world.collected.quarantined == len(expected)
    assert sum(s.tracks for s in world.shards) == len(analysed)
    # Listing refusals (the symlink out) are reported once, by shard 0.
    assert world.shards[0].quarantine_reasons.get("unsafe_path") == 1
    assert all(s.quarantine_reasons.get("unsafe_path") is None for s in world.shards[1:])


def test_signal_rules_flag_exactly_the_planted_problems(world: World) -> None:
    tables = _bundle_tables(world, world.collected.analysis_uri, "audio_analysis")
    codes: dict[str, set[str]] = {}
    for r in tables["flags"]:
        codes.setdefault(r["track_id"] or Path(r["uri"]).stem, set()).add(r["code"])
    for name, (path, code) in world.flagged.items():
        assert code in codes.get(path.stem, set()), (name, codes.get(path.stem))
    for name in world.good:
        assert not codes.get(name, set()) - {"too_short"}, (name, codes.get(name))
    assert codes["nan_samples"] == {"nan"}
    assert codes["zero_bytes"] == {"undecodable"}
    reasons = {r["track_id"]: r["reason"] for r in tables["flags"] if r["code"] == "clipping"}
    assert "clip" in reasons["clipping"].lower()


def test_features_of_a_track_equal_a_direct_analysis(world: World) -> None:
    with open_bundle(world.collected.analysis_uri, world.cap.rt.storage, kind="audio_analysis") as (folder, _):
        shard = read_shard(folder)
    ids = shard.features.column("track_id").to_pylist()
    row = shard.matrix()[ids.index("good_flac")]
    path = world.good["good_flac"]
    entry = CatalogEntry(track_id="good_flac", key="x", uri=str(path), size=1)
    with threadpool_limits(limits=1):  # as in the pool's workers: bitwise-equal results
        direct = analyze_file(path, entry, AnalysisConfig())
    assert direct.features is not None
    np.testing.assert_array_equal(row, direct.features)
    assert np.isfinite(shard.matrix()).all()
    assert set(shard.fingerprints) == set(ids)
    assert shard.spectrograms["good_flac"].shape[0] == 64


def test_rerun_is_an_idempotent_hit_and_a_new_file_makes_a_new_listing(world: World, tmp_path: Path) -> None:
    rt = world.cap.rt
    again = T.list_catalog_task({"catalog_root": str(world.cat), "shards": 2}, runtime=rt)
    assert again == world.listing
    shard = T.analyze_audio_task({"listing_uri": again.listing_uri, "shard_index": 0}, runtime=rt)
    assert shard == world.shards[0]
    records = list(json.loads("[" + ",".join(world.cap.log_text().splitlines()) + "]"))
    assert any(r.get("event") == "task.idempotent_hit" for r in records)
    extra = crafted.write(world.cat / "good" / "late_arrival.wav", crafted.music(11, seed=99))
    try:
        changed = T.list_catalog_task({"catalog_root": str(world.cat), "shards": 2}, runtime=rt)
        assert changed.listing_uri != world.listing.listing_uri
        assert changed.tracks == world.listing.tracks + 1
    finally:
        extra.unlink()


def test_shard_index_out_of_range_is_a_clear_input_error(world: World) -> None:
    with pytest.raises(InvalidInputError, match="shard_index"):
        T.analyze_audio_task({"listing_uri": world.listing.listing_uri, "shard_index": 7}, runtime=world.cap.rt)


def test_outliers_and_duplicates_are_found_and_explained(tmp_path: Path) -> None:
    cap = CapturedRuntime(tmp_path)
    cat = tmp_path / "cat"
    for i in range(14):
        crafted.write(cat / f"t{i:02d}.flac", crafted.music(12, seed=100 + i))
    # A re-encode of t00 (OGG, -5 dB, trimmed) is a near-duplicate; a pure-noise track is an outlier.
    y0 = crafted.music(12, seed=100)
    crafted.write(cat / "copy_of_t00.ogg", y0[int(0.4 * crafted.SR) :] * 0.56)
    noise = np.random.default_rng(5).standard_normal(12 * crafted.SR).astype(np.float32) * 0.3
    crafted.write(cat / "white_noise.flac", noise)
    rt = cap.rt
    listing = T.list_catalog_task({"catalog_root": str(cat), "shards": 1}, runtime=rt)
    shard = T.analyze_audio_task({"listing_uri": listing.listing_uri}, runtime=rt)
    analysis = T.collect_task({"shard_uris": [shard.shard_uri]}, runtime=rt)
    res = T.anomalies_task({"analysis_uri": analysis.analysis_uri, "contamination": 0.07}, runtime=rt)
    assert res.duplicate_pairs == 1
    with open_bundle(res.anomalies_uri, rt.storage, kind="audio_anomalies") as (folder, _):
        [pair] = pq.read_table(folder / "duplicates.parquet").to_pylist()
        outliers = pq.read_table(folder / "outliers.parquet").to_pylist()
    assert {pair["a"], pair["b"]} == {"t00", "copy_of_t00"}
    ranked = sorted(outliers, key=lambda r: -r["score"])
    assert ranked[0]["track_id"] == "white_noise" and ranked[0]["is_outlier"]
    assert json.loads(ranked[0]["top_features"]), "an outlier names the features that make it one"


def test_feast_track_audio_view_is_written_and_served(world: World) -> None:
    from aitasks.audio_analysis.feature_store import read_track_audio, track_audio_config
    from aitasks.runtime.storage import join_uri

    rt = world.cap.rt
    preds = join_uri(str(world.cap.root), "preds.parquet")
    import pyarrow as pa

    pq.write_table(
        pa.table(
            {
                "track_id": list(world.good),
                "label": ["tonal"] * len(world.good),
                "confidence": pa.array([0.9] * len(world.good), pa.float32()),
                "probabilities": ["{}"] * len(world.good),
            }
        ),
        preds,
    )
    params = {
        "analysis_uri": world.collected.analysis_uri,
        "anomalies_uri": world.anomalies.anomalies_uri,
        "predictions_uri": preds,
        "project": "audiotest",
        "as_of": "2026-11-24T00:00:00Z",
    }
    res = T.feast_write_task(params, runtime=rt)
    assert res.rows_written == world.collected.tracks and res.rows_total == res.rows_written
    cfg = track_audio_config(rt.settings, project="audiotest")
    got = read_track_audio(cfg, ["good_wav", "clipping", "nope"], ["tempo_bpm", "audio_class", "anomaly_flags"])
    assert got["audio_class"] == ["tonal", "", None]
    assert got["anomaly_flags"][1] >= 1 and got["anomaly_flags"][0] == 0
    assert 60 < got["tempo_bpm"][0] < 200
    # A later analysis appends; the same analysis time again does not duplicate rows.
    later = T.feast_write_task({**params, "as_of": "2026-11-25T00:00:00Z"}, runtime=rt)
    assert later.rows_total == 2 * res.rows_written
    from aitasks.audio_analysis.feature_store import write_track_audio

    with open_bundle(world.collected.analysis_uri, rt.storage, kind="audio_analysis") as (folder, _):
        shard = read_shard(folder)
    ids = shard.features.column("track_id").to_pylist()
    from aitasks.audio_analysis.feature_store import AUDIO_FEATURES

    again = write_track_audio(
        cfg,
        track_ids=ids,
        features={n: shard.features.column(n).to_numpy() for n in AUDIO_FEATURES},
        classes={},
        flag_counts={},
        event_time=datetime(2026, 11, 25, tzinfo=UTC),
    )
    assert again.rows_total == later.rows_total


@pytest.mark.integration
def test_feast_track_audio_on_redis(world: World, redis_server: str, tmp_path: Path) -> None:  # noqa: F811
    from aitasks.audio_analysis.feature_store import (
        AUDIO_FEATURES,
        read_track_audio,
        track_audio_config,
        write_track_audio,
    )
    from aitasks.runtime.settings import Settings

    settings = Settings(storage_root=str(tmp_path / "store"), redis_url=redis_server, feast_online_store="redis")
    cfg = track_audio_config(settings, project="audioredis")
    with open_bundle(world.collected.analysis_uri, world.cap.rt.storage, kind="audio_analysis") as (folder, _):
        shard = read_shard(folder)
    ids = shard.features.column("track_id").to_pylist()
    feats = {n: shard.features.column(n).to_numpy() for n in AUDIO_FEATURES}
    rep = write_track_audio(
        cfg,
        track_ids=ids,
        features=feats,
        classes={ids[0]: ("drums", 0.7)},
        flag_counts={},
        event_time=datetime.now(UTC),
    )
    assert rep.online_store == "redis" and rep.entities_materialized == len(ids)
    got = read_track_audio(cfg, ids[:2], ["loudness_lufs", "audio_class"])
    assert got["audio_class"] == ["drums", ""]
    np.testing.assert_allclose(got["loudness_lufs"], feats["loudness_lufs"][:2], rtol=1e-6)


def test_non_finite_features_are_refused_before_feast(world: World) -> None:
    from aitasks.audio_analysis.feature_store import AUDIO_FEATURES, track_audio_config, write_track_audio
    from aitasks.runtime.errors import DataFormatError

    cfg = track_audio_config(world.cap.rt.settings, project="audiobad")
    feats = {n: [1.0, 2.0] for n in AUDIO_FEATURES}
    feats["tempo_bpm"] = [1.0, float("nan")]
    with pytest.raises(DataFormatError, match=r"tempo_bpm is not finite for track 'b'"):
        write_track_audio(
            cfg, track_ids=["a", "b"], features=feats, classes={}, flag_counts={}, event_time=datetime.now(UTC)
        )


def test_report_is_self_contained_html(world: World) -> None:
    import pyarrow as pa

    from aitasks.runtime.storage import join_uri

    preds = join_uri(str(world.cap.root), "preds-report.parquet")
    pq.write_table(
        pa.table(
            {
                "track_id": ["good_wav"],
                "label": ["tonal"],
                "confidence": pa.array([0.9], pa.float32()),
                "probabilities": ["{}"],
            }
        ),
        preds,
    )
    res = T.report_task(
        {
            "analysis_uri": world.collected.analysis_uri,
            "anomalies_uri": world.anomalies.anomalies_uri,
            "predictions_uri": preds,
            "title": "Crafted <catalog>",
        },
        runtime=world.cap.rt,
    )
    html = Path(res.report_uri).read_text("utf-8")
    assert "Crafted &lt;catalog&gt;" in html
    assert "data:image/png;base64," in html and "<svg" in html
    assert "too_many_channels" in html and "unsafe_path" in html
    assert res.quarantined == world.collected.quarantined


def test_rule_thresholds_are_task_inputs(world: World) -> None:
    rt = world.cap.rt
    strict = T.analyze_audio_task(
        {"listing_uri": world.listing.listing_uri, "shard_index": 0, "rules": {"min_duration_s": 60.0}}, runtime=rt
    )
    assert strict.shard_uri != world.shards[0].shard_uri, "new thresholds, new key"
    tables = _bundle_tables(world, strict.shard_uri, "audio_shard")
    analysed = {r["track_id"] for r in tables["features"]}
    short = {r["track_id"] for r in tables["flags"] if r["code"] == "too_short"}
    assert short == analysed, "every 12 s track is under a 60 s minimum"
    with pytest.raises(InvalidInputError, match="rules"):
        T.analyze_audio_task({"listing_uri": world.listing.listing_uri, "rules": {"min_duration_s": -1}}, runtime=rt)
