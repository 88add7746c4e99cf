"""On-demand tasks on real Celery workers, RabbitMQ and Redis: the runtime contract, redelivery,
killed workers, dead letters. Each test runs its own queue and its own worker subprocesses."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aitasks.ondemand import OnDemandTaskError, read_dead_letters, submit, wait
from aitasks.ondemand.app import DL_DETAIL, DL_REASON
from tests.ondemand import worker_tasks
from tests.ondemand.conftest import Lab, eventually, lab

pytestmark = pytest.mark.integration

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One solo-pool worker, shared by the tests that do not kill it."""
    with lab(tmp_path_factory.mktemp("ondemand-solo")) as it:
        it.worker("solo").ready()
        yield it


def test_a_task_runs_on_a_worker_under_the_task_contract(solo: Lab) -> None:
    """Result, audit (run id = task id, submitter, trace continued from the header) and, for the same
    inputs again, an idempotent hit that does not run the body."""
    first = submit("test.ondemand.echo", {"x": 21, "label": "contract"}, app=solo.app, submitter="alice",
                   traceparent=TRACEPARENT)  # fmt: skip
    solo.task_ids.append(first.task_id)
    out = wait(solo.app, first.task_id, timeout=60)
    assert out["result"] == {"y": 42, "label": "contract"}
    assert out["task"] == "test.ondemand.echo" and out["version"] == "1.0.0"
    assert out["trace_id"] == TRACEPARENT[3:35] == first.trace_id
    (done,) = [r for r in solo.audit(first.task_id) if r["status"] == "succeeded"]
    assert done["pipeline"] == "ondemand" and done["submitter"] == "alice"
    assert done["trace_id"] == TRACEPARENT[3:35], "the worker's span continues the submitter's trace"
    assert done["actor"] == "ondemand-worker"

    again = submit("test.ondemand.echo", {"x": 21, "label": "contract"}, app=solo.app)
    solo.task_ids.append(again.task_id)
    assert wait(solo.app, again.task_id, timeout=60)["result"] == out["result"]
    assert again.trace_id != first.trace_id, "no traceparent given: a new trace"
    statuses = [r["status"] for r in solo.audit(again.task_id)]
    assert statuses == ["idempotent_hit"], statuses
    assert len(solo.lines("contract.runs")) == 1, "the body ran once for two submits"


def test_invalid_input_is_refused_before_sending(solo: Lab) -> None:
    """The task is registered here too (worker_tasks imported): a bad input never leaves the machine."""
    from aitasks.runtime.errors import InvalidInputError

    assert worker_tasks.echo_task.name == "test.ondemand.echo"
    with pytest.raises(InvalidInputError, match="x"):
        submit("test.ondemand.echo", {"x": "not a number"}, app=solo.app)
    assert read_dead_letters(solo.app) == []


