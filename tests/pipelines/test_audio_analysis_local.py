"""audio-analysis end to end with kfp.local on a small generated catalog, judged against its truth; then again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aitasks.runtime.audit import AuditLog

# Full pipeline runs (a minute or more on 2 cores): `make test-all` and CI run them, `make test` does not.
pytestmark = pytest.mark.slow

SMALL = {
    "synthetic": {"tracks": 12, "min_seconds": 12.0, "max_seconds": 16.0, "labelled_per_class": 16},
    "classifier": {"epochs": 15},
    "analysis": {"shards": 3},
    # Who ran what: the uploaded version and the revision reach every task's audit record.
    "run_context": {"pipeline_version": "3f2a9c1d0e4b-0123456789ab", "git_revision": "0123456789abcdef"},
}


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from pipelines.audio_demo import run_audio_demo

    work = tmp_path_factory.mktemp("audio-demo")
    return work, run_audio_demo(work, **SMALL)


def test_pipeline_runs_end_to_end_and_finds_the_planted_problems(audio_run: tuple[Path, dict]) -> None:
    _, s = audio_run
    assert s["failed"] == [] and set(s["tasks"].values()) == {"succeeded"}
    cat = s["catalog"]
    planted = cat["planted"]
    # 12 good tracks + duplicate + silence + clipping analysed; 4 broken files quarantined with their reason.
    assert cat["tracks_analysed"] == 15
    assert cat["quarantined"] == {"empty": 1, "non_finite": 1, "truncated": 1, "unknown_format": 1}
    assert sorted(v for v in planted.values() if v in cat["quarantined"]) == sorted(cat["quarantined"])
    an = s["anomalies"]
    [dup_id] = [k for k, v in planted.items() if v.startswith("duplicate:")]
    assert an["duplicate_pairs"] == [[planted[dup_id].split(":")[1], dup_id]]
    assert an["flags_by_code"]["silence"] >= 1 and an["flags_by_code"]["clipping"] >= 1
    assert an["flags_by_code"]["undecodable"] == 3 and an["flags_by_code"]["nan"] == 1


def test_classifier_beats_chance_and_is_registered(audio_run: tuple[Path, dict]) -> None:
    _, s = audio_run
    clf = s["classifier"]
    assert clf["test_accuracy"] >= 0.6 > clf["chance"] * 2
    assert clf["registered"] == "audio-classifier v1" and clf["champion"] is True
    assert clf["catalog_agreement_with_truth"] >= 0.5


def test_features_reach_feast_and_the_report_is_written(audio_run: tuple[Path, dict]) -> None:
    from aitasks.audio_analysis.feature_store import read_track_audio, track_audio_config
    from aitasks.runtime.settings import Settings

    work, s = audio_run
    assert s["feast"]["rows_written"] == 15
    cfg = track_audio_config(Settings(storage_root=str(work / "store")), project="aitasks")
    got = read_track_audio(cfg, ["t_000001"], ["tempo_bpm", "loudness_lufs", "audio_class"])
    assert got["audio_class"][0] in {"drums", "tonal", "noise", "speech"}
    assert -20 < got["loudness_lufs"][0] < -5, "demo tracks are mastered to -16..-9 LUFS"
    html = Path(s["report_html"]).read_text("utf-8")
    assert "<svg" in html and "data:image/png;base64," in html and "truncated" in html


def test_every_step_is_audited_with_one_trace(audio_run: tuple[Path, dict]) -> None:
    work, s = audio_run
    records = [r for r in AuditLog(work / "store" / "audit").records() if r["status"] == "succeeded"]
    assert {r["task"] for r in records} == set(s["tasks"])
    assert len([r for r in records if r["task"] == "audio.analyze"]) == 3, "one analysis per shard"
    assert len({r["trace_id"] for r in records}) == 1 and len({r["run_id"] for r in records}) == 1
    assert {r["pipeline_version"] for r in records} == {SMALL["run_context"]["pipeline_version"]}
    assert {r["git_revision"] for r in records} == {SMALL["run_context"]["git_revision"]}
    assert {r["submitter"] for r in records} == {"make-demo"} and {r["pipeline"] for r in records} == {"audio-analysis"}
    assert s["audit"]["verified"] is True
    assert json.loads((work / "audio-summary.json").read_text())["catalog"] == s["catalog"]


def test_second_run_is_idempotent(audio_run: tuple[Path, dict]) -> None:
    from pipelines.audio_demo import run_audio_demo

    work, first = audio_run
    second = run_audio_demo(work, **SMALL)
    redone = {t for t, st in second["tasks"].items() if st != "idempotent_hit"}
    assert redone <= {"audio.register_classifier", "audio.feast_write", "run.summary"}, second["tasks"]
    assert second["classifier"]["registered"] == "audio-classifier v1"
    assert second["feast"]["rows_total"] == first["feast"]["rows_total"], "no duplicated Feast rows"
