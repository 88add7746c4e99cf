"""Verified hits (issue 14, finding 7): a committed result is reused only while it is intact."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import tempfile
from pathlib import Path

import pytest

from aitasks.runtime.bundle import open_bundle, publish_bundle
from aitasks.runtime.task import OutputArtifact, RunContext, TaskContext, TaskModel, ai_task
from tests.conftest import CapturedRuntime
from tests.runtime import _tasks
from tests.runtime._tasks import scale_task

BUNDLE_CALLS: list[int] = []


class BundleParams(TaskModel):
    n: int


class BundleResult(TaskModel):
    bundle_uri: OutputArtifact


@ai_task(name="test.bundle", version="1.0.0")
def bundle_task(params: BundleParams, ctx: TaskContext) -> BundleResult:
    """Publish a two-file bundle.

    EN: Publishes a bundle.
    FR: Publie un paquet.
    DE: Veröffentlicht ein Bündel.
    """
    BUNDLE_CALLS.append(params.n)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "a.txt").write_text(f"a{params.n}")
        (Path(d) / "sub").mkdir()
        (Path(d) / "sub" / "b.txt").write_text(f"b{params.n}")
        uri = publish_bundle(ctx.storage, Path(d), ctx.output_uri("bundle"), kind="test")
    return BundleResult(bundle_uri=uri)


@pytest.fixture(autouse=True)
def _reset() -> None:
    _tasks.CALLS.clear()
    BUNDLE_CALLS.clear()


def _src(tmp_path: Path) -> str:
    p = tmp_path / "numbers.txt"
    p.write_text("1 2 3")
    return str(p)


def _records(c: CapturedRuntime, task: str) -> list[dict]:
    return [r for r in c.rt.audit.records() if r["task"] == task and r["status"] != "started"]


def test_an_output_changed_in_place_is_run_again_with_the_reason(captured: CapturedRuntime, tmp_path: Path) -> None:
    params = {"source": _src(tmp_path), "factor": 2.0}
    r1 = scale_task(params, runtime=captured.rt)
    Path(r1.output).write_text("2.0 4.0 6.5")  # same size, bytes changed in place
    r2 = scale_task(params, runtime=captured.rt)
    assert _tasks.CALLS == {"default": 2}
    assert Path(r2.output).read_text() == "2.0 4.0 6.0"
    last = _records(captured, "test.scale")[-1]
    assert last["status"] == "succeeded" and last["outcome"] == "executed"
    assert last["rerun_reason"] == f"output output ({r1.output}) changed since commit"
    assert scale_task(params, runtime=captured.rt) == r2 and _tasks.CALLS == {"default": 2}, "intact again: a hit"


def test_a_missing_bundle_file_is_run_again(captured: CapturedRuntime) -> None:
    r1 = bundle_task({"n": 1}, runtime=captured.rt)
    assert bundle_task({"n": 1}, runtime=captured.rt) == r1 and BUNDLE_CALLS == [1], "an intact bundle is a hit"
    root = Path(r1.bundle_uri).parent
    (root / "sub" / "b.txt").unlink()  # the manifest is still there
    r2 = bundle_task({"n": 1}, runtime=captured.rt)
    assert BUNDLE_CALLS == [1, 1]
    with open_bundle(r2.bundle_uri, kind="test") as (d, _):  # the next step can read it
        assert (d / "sub" / "b.txt").read_text() == "b1"
    last = _records(captured, "test.bundle")[-1]
    assert last["outcome"] == "executed"
    assert last["rerun_reason"] == f"output bundle_uri: bundle file sub/b.txt ({root / 'sub' / 'b.txt'}) is missing"


def test_a_bundle_file_changed_in_place_is_run_again(captured: CapturedRuntime) -> None:
    r1 = bundle_task({"n": 2}, runtime=captured.rt)
    (Path(r1.bundle_uri).parent / "a.txt").write_text("zz")
    bundle_task({"n": 2}, runtime=captured.rt)
    assert BUNDLE_CALLS == [2, 2]
    assert "bundle file a.txt" in _records(captured, "test.bundle")[-1]["rerun_reason"]


def _committed(c: CapturedRuntime, task: str) -> Path:
    [p] = list((Path(c.settings.storage_root) / "_idempotency" / task).glob("*.json"))
    return p


def test_an_edited_committed_record_is_not_returned(captured: CapturedRuntime, tmp_path: Path) -> None:
    params = {"source": _src(tmp_path), "factor": 2.0}
    scale_task(params, runtime=captured.rt)
    p = _committed(captured, "test.scale")
    rec = json.loads(p.read_text())
    rec["result"]["total"] = 1e9  # a forged result; output_hash left as it was
    p.write_text(json.dumps(rec))
    r = scale_task(params, runtime=captured.rt)
    assert r.total == 12.0 and _tasks.CALLS == {"default": 2}
    last = _records(captured, "test.scale")[-1]
    assert last["outcome"] == "executed" and "output_hash" in last["rerun_reason"]
    # Edited output hashes (to cover a changed output) are caught too.
    rec = json.loads(_committed(captured, "test.scale").read_text())
    rec["outputs"]["output"]["hash"] = "sha256:" + "0" * 64
    _committed(captured, "test.scale").write_text(json.dumps(rec))
    scale_task(params, runtime=captured.rt)
    assert _tasks.CALLS == {"default": 3}
    assert "outputs_hash" in _records(captured, "test.scale")[-1]["rerun_reason"]


def _killed_after_commit(root: Path, src: str) -> None:
    import aitasks.runtime.task as task_mod

    finish = task_mod._finish

    def die_on_success(task, rt, span, log, t0, status, entry):  # type: ignore[no-untyped-def]
        if status == "succeeded":
            os._exit(9)  # killed between the commit marker and the audit record
        finish(task, rt, span, log, t0, status, entry)

    task_mod._finish = die_on_success
    rt = CapturedRuntime(root, run=RunContext(run_id="killed")).rt
    rt.audit_started = True
    rt.lease_ttl_s = 1.0  # the next call waits for this lease to expire before it adopts the commit
    scale_task({"source": src, "factor": 3.0}, runtime=rt)


def test_a_kill_between_commit_and_audit_is_adopted_by_the_next_call(tmp_path: Path) -> None:
    src = _src(tmp_path)
    proc = mp.get_context("fork").Process(target=_killed_after_commit, args=(tmp_path, src))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 9
    c = CapturedRuntime(tmp_path, run=RunContext(run_id="next"))
    assert not [r for r in c.rt.audit.records() if r["status"] == "succeeded"], "the kill left no succeeded record"
    r = scale_task({"source": src, "factor": 3.0}, runtime=c.rt)
    assert r.total == 18.0 and _tasks.CALLS == {}, "the committed result was reused, not recomputed"
    recs = c.rt.audit.records()
    assert [x["status"] for x in recs] == ["started", "succeeded", "idempotent_hit"]
    started, adopted, hit = recs
    assert started["run_id"] == "killed", "the killed call left a trace before its body ran"
    assert adopted["run_id"] == "killed" and adopted["adopted"]["by_run"] == "next"
    assert adopted["outcome"] == "executed" and hit["outcome"] == "reused"
    scale_task({"source": src, "factor": 3.0}, runtime=c.rt)
    assert [x["status"] for x in c.rt.audit.records()][-1] == "idempotent_hit"
    assert sum(x.get("adopted") is not None for x in c.rt.audit.records()) == 1, "adopted once"
    assert c.rt.audit.verify().ok


def test_a_hit_between_a_live_commit_and_its_audit_record_waits_instead_of_adopting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race CI caught: a waiter saw the commit before its committer wrote ``succeeded`` and wrote it too."""
    import threading

    import aitasks.runtime.task as task_mod

    src = _src(tmp_path)
    params = {"source": src, "factor": 3.0}
    committed, go = threading.Event(), threading.Event()
    finish = task_mod._finish

    def slow_finish(task, rt, span, log, t0, status, entry):  # type: ignore[no-untyped-def]
        if status == "succeeded" and threading.current_thread().name == "committer":
            committed.set()
            assert go.wait(30)  # the committer is alive, holding its lease, not yet audited
        finish(task, rt, span, log, t0, status, entry)

    monkeypatch.setattr(task_mod, "_finish", slow_finish)
    a = CapturedRuntime(tmp_path, run=RunContext(run_id="a"))
    b = CapturedRuntime(tmp_path, run=RunContext(run_id="b"))
    results: dict[str, float] = {}
    t_a = threading.Thread(target=lambda: results.update(a=scale_task(params, runtime=a.rt).total), name="committer")
    t_b = threading.Thread(target=lambda: results.update(b=scale_task(params, runtime=b.rt).total), name="hitter")
    t_a.start()
    assert committed.wait(30)
    t_b.start()
    t_b.join(0.5)
    assert t_b.is_alive(), "the hit waits for the live committer's record"
    go.set()
    t_a.join(30)
    t_b.join(30)
    assert results == {"a": 18.0, "b": 18.0} and _tasks.CALLS == {"default": 1}
    recs = _records(a, "test.scale")
    assert sorted(r["outcome"] for r in recs) == ["executed", "reused"], recs
    assert not [r for r in recs if r.get("adopted")], "nothing adopted: the committer wrote its own record"
    assert a.rt.audit.verify().ok