def test_poison_messages_land_in_the_dead_letter_queue_with_their_reason(solo: Lab) -> None:
    """Invalid JSON, pickle, an unknown task, a wrong message shape, an invalid input: each one is
    dead-lettered once with its reason, the waiting submitter gets the verdict, the worker carries on."""
    app, topo = solo.app, solo.app.topology
    sent: dict[str, str] = {}

    def raw(reason: str, body: bytes, content_type: str, task: str = "test.ondemand.echo") -> None:
        task_id = str(uuid.uuid4())
        headers = {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "retries": 0}
        with app.connection_for_write() as conn:
            conn.Producer().publish(body, exchange=topo.queue, routing_key=topo.queue, headers=headers,
                                    content_type=content_type, content_encoding="utf-8" if "json" in content_type
                                    else "binary", correlation_id=task_id)  # fmt: skip
        sent[reason] = task_id

    raw("undecodable", b'[[], {"params": {"x": 1}', "application/json")
    raw("content_disallowed", pickle.dumps(((), {"params": {"x": 1}}, {})), "application/x-python-serialize")
    unknown = app.send_task("no.such.task", kwargs={"params": {}}, queue=topo.queue)
    sent["unknown_task"] = unknown.id
    shape = app.send_task("test.ondemand.echo", args=[1], queue=topo.queue)
    sent["invalid_message"] = shape.id
    bad = submit("test.ondemand.echo", {"x": "NaN?", "extra": 1}, app=app, validate=False)
    sent["invalid_input"] = bad.task_id
    solo.task_ids.extend(sent.values())

    letters: dict[str, Any] = {}

    def collect() -> bool:
        for letter in read_dead_letters(app, remove=True):
            assert letter.reason not in letters, f"dead-lettered twice: {letter.reason}"
            letters[letter.reason] = letter
        return len(letters) >= len(sent)

    eventually(collect, timeout=60, what=f"dead letters {sorted(sent)}")
    assert set(letters) == set(sent)
    for reason, task_id in sent.items():
        letter = letters[reason]
        assert letter.task_id == task_id, reason
        assert letter.headers[DL_REASON] == reason and letter.headers[DL_DETAIL], reason
        assert letter.dead_lettered_at, reason
    # Byte for byte: a dead letter can be replayed (or read) as it was sent.
    assert letters["undecodable"].body == b'[[], {"params": {"x": 1}'
    assert "x" in letters["invalid_input"].detail and "extra" in letters["invalid_input"].detail
    assert "no.such.task" in letters["unknown_task"].detail
    # The submitter waiting on a poison message gets its verdict, not PENDING forever.
    for reason in ("invalid_input", "unknown_task", "invalid_message"):
        with pytest.raises(OnDemandTaskError) as caught:
            wait(app, sent[reason], timeout=30)
        assert caught.value.kind == reason
    # Nothing else is queued, and the worker still works.
    assert read_dead_letters(app) == []
    ok = submit("test.ondemand.echo", {"x": 2, "label": "after-poison"}, app=app)
    solo.task_ids.append(ok.task_id)
    assert wait(app, ok.task_id, timeout=60)["result"]["y"] == 4
    assert solo.lines("echo.runs") == [], "no poison message reached a task body"


def test_a_message_redelivered_after_its_commit_is_an_idempotent_hit(tmp_path: Path) -> None:
    """The worker dies after the call committed, before the ack: the broker redelivers the message to
    another worker, whose call returns the committed result without running the body again."""
    with lab(tmp_path) as it:
        flag = tmp_path / "killed"
        first = it.worker("solo", "a", AITASKS_TEST_KILL_AFTER_COMMIT=str(flag)).ready()
        sub = submit("test.ondemand.echo", {"x": 5, "label": "redelivery"}, app=it.app)
        it.task_ids.append(sub.task_id)
        assert first.proc.wait(timeout=60) == -signal.SIGKILL
        assert flag.read_text() == sub.task_id
        it.worker("solo", "b").ready()
        records = eventually(
            lambda: [r for r in it.audit(sub.task_id) if r["status"] == "idempotent_hit"] and it.audit(sub.task_id),
            what="the redelivered message's idempotent hit",
        )
        assert [r["status"] for r in records] == ["started", "succeeded", "idempotent_hit"]
        assert records[-1]["idempotency_key"] == records[1]["idempotency_key"]
        assert len(it.lines("redelivery.runs")) == 1, "the body ran once for two deliveries"
        assert wait(it.app, sub.task_id, timeout=30)["result"] == {"y": 10, "label": "redelivery"}
        assert read_dead_letters(it.app) == []


