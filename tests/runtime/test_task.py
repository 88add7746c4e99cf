from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aitasks.runtime.errors import InvalidInputError, ServiceUnavailableError
from aitasks.runtime.settings import Settings
from aitasks.runtime.task import RunContext, Runtime, registry
from aitasks.runtime.telemetry import derived_traceparent
from tests.conftest import CapturedRuntime
from tests.runtime import _tasks
from tests.runtime._tasks import ScaleParams, scale_task


def _source(tmp_path: Path, text: str = "1 2 3") -> str:
    p = tmp_path / "numbers.txt"
    p.write_text(text)
    return str(p)


def _audit(c: CapturedRuntime) -> list[dict]:
    """The call's audit records, without the ``started`` ones (written before a body runs)."""
    return [r for r in c.rt.audit.records() if r["status"] != "started"]


def test_registered_with_schema() -> None:
    t = registry()["test.scale"]
    assert t.version == "1.0.0"
    assert t.params_model is ScaleParams
    assert "EN:" in t.doc and "FR:" in t.doc and "DE:" in t.doc


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({"source": "x", "factor": -1}, ["factor"]),
        ({"source": "x", "factor": float("nan")}, ["factor"]),
        ({"source": "x", "factor": 1, "unknown": 1}, ["unknown"]),
        ({"factor": 1}, ["source"]),
        ({"source": "x", "factor": "abc", "fail_times": -2}, ["factor", "fail_times"]),
    ],
)
def test_invalid_input_names_fields_never_retries_writes_nothing(
    captured: CapturedRuntime, payload: dict, fields: list[str]
) -> None:
    with pytest.raises(InvalidInputError) as ei:
        scale_task(payload, runtime=captured.rt)
    assert sorted(ei.value.fields) == sorted(fields)
    for f in fields:
        assert f in str(ei.value)
    assert not ei.value.retryable
    assert _tasks.CALLS == {}, "the task body never ran"
    assert captured.sleeps == []
    store = Path(captured.settings.storage_root)
    assert not (store / "_idempotency").exists() and not (store / "tasks").exists(), "nothing written"
    [rec] = _audit(captured)
    assert rec["status"] == "rejected"
    assert sorted(rec["error"]["fields"]) == sorted(fields)


def test_missing_input_artifact_is_invalid_input(captured: CapturedRuntime, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError) as ei:
        scale_task({"source": str(tmp_path / "nope.txt"), "factor": 2}, runtime=captured.rt)
    assert ei.value.fields == ("source",)


def test_idempotent_second_call_does_not_rerun(captured: CapturedRuntime, tmp_path: Path) -> None:
    params = {"source": _source(tmp_path), "factor": 2.0}
    r1 = scale_task(params, runtime=captured.rt)
    r2 = scale_task(params, runtime=captured.rt)
    assert r1 == r2 and r1.total == 12.0
    assert _tasks.CALLS == {"default": 1}
    assert [r["status"] for r in _audit(captured)] == ["succeeded", "idempotent_hit"]
    assert "task.idempotent_hit" in captured.log_text()
    assert captured.metric("aitasks_task_idempotent_hits_total", task="test.scale") == 1.0
    assert Path(r1.output).read_text() == "2.0 4.0 6.0"


def test_new_artifact_content_gives_new_key(captured: CapturedRuntime, tmp_path: Path) -> None:
    src = _source(tmp_path)
    r1 = scale_task({"source": src, "factor": 2.0}, runtime=captured.rt)
    Path(src).write_text("10 20")
    r2 = scale_task({"source": src, "factor": 2.0}, runtime=captured.rt)
    assert _tasks.CALLS == {"default": 2}
    assert r2.total == 60.0 and r1.output != r2.output


def test_deleted_output_forces_rerun(captured: CapturedRuntime, tmp_path: Path) -> None:
    params = {"source": _source(tmp_path), "factor": 2.0}
    r1 = scale_task(params, runtime=captured.rt)
    Path(r1.output).unlink()
    r2 = scale_task(params, runtime=captured.rt)
    assert _tasks.CALLS == {"default": 2} and Path(r2.output).exists()


