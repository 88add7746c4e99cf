"""`python -m bench`: the list of benches, subsets, merging into latest.json, the report page."""

from __future__ import annotations

import importlib
import io
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from bench import __main__ as runner
from bench.common import make_reference, record, service_problem


def test_every_bench_entry_names_a_real_function_and_a_unique_label() -> None:
    labels = [b.label for b in runner.BENCHES]
    assert len(labels) == len(set(labels))
    for b in runner.BENCHES:
        assert callable(getattr(importlib.import_module(b.module), b.function)), b
        assert b.needs in (None, "redis", "rabbitmq", "postgres"), b


def test_only_selects_in_list_order_and_names_unknown_labels() -> None:
    assert [b.label for b in runner.select("audio,startup")] == ["startup", "audio"]
    assert runner.select(None) == runner.BENCHES
    with pytest.raises(SystemExit, match=r"unknown benchmark.*nope"):
        runner.select("audio,nope")


def _rec(bench: str, metric: str, value: float, **params: Any) -> dict[str, Any]:
    return record(bench, metric, value, "x", "base", 1.0, params, higher_is_better=True)


def test_a_subset_run_replaces_its_benchmarks_and_keeps_the_others() -> None:
    old = [_rec("audio.analysis", "a", 1), _rec("ann_index", "q", 2), _rec("ann_index", "gone", 3)]
    new = [_rec("ann_index", "q", 5)]
    merged = runner.merge(old, new)
    assert [(r["benchmark"], r["metric"], r["value"]) for r in merged] == [
        ("audio.analysis", "a", 1),
        ("ann_index", "q", 5),
    ]


def test_a_failing_bench_does_not_cost_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    def boom() -> list[dict[str, Any]]:
        raise ValueError("broken on purpose")

    good = runner.Bench("good", "tests.bench.test_runner", "_good", "good one")
    bad = runner.Bench("bad", "tests.bench.test_runner", "_bad", "bad one")
    monkeypatch.setattr(f"{__name__}._bad", boom, raising=False)
    console = Console(file=io.StringIO(), width=120)
    records, outcomes = runner.run([bad, good], console)
    assert [r["metric"] for r in records] == ["m"]
    assert [(o["label"], o["status"]) for o in outcomes] == [("bad", "failed"), ("good", "ok")]
    assert "broken on purpose" in outcomes[0]["reason"]


def _good() -> list[dict[str, Any]]:
    return [_rec("good", "m", 1.0)]


def test_an_unreachable_service_is_named_with_its_address(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AITASKS_BENCH_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    problem = service_problem("redis")
    assert problem is not None and f"127.0.0.1:{port}" in problem


def test_the_report_has_the_figures_and_the_plots(tmp_path: Path) -> None:
    from bench.report import write_report

    ann = {
        "items": 100_000,
        "dim": 64,
        "k": 10,
        "recall_target": 0.95,
        "hnswlib_recall_at_10": 0.96,
        "voyager_recall_at_10": 0.955,
    }
    records = [
        record("ann_index", "qps_single_query[hnswlib vs numpy]", 12000, "queries/s", "numpy", 900, ann),
        record("ann_index", "qps_single_query[hnswlib vs voyager]", 12000, "queries/s", "voyager", 9000, ann),
        record("audio.analysis_pool", "x_realtime_per_core", 130, "x realtime", "one process", 150, {"workers": 2}),
        record("startup", "step_to_body_s[audio]", 1.1, "s", "numpy", 0.15, {"family": "audio"}),
        record("startup", "step_to_ready_s[audio]", 1.6, "s", "numpy", 0.15, {"family": "audio"}),
        record("feast_online", "get_online_features_p99[redis]", 0.6, "ms", "hgetall | p99", 0.2, {}),
    ]
    latest = tmp_path / "latest.json"
    latest.write_text(json.dumps(records), "utf-8")
    written = write_report(latest, tmp_path)
    html = (tmp_path / "report.html").read_text("utf-8")
    md = (tmp_path / "report.md").read_text("utf-8")
    assert html.count("<svg") == 3  # scaling, recall vs QPS, start-up
    for name in ("scaling.png", "ann_recall_qps.png", "startup.png"):
        assert (tmp_path / "report_files" / name).stat().st_size > 1000
        assert f"](report_files/{name})" in md
    assert len(written) == 5
    # Every figure is in both tables; a '|' in a cell does not break the Markdown table.
    assert "hgetall \\| p99" in md and "get_online_features_p99[redis]" in html
    assert md.count("\n| ") == len(records) + 1


def test_the_reference_snapshot_is_the_latest_records_with_the_run_facts(tmp_path: Path) -> None:
    latest = tmp_path / "latest.json"
    latest.write_text(json.dumps([_rec("b", "z", 1), _rec("a", "y", 2)]), "utf-8")
    (tmp_path / "latest.meta.json").write_text(json.dumps({"date": "d", "cpus": 2}), "utf-8")
    ref = make_reference(latest, tmp_path / "reference.json", note="quiet")
    doc = json.loads(ref.read_text("utf-8"))
    assert doc["meta"] == {"date": "d", "cpus": 2, "note": "quiet"}
    assert [r["benchmark"] for r in doc["records"]] == ["a", "b"]  # sorted: a stable diff