@pytest.fixture(scope="module")
def prefork(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One prefork worker (one pool process) with a 2 s lease TTL (a killed call is taken over fast),
    serving /metrics."""
    with lab(tmp_path_factory.mktemp("ondemand-prefork"), ondemand_lease_ttl_s=2.0, metrics_port=free_port()) as it:
        it.worker("prefork").ready()
        yield it


def test_a_killed_pool_process_is_redelivered_and_the_call_completes_once(prefork: Lab) -> None:
    """SIGKILL of the pool process mid-call: the message goes back to the queue (reject_on_worker_lost),
    the next call takes the dead one's lease over and completes; one success, one result."""
    sub = submit("test.ondemand.slow", {"seconds": 2.0, "tag": "killed"}, app=prefork.app)
    prefork.task_ids.append(sub.task_id)
    (pid,) = eventually(lambda: prefork.lines("killed.started"), what="the call to start")
    os.kill(int(pid), signal.SIGKILL)
    out = wait(prefork.app, sub.task_id, timeout=90)
    started, completed = prefork.lines("killed.started"), prefork.lines("killed.completed")
    assert len(started) == 2 and started[0] == pid and started[1] != pid
    assert completed == [started[1]] and out["result"] == {"tag": "killed", "pid": int(started[1])}
    records = prefork.audit(sub.task_id)
    assert [r["status"] for r in records].count("succeeded") == 1
    assert [r["status"] for r in records].count("started") == 2
    assert any(r.get("lease_taken_over") for r in records), "the second call took the dead one's lease over"
    assert read_dead_letters(prefork.app) == []
    assert prefork.workers[0].proc.poll() is None, "the worker survived its pool process"


def test_a_call_past_its_soft_time_limit_fails_and_is_dead_lettered(prefork: Lab) -> None:
    sub = submit("test.ondemand.slow", {"seconds": 30.0, "tag": "slow"}, app=prefork.app, soft_time_limit_s=1.0)
    prefork.task_ids.append(sub.task_id)
    with pytest.raises(OnDemandTaskError) as caught:
        wait(prefork.app, sub.task_id, timeout=60)
    assert caught.value.kind == "time_limit"
    (letter,) = eventually(lambda: read_dead_letters(prefork.app, remove=True), what="the dead letter")
    assert letter.reason == "time_limit" and letter.task_id == sub.task_id
    assert json.loads(letter.body)[1] == {"params": {"seconds": 30.0, "tag": "slow"}}
    assert prefork.lines("slow.completed") == []
    failed = [r for r in prefork.audit(sub.task_id) if r["status"] == "failed"]
    assert failed and failed[0]["error"]["kind"] == "SoftTimeLimitExceeded"


def test_a_call_past_its_hard_time_limit_is_killed_and_dead_lettered_once(prefork: Lab) -> None:
    """A body that would ignore its soft limit still ends the call at a time limit; the verdict is final.

    The task runtime runs a body in a worker thread under its deadline, so Celery's soft-limit exception
    reaches the waiting caller, not the body: the call fails at the soft limit (the stubborn body is
    abandoned, and the hard limit remains the backstop that kills the pool process)."""
    params = {"seconds": 30.0, "tag": "hard", "stubborn": True}
    sub = submit("test.ondemand.slow", params, app=prefork.app, soft_time_limit_s=0.5, time_limit_s=1.5)
    prefork.task_ids.append(sub.task_id)
    with pytest.raises(OnDemandTaskError) as caught:
        wait(prefork.app, sub.task_id, timeout=60)
    assert caught.value.kind == "time_limit"
    (letter,) = eventually(lambda: read_dead_letters(prefork.app, remove=True), what="the dead letter")
    assert letter.reason == "time_limit" and "time limit" in letter.detail and letter.task_id == sub.task_id
    assert len(prefork.lines("hard.started")) == 1, "not redelivered: the verdict is final"
    assert prefork.lines("hard.completed") == []
    assert read_dead_letters(prefork.app) == []


def test_the_pool_processes_metrics_are_served_by_the_worker(prefork: Lab) -> None:
    """The calls run in pool processes; the parent's /metrics adds their samples up (multiprocess mode)."""
    for x in (1, 2):
        sub = submit("test.ondemand.echo", {"x": x, "label": "metrics"}, app=prefork.app)
        prefork.task_ids.append(sub.task_id)
        wait(prefork.app, sub.task_id, timeout=60)
    bad = submit("test.ondemand.echo", {"x": "?"}, app=prefork.app, validate=False)
    prefork.task_ids.append(bad.task_id)
    eventually(lambda: read_dead_letters(prefork.app, remove=True), what="the dead letter")
    url = f"http://127.0.0.1:{prefork.settings.metrics_port}/metrics"

    def scraped() -> str:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        return text if 'aitasks_ondemand_dead_letters_total{reason="invalid_input"' in text else ""

    text = eventually(scraped, timeout=30, what="the dead-letter counter on /metrics")
    assert 'aitasks_task_runs_total{status="succeeded",task="test.ondemand.echo",version="1.0.0"} 2.0' in text
    assert 'aitasks_ondemand_queue_wait_seconds_count{task="test.ondemand.echo"} 3.0' in text
