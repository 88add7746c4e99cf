"""The step adapter: run context, artifacts in and out, metrics, and what a failing step leaves behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from kfp.dsl import Artifact, Dataset, Metrics

from aitasks.runtime.errors import FatalError, InvalidInputError
from aitasks.runtime.step import RUN_CONTEXT_KEYS, input_uri, metrics_job, run_context_params, run_step


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AITASKS_METRICS_TEXTFILE_DIR", str(tmp_path / "prom"))
    monkeypatch.delenv("AITASKS_PUSHGATEWAY_URL", raising=False)


def _source(tmp_path: Path) -> Dataset:
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / "numbers.txt").write_text("1 2 3")
    return Dataset(name="numbers", uri=str(tmp_path / "in" / "numbers.txt"), metadata={})


def _context(tmp_path: Path, **extra: str) -> tuple[dict, str, str, str]:
    return ({"storage_root": str(tmp_path / "store"), **extra}, "unit-pipeline", "run-7", "scale-step")


def test_run_step_exports_outputs_logs_metrics_and_audits_the_run_context(tmp_path: Path) -> None:
    out = Artifact(name="out", uri=str(tmp_path / "kfp" / "out"), metadata={})
    res = run_step(
        "test.scale",
        {"source": _source(tmp_path), "factor": 2},
        _context(tmp_path, submitter="ci:bot", git_revision="abc", pipeline_version="v1"),
        outputs={"output": out},
    )
    assert res.total == 12.0
    assert Path(out.path).read_text() == "2.0 4.0 6.0"
    assert out.metadata["stable_uri"] == res.output
    from aitasks.runtime.audit import AuditLog

    started, rec = AuditLog(tmp_path / "store" / "audit").records()
    assert started["status"] == "started" and rec["status"] == "succeeded"
    assert (rec["pipeline"], rec["run_id"], rec["step"]) == ("unit-pipeline", "run-7", "scale-step")
    assert (rec["submitter"], rec["git_revision"], rec["pipeline_version"]) == ("ci:bot", "abc", "v1")
    # The step's Prometheus metrics go out under a job named after the task.
    assert (tmp_path / "prom" / "test-scale.prom").is_file()


def test_a_failing_step_still_hands_its_metrics_on_and_raises_the_task_error(tmp_path: Path) -> None:
    with pytest.raises(FatalError):
        run_step("test.scale", {"source": _source(tmp_path), "factor": 2, "fatal": True}, _context(tmp_path))
    text = (tmp_path / "prom" / "test-scale.prom").read_text()
    assert 'aitasks_task_runs_total{status="failed",task="test.scale",version="1.0.0"}' in text


def test_a_broken_pushgateway_does_not_hide_the_task_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITASKS_PUSHGATEWAY_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(FatalError):
        run_step("test.scale", {"source": _source(tmp_path), "factor": 2, "fatal": True}, _context(tmp_path))


def test_metrics_of_a_result_reach_the_metrics_artifact(tmp_path: Path) -> None:
    from aitasks.runtime.task import Metric, TaskModel, metric_values

    class R(TaskModel):
        rows: int
        reasons: dict[str, int]
        names: list[str]
        ratio: float
        blessed: bool

    from typing import Annotated

    class M(TaskModel):
        rows: Annotated[int, Metric()]
        reasons: Annotated[dict[str, int], Metric(prefix="bad.")]
        names: Annotated[list[str], Metric(name="name_count")]
        ratio: Annotated[float, Metric(name="share")]
        quiet: int

    assert metric_values(R(rows=1, reasons={}, names=[], ratio=0.5, blessed=True)) == {}
    values = metric_values(M(rows=3, reasons={"b": 2, "a": 1}, names=["x", "y"], ratio=0.25, quiet=9))
    assert values == {"rows": 3.0, "bad.a": 1.0, "bad.b": 2.0, "name_count": 2.0, "share": 0.25}
    m = Metrics(name="m", uri=str(tmp_path / "m"), metadata={})
    for k, v in values.items():
        m.log_metric(k, v)
    assert m.metadata["bad.b"] == 2.0


def test_run_context_is_validated_and_complete() -> None:
    assert set(RUN_CONTEXT_KEYS) == {"storage_root", "submitter", "git_revision", "pipeline_version", "traceparent"}
    assert run_context_params(None).storage_root == ""
    with pytest.raises(InvalidInputError, match=r"run_context\.submiter"):
        run_context_params({"submiter": "x"})
    with pytest.raises(InvalidInputError, match=r"run_context\.storage_root"):
        run_context_params({"storage_root": 3})


def test_input_uri_prefers_the_stable_uri_then_a_bundle_manifest(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "MANIFEST.json").write_text("{}")
    assert input_uri(Artifact(name="b", uri=str(bundle), metadata={})) == str(bundle / "MANIFEST.json")
    assert input_uri(Artifact(name="f", uri=str(tmp_path / "f"), metadata={})) == str(tmp_path / "f")
    assert input_uri(Artifact(name="s", uri=str(tmp_path / "f"), metadata={"stable_uri": "gs://b/k"})) == "gs://b/k"


def test_metrics_job_names_follow_the_task_name() -> None:
    assert metrics_job("data.ingest") == "data-ingest"
    assert metrics_job("reco.training_set") == "reco-training-set"


def test_an_unknown_task_is_named() -> None:
    with pytest.raises(KeyError, match=r"no task 'data\.ingets'"):
        run_step("data.ingets", {}, ({}, "p", "r", "s"))


def test_the_shards_of_a_fan_out_step_push_to_groups_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ParallelFor iterations share a task name: without a shard label each push replaced the others'."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from aitasks.runtime.step import finish_step, step_runtime

    paths: list[str] = []

    class Gateway(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            paths.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AITASKS_PUSHGATEWAY_URL", f"http://127.0.0.1:{server.server_port}")
        for shard in (0, 1, None):
            rt = step_runtime({"storage_root": str(tmp_path / "store")}, run_id="r", step="analyze", pipeline="p")
            finish_step(rt, "audio-analyze", shard)
    finally:
        server.shutdown()
    assert paths == [
        "/metrics/job/audio-analyze/pipeline/p/shard/0/step/analyze",
        "/metrics/job/audio-analyze/pipeline/p/shard/1/step/analyze",
        "/metrics/job/audio-analyze/pipeline/p/step/analyze",
    ]