def test_canonical_inputs_ignore_order_and_secrets() -> None:
    t = registry()["test.scale"]
    base = {"source": "gs://b/x", "factor": 1.5, "label": "a"}
    p = t.validate(base)
    assert t.canonical_inputs(p) == t.canonical_inputs(t.validate(dict(reversed(list(base.items())))))
    assert "api_token" not in t.canonical_inputs(t.validate({**base, "api_token": "s3cr3t-value"}))


def test_retryable_errors_retry_with_bounded_backoff(captured: CapturedRuntime, tmp_path: Path) -> None:
    r = scale_task({"source": _source(tmp_path), "factor": 1.0, "fail_times": 2}, runtime=captured.rt)
    assert r.total == 6.0
    assert _tasks.CALLS == {"default": 3}
    assert len(captured.sleeps) == 2 and all(0 <= s <= 0.2 for s in captured.sleeps)
    statuses = [(x["status"], x["attempt"]) for x in _audit(captured)]
    assert statuses == [("retrying", 1), ("retrying", 2), ("succeeded", 3)]
    assert captured.metric("aitasks_task_retries_total", task="test.scale", error_kind="service_unavailable") == 2


def test_retries_are_bounded(captured: CapturedRuntime, tmp_path: Path) -> None:
    with pytest.raises(ServiceUnavailableError):
        scale_task({"source": _source(tmp_path), "factor": 1.0, "fail_times": 10}, runtime=captured.rt)
    assert _tasks.CALLS == {"default": 3}
    assert _audit(captured)[-1]["status"] == "failed"
    assert captured.metric("aitasks_task_runs_total", task="test.scale", version="1.0.0", status="failed") == 1


def test_fatal_errors_fail_at_once(captured: CapturedRuntime, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="cannot work"):
        scale_task({"source": _source(tmp_path), "factor": 1.0, "fatal": True}, runtime=captured.rt)
    assert _tasks.CALLS == {"default": 1} and captured.sleeps == []


def test_secret_input_never_reaches_logs_or_audit(captured: CapturedRuntime, tmp_path: Path) -> None:
    secret = "tok-9f8e7d6c5b4a-SECRET"
    scale_task({"source": _source(tmp_path), "factor": 1.0, "api_token": secret}, runtime=captured.rt)
    with pytest.raises(Exception):
        scale_task(
            {"source": _source(tmp_path), "factor": 3.0, "api_token": secret, "fatal": True}, runtime=captured.rt
        )
    logs = captured.log_text()
    assert "calling service" in logs and "[REDACTED]" in logs
    assert secret not in logs
    audit_text = (Path(captured.settings.storage_root) / "audit" / "audit.jsonl").read_text()
    assert secret not in audit_text
    store_text = "".join(
        p.read_text(errors="ignore") for p in Path(captured.settings.storage_root).rglob("*") if p.is_file()
    )
    assert secret not in store_text


def test_user_ids_are_pseudonymised_in_logs(captured: CapturedRuntime) -> None:
    from aitasks.runtime.logging import get_logger

    get_logger().info("lookup", user_id="user_123456")
    text = captured.log_text()
    assert "user_123456" not in text and '"user_id": "u_' in text


def test_trace_context_continues_given_traceparent(tmp_path: Path) -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    c = CapturedRuntime(tmp_path, run=RunContext(run_id="r1", traceparent=tp))
    scale_task({"source": _source(tmp_path), "factor": 1.0}, runtime=c.rt)
    [span] = c.spans.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert f"{span.parent.span_id:016x}" == "b7ad6b7169203331"
    assert "0af7651916cd43dd8448eb211c80319c" in c.log_text()
    assert c.rt.audit.records()[-1]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"


def test_trace_id_derived_from_run_id_without_traceparent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRACEPARENT", raising=False)
    a = CapturedRuntime(tmp_path / "a", run=RunContext(run_id="kfp-run-42", step="ingest"), inputs=(tmp_path,))
    b = CapturedRuntime(tmp_path / "b", run=RunContext(run_id="kfp-run-42", step="features"), inputs=(tmp_path,))
    scale_task({"source": _source(tmp_path), "factor": 1.0}, runtime=a.rt)
    scale_task({"source": _source(tmp_path), "factor": 2.0}, runtime=b.rt)
    ta = a.spans.get_finished_spans()[0].context.trace_id
    tb = b.spans.get_finished_spans()[0].context.trace_id
    assert ta == tb == int(derived_traceparent("kfp-run-42").split("-")[1], 16)


