from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

from aitasks.runtime.telemetry import Telemetry, child_env, derived_traceparent, valid_traceparent
from tests.conftest import CapturedRuntime
from tests.runtime._tasks import scale_task


def _source(tmp_path: Path) -> str:
    p = tmp_path / "n.txt"
    p.write_text("1 2")
    return str(p)


def test_metrics_count_by_status_and_observe_duration(captured: CapturedRuntime, tmp_path: Path) -> None:
    scale_task({"source": _source(tmp_path), "factor": 1.0}, runtime=captured.rt)
    scale_task({"source": _source(tmp_path), "factor": 1.0}, runtime=captured.rt)
    labels = {"task": "test.scale", "version": "1.0.0"}
    assert captured.metric("aitasks_task_runs_total", **labels, status="succeeded") == 1
    assert captured.metric("aitasks_task_runs_total", **labels, status="idempotent_hit") == 1
    assert captured.metric("aitasks_task_duration_seconds_count", task="test.scale", status="succeeded") == 1


def test_textfile_exposition_for_batch_steps(captured: CapturedRuntime, tmp_path: Path) -> None:
    scale_task({"source": _source(tmp_path), "factor": 1.0}, runtime=captured.rt)
    captured.rt.telemetry.push("data-ingest", textfile_dir=str(tmp_path / "prom"))
    text = (tmp_path / "prom" / "data-ingest.prom").read_text()
    assert 'aitasks_task_runs_total{status="succeeded",task="test.scale",version="1.0.0"} 1.0' in text


def test_http_exposition_for_long_running_processes(captured: CapturedRuntime, tmp_path: Path) -> None:
    scale_task({"source": _source(tmp_path), "factor": 1.0}, runtime=captured.rt)
    server = captured.rt.telemetry.serve(0)
    try:
        port = server.server_address[1]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    assert "aitasks_task_duration_seconds_bucket" in body


def test_child_process_continues_the_trace() -> None:
    tel = Telemetry()
    with tel.tracer.start_as_current_span("parent") as span:
        env = child_env(span)
        out = subprocess.run(
            [sys.executable, "-c", "import os; print(os.environ['TRACEPARENT'])"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert valid_traceparent(out)
        assert out.split("-")[1] == f"{span.get_span_context().trace_id:032x}"


def test_derived_traceparent_is_valid_and_stable() -> None:
    a = derived_traceparent("run-1")
    assert valid_traceparent(a) and a == derived_traceparent("run-1") != derived_traceparent("run-2")
    assert not valid_traceparent("00-" + "0" * 32 + "-" + "1" * 16 + "-01")
    assert not valid_traceparent("garbage")


def test_run_summary_marks_a_pipeline_success_only_when_it_succeeded(captured) -> None:
    from aitasks.runtime.run_summary import run_summary_task

    gauge = "aitasks_pipeline_last_success_timestamp_seconds"
    run_summary_task(
        {"run_id": "r-failed", "pipeline": "audio-analysis", "final_status": "FAILED"}, runtime=captured.rt
    )
    assert captured.metric(gauge, pipeline="audio-analysis") == 0.0
    run_summary_task({"run_id": "r-ok", "pipeline": "audio-analysis", "final_status": "SUCCEEDED"}, runtime=captured.rt)
    import time

    assert abs(captured.metric(gauge, pipeline="audio-analysis") - time.time()) < 60
