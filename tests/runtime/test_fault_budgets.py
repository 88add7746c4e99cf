"""Fault budgets (issue 14, finding 11): every call has a wall-clock deadline and a retry budget.

A body that never returns used to hang the call for good with no record past ``started``; now the call
stops waiting at its deadline, fails with :class:`DeadlineExceededError` and audits ``failed``. Retries
of retryable errors stop at the retry budget (sized for a service restart), the deadline or
``max_attempts``, whichever comes first, and the audit says which.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aitasks.runtime.errors import ServiceUnavailableError
from aitasks.runtime.retry import SERVICE_RETRY, DeadlineExceededError, RetryPolicy
from aitasks.runtime.settings import Settings
from aitasks.runtime.task import RunContext, Runtime, TaskContext, TaskModel, ai_task
from aitasks.runtime.telemetry import Telemetry
from tests.conftest import CapturedRuntime

#: Released by each test's teardown, so no abandoned body outlives its test.
RELEASE = threading.Event()
SEEN: dict[str, object] = {}


class HangParams(TaskModel):
    label: str


class HangResult(TaskModel):
    label: str


@ai_task(name="test.hang", version="1.0.0", deadline_s=2.0)
def hang_task(params: HangParams, ctx: TaskContext) -> HangResult:
    """Block like a call to a server that accepts and never answers.

    EN: Blocks until released.
    FR: Bloque jusqu'à sa libération.
    DE: Blockiert bis zur Freigabe.
    """
    SEEN["thread"] = threading.current_thread().name
    SEEN["ctx"] = ctx
    RELEASE.wait(30)
    return HangResult(label=params.label)


class FlakyParams(TaskModel):
    label: str


@ai_task(name="test.always_down", version="1.0.0", retry=RetryPolicy(max_attempts=20, budget_s=5.0))
def always_down_task(params: FlakyParams, ctx: TaskContext) -> HangResult:
    """Meet a service that stays down.

    EN: Always fails with a retryable error.
    FR: Échoue toujours avec une erreur transitoire.
    DE: Scheitert immer mit einem vorübergehenden Fehler.
    """
    raise ServiceUnavailableError(f"service down (attempt {ctx.attempt})")


@pytest.fixture(autouse=True)
def _release() -> Iterator[None]:
    # The code fingerprint (computed once per process, inside the deadline) imports the module's
    # first-party closure: seconds on a cold process. Warm it so the short deadlines meet the body.
    assert hang_task.code_fingerprint and always_down_task.code_fingerprint
    RELEASE.clear()
    SEEN.clear()
    yield
    RELEASE.set()


def _failed(c: CapturedRuntime, task: str) -> list[dict]:
    return [r for r in c.rt.audit.records() if r["task"] == task and r["status"] == "failed"]


def test_a_body_that_never_returns_fails_at_its_deadline_with_an_audit_record(captured: CapturedRuntime) -> None:
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceededError, match=r"passed its deadline of 2 s during attempt 1") as info:
        hang_task({"label": "x"}, runtime=captured.rt)
    elapsed = time.monotonic() - t0
    assert info.value.retryable and info.value.kind == "deadline_exceeded"
    assert elapsed < 20, f"the call must stop waiting at its deadline, took {elapsed:.1f} s"
    statuses = [r["status"] for r in captured.rt.audit.records() if r["task"] == "test.hang"]
    assert statuses == ["started", "failed"]
    [failed] = _failed(captured, "test.hang")
    assert failed["error"]["kind"] == "deadline_exceeded"
    assert failed["retry"]["stopped_by"] == "deadline" and failed["retry"]["deadline_s"] == 2.0
    # The body ran in a worker thread that was told it is abandoned; the lease was released for the next call.
    ctx = SEEN["ctx"]
    assert isinstance(ctx, TaskContext) and ctx.cancelled.is_set()
    assert str(SEEN["thread"]).startswith("task-test.hang-")
    assert "task.deadline_exceeded" in captured.log_text()
    RELEASE.set()  # the abandoned body returns; its result is dropped, nothing was committed
    with pytest.raises(DeadlineExceededError):
        RELEASE.clear()
        hang_task({"label": "x"}, runtime=captured.rt)  # not a hit: runs (and hangs) again


def test_settings_override_the_deadline_per_task_and_for_all(tmp_path: Path) -> None:
    base = Settings(storage_root=str(tmp_path))
    assert hang_task.deadline(base) == 2.0  # declared
    assert always_down_task.deadline(base) == base.task_deadline_default_s  # not declared: the default
    star = Settings(storage_root=str(tmp_path), task_deadlines_s={"*": 7.0})
    assert hang_task.deadline(star) == 7.0 and always_down_task.deadline(star) == 7.0
    named = Settings(storage_root=str(tmp_path), task_deadlines_s={"*": 7.0, "test.hang": 3.0})
    assert hang_task.deadline(named) == 3.0
    budget = Settings(storage_root=str(tmp_path), task_retry_budgets_s={"test.always_down": 90.0})
    assert always_down_task.retry_policy(budget).budget_s == 90.0
    assert always_down_task.retry_policy(base).budget_s == 5.0
    with pytest.raises(ValueError, match="must be > 0"):
        Settings(storage_root=str(tmp_path), task_deadlines_s={"test.hang": 0})


def test_a_deadline_from_settings_stops_a_hung_call(tmp_path: Path) -> None:
    c = CapturedRuntime(tmp_path)
    rt = Runtime.create(
        Settings(storage_root=str(tmp_path / "s2"), actor="pytest", task_deadlines_s={"test.hang": 0.2}),
        run=RunContext(run_id="run-test"),
        telemetry=Telemetry(span_exporter=c.spans),
    )
    with pytest.raises(DeadlineExceededError, match=r"deadline of 0\.2 s"):
        hang_task({"label": "y"}, runtime=rt)


def test_retries_stop_at_the_retry_budget_and_the_audit_says_so(captured: CapturedRuntime) -> None:
    # The captured runtime's sleep only records: the budget then runs on the sum of backoffs.
    with pytest.raises(ServiceUnavailableError):
        always_down_task({"label": "a"}, runtime=captured.rt)
    [failed] = _failed(captured, "test.always_down")
    retry = failed["retry"]
    assert retry["stopped_by"] == "budget" and retry["budget_s"] == 5.0
    assert retry["attempts"] < 20  # the budget, not max_attempts, ended it
    assert sum(captured.sleeps) <= 5.0
    retrying = [r for r in captured.rt.audit.records() if r["status"] == "retrying"]
    assert len(retrying) == retry["attempts"] - 1


def test_retries_stop_at_max_attempts_before_the_budget(captured: CapturedRuntime) -> None:
    from tests.runtime._tasks import scale_task

    src = captured.root / "n.txt"
    src.write_text("1 2")
    with pytest.raises(ServiceUnavailableError):
        scale_task({"source": str(src), "factor": 1.0, "fail_times": 5, "label": "m"}, runtime=captured.rt)
    [failed] = _failed(captured, "test.scale")
    assert failed["retry"]["stopped_by"] == "max_attempts" and failed["retry"]["attempts"] == 3


def test_the_service_policy_covers_a_two_minute_restart() -> None:
    assert SERVICE_RETRY.budget_s == 120.0 and SERVICE_RETRY.max_backoff_s <= 15.0
    # Full jitter waits half the cap on average: even so, the attempts outlast the budget by far, so the
    # budget (not max_attempts) is what ends the retries of a long outage.
    no_jitter = SERVICE_RETRY.model_copy(update={"jitter": False})
    mean_waits = sum(no_jitter.backoff(a) / 2 for a in range(1, SERVICE_RETRY.max_attempts))
    assert mean_waits > 2 * SERVICE_RETRY.budget_s
