"""data-pipeline end to end with kfp.local on small synthetic data, then again: idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from aitasks.runtime.audit import AuditLog


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from pipelines.demo import run_demo

    work = tmp_path_factory.mktemp("demo")
    summary = run_demo(work, events=20_000)
    return work, summary


def test_pipeline_runs_end_to_end(demo_run: tuple[Path, dict]) -> None:
    work, summary = demo_run
    assert set(summary["tasks"]) == {"data.source", "data.ingest", "data.features", "feast.materialize", "data.drift"}
    ing = summary["ingest"]
    assert ing["input_rows"] == 20_000 == ing["good_rows"] + ing["quarantined_rows"]
    assert summary["features"]["user_rows"] > 0 and summary["features"]["snapshots"] >= 28
    assert summary["feast"]["online_sample"]["features"] > 0
    assert summary["audit"]["verified"] is True
    assert json.loads((work / "summary.json").read_text())["ingest"] == ing


def test_every_step_audited_with_one_trace_and_run_context(demo_run: tuple[Path, dict]) -> None:
    work, _ = demo_run
    records = [r for r in AuditLog(work / "store" / "audit").records() if r["status"] == "succeeded"]
    assert {r["task"] for r in records} == {
        "data.source",
        "data.ingest",
        "data.features",
        "feast.materialize",
        "data.drift",
    }
    assert len({r["run_id"] for r in records}) == 1, "all steps carry the KFP job id"
    assert len({r["trace_id"] for r in records}) == 1, "all steps share the trace derived from the run id"
    assert {r["actor"] for r in records} == {"make-demo"}
    assert all(r["step"] for r in records), "the KFP task name reaches every step"


def test_feature_files_are_point_in_time_snapshots(demo_run: tuple[Path, dict]) -> None:
    work, _ = demo_run
    [users] = list((work / "store" / "tasks" / "data.features").rglob("user_features.parquet"))
    df = pl.read_parquet(users)
    assert df["event_timestamp"].dt.hour().max() == 0, "daily snapshots at 00:00 UTC"


def test_second_run_is_idempotent(demo_run: tuple[Path, dict]) -> None:
    from pipelines.demo import run_demo

    work, first = demo_run
    second = run_demo(work, events=20_000)
    assert second["tasks"] == dict.fromkeys(first["tasks"], "idempotent_hit")
    assert second["ingest"] == first["ingest"]