def test_traceparent_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    tp = "00-11111111111111111111111111111111-2222222222222222-01"
    monkeypatch.setenv("TRACEPARENT", tp)
    assert RunContext.from_env().effective_traceparent() == tp


def _race(root: str, src: str, barrier: mp.synchronize.Barrier, q: mp.Queue) -> None:  # type: ignore[name-defined]
    from aitasks.runtime import logging as rlog

    rlog.configure_logging(stream=open("/dev/null", "w"))  # noqa: SIM115
    rt = Runtime.create(Settings(storage_root=root, input_roots=str(Path(src).parent)), run=RunContext(run_id="race"))
    barrier.wait()
    r = scale_task({"source": src, "factor": 5.0}, runtime=rt)
    q.put(r.model_dump_json())


def test_concurrent_attempts_agree_on_one_result(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    src = _source(tmp_path)
    barrier = ctx.Barrier(4)
    q = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path / "store"), src, barrier, q)) for _ in range(4)]
    for p in procs:
        p.start()
    results = {q.get(timeout=60) for _ in procs}
    for p in procs:
        p.join(30)
    assert len(results) == 1, "every racer returns the single committed result"
    [committed] = list((tmp_path / "store" / "_idempotency" / "test.scale").glob("*.json"))
    assert json.loads(committed.read_text())["result"] == json.loads(results.pop())
    rt = Runtime.create(Settings(storage_root=str(tmp_path / "store")))
    assert rt.audit.verify().ok


@settings(max_examples=50, deadline=None)
@given(
    factor=st.floats(min_value=1e-6, max_value=1e6, allow_nan=False),
    label=st.text(min_size=0, max_size=20),
)
def test_canonical_inputs_roundtrip(factor: float, label: str) -> None:
    t = registry()["test.scale"]
    a = t.validate({"source": "/x", "factor": factor, "label": label})
    b = t.validate(json.loads(json.dumps({"label": label, "factor": factor, "source": "/x"})))
    assert t.canonical_inputs(a) == t.canonical_inputs(b)


def test_same_artifact_content_at_another_path_is_the_same_work(captured: CapturedRuntime, tmp_path: Path) -> None:
    a = tmp_path / "run1" / "numbers.txt"
    b = tmp_path / "run2" / "numbers.txt"
    for p in (a, b):
        p.parent.mkdir()
        p.write_text("1 2 3")
    scale_task({"source": str(a), "factor": 2.0}, runtime=captured.rt)
    scale_task({"source": str(b), "factor": 2.0}, runtime=captured.rt)
    assert _tasks.CALLS == {"default": 1}


def test_outside_state_joins_the_key_and_the_audit(captured: CapturedRuntime) -> None:
    _tasks.WORLD["champion"] = 1
    assert _tasks.stateful_task({"x": 1}, runtime=captured.rt).seen_champion == 1
    assert _tasks.stateful_task({"x": 1}, runtime=captured.rt).seen_champion == 1  # same state: a hit
    _tasks.WORLD["champion"] = 2
    assert _tasks.stateful_task({"x": 1}, runtime=captured.rt).seen_champion == 2  # new state: new work
    assert _tasks.CALLS["stateful"] == 2
    recs = [r for r in _audit(captured) if r["task"] == "test.stateful"]
    assert [r["status"] for r in recs] == ["succeeded", "idempotent_hit", "succeeded"]
    assert [r["state"] for r in recs] == [{"champion": 1}, {"champion": 1}, {"champion": 2}]
    assert recs[0]["idempotency_key"] != recs[2]["idempotency_key"]


def test_a_retry_in_the_same_run_after_a_non_retryable_failure_fails_at_once(tmp_path: Path) -> None:
    """KFP's retry policy retries every failure; the task stops a retry of work that cannot succeed."""
    from aitasks.runtime.errors import FatalError, NotRetriedError

    def runtime(run_id: str) -> Runtime:
        return CapturedRuntime(tmp_path, run=RunContext(run_id=run_id)).rt

    src = _source(tmp_path)
    bad = {"source": src, "factor": 2, "fatal": True, "label": "fatal-run"}
    with pytest.raises(FatalError):
        scale_task(bad, runtime=runtime("kfp-run-1"))
    assert _tasks.CALLS["fatal-run"] == 1
    # The retry of that step in the same run: refused before the body runs, naming the first error.
    with pytest.raises(NotRetriedError, match=r"non-retryable fatal: cannot work with token"):
        scale_task(bad, runtime=runtime("kfp-run-1"))
    assert _tasks.CALLS["fatal-run"] == 1, "the body did not run again"
    # Another run (a new start after fixing the cause) runs it again; so do different inputs in the same run.
    with pytest.raises(FatalError):
        scale_task(bad, runtime=runtime("kfp-run-2"))
    with pytest.raises(FatalError):
        scale_task({**bad, "factor": 3}, runtime=runtime("kfp-run-1"))
    assert _tasks.CALLS["fatal-run"] == 3


def test_retryable_failures_and_local_calls_are_never_refused(tmp_path: Path) -> None:
    from aitasks.runtime.errors import ServiceUnavailableError

    src = _source(tmp_path)
    flaky = {"source": src, "factor": 2, "fail_times": 5, "label": "flaky-run"}
    rt = CapturedRuntime(tmp_path, run=RunContext(run_id="kfp-run-9")).rt
    with pytest.raises(ServiceUnavailableError):
        scale_task(flaky, runtime=rt)
    _tasks.CALLS["flaky-run"] = 0
    assert scale_task({**flaky, "fail_times": 0}, runtime=rt).total == 12.0
    # Run id "local": a person at a shell may retry freely.
    local = CapturedRuntime(tmp_path / "local", run=RunContext(run_id="local"), inputs=(tmp_path,)).rt
    bad = {"source": src, "factor": 2, "fatal": True, "label": "fatal-local"}
    for _ in range(2):
        with pytest.raises(Exception, match="cannot work with token"):
            scale_task(bad, runtime=local)
    assert _tasks.CALLS["fatal-local"] == 2


def test_logical_time_comes_from_the_run_not_the_wall_clock() -> None:
    from datetime import UTC, datetime

    from aitasks.runtime.task import AsOfTime, LogicalTimeParams

    class P(LogicalTimeParams):
        as_of: AsOfTime = None  # type: ignore[assignment]

    sched, created = "2026-12-01T03:00:00Z", "2026-12-01T03:00:07.123Z"
    assert P.model_validate({"as_of": "2026-11-30T00:00:00Z", "scheduled_time": sched}).as_of.day == 30
    assert P.model_validate({"as_of": "", "scheduled_time": sched, "run_created_time": created}).as_of == datetime(
        2026, 12, 1, 3, tzinfo=UTC
    )
    # A one-off run: KFP leaves the schedule time at the epoch; the run's creation time decides.
    one_off = P.model_validate({"scheduled_time": "1970-01-01T00:00:00Z", "run_created_time": created})
    assert one_off.as_of.second == 7
    # kfp.local leaves the placeholders unresolved: the current hour, as for a direct call.
    local = P.model_validate(
        {
            "scheduled_time": "{{$.pipeline_job_schedule_time_utc}}",
            "run_created_time": "{{$.pipeline_job_create_time_utc}}",
        }
    )
    assert local.as_of.minute == 0 and local.as_of.tzinfo is not None
    # The run times decide as_of only: they are not inputs of their own (not in the key, not refused).
    assert set(one_off.model_dump()) == {"as_of"}


def test_ingest_gets_the_run_times_in_the_compiled_pipeline(tmp_path: Path) -> None:
    import yaml

    from pipelines.cli import compile_pipeline

    spec = next(yaml.safe_load_all(compile_pipeline("data-pipeline", tmp_path).read_text()))
    params = spec["root"]["dag"]["tasks"]["ingest-events"]["inputs"]["parameters"]
    assert params["scheduled_time"]["runtimeValue"]["constant"] == "{{$.pipeline_job_schedule_time_utc}}"
    assert params["run_created_time"]["runtimeValue"]["constant"] == "{{$.pipeline_job_create_time_utc}}"
