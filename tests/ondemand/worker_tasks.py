"""Tasks the on-demand tests run on real workers (``aitasks worker --include tests.ondemand.worker_tasks``).

Each body leaves a line in ``$AITASKS_TEST_ONDEMAND_DIR`` per execution, so a test counts how often a
body really ran (not just how often a result came back). ``$AITASKS_TEST_KILL_AFTER_COMMIT`` names a
flag file: the first call that finds it absent creates it and SIGKILLs its own process after the
call committed and stored its result, before the message is acknowledged (a crash between the
commit and the ack).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from celery import signals
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import Field, SecretStr

from aitasks.runtime.errors import FatalError
from aitasks.runtime.task import TaskContext, TaskModel, ai_task


def note(name: str, line: str) -> None:
    with open(Path(os.environ["AITASKS_TEST_ONDEMAND_DIR"]) / name, "a") as f:
        f.write(line + "\n")


class EchoParams(TaskModel):
    x: int
    label: str = "echo"


class EchoResult(TaskModel):
    y: int
    label: str


@ai_task(name="test.ondemand.echo", version="1.0.0")
def echo_task(params: EchoParams, ctx: TaskContext) -> EchoResult:
    """EN: Doubles x. FR: Double x. DE: Verdoppelt x."""
    note(f"{params.label}.runs", f"{params.x} {os.getpid()}")
    return EchoResult(y=2 * params.x, label=params.label)


class SlowParams(TaskModel):
    seconds: float = Field(gt=0, le=60)
    tag: str
    #: Swallow the soft time limit and keep going (only the hard limit stops it).
    stubborn: bool = False


class SlowResult(TaskModel):
    tag: str
    pid: int


@ai_task(name="test.ondemand.slow", version="1.0.0")
def slow_task(params: SlowParams, ctx: TaskContext) -> SlowResult:
    """EN: Sleeps. FR: Dort. DE: Schläft."""
    note(f"{params.tag}.started", str(os.getpid()))
    deadline = time.monotonic() + params.seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except SoftTimeLimitExceeded:
            if not params.stubborn:
                raise
            note(f"{params.tag}.soft", str(os.getpid()))
    note(f"{params.tag}.completed", str(os.getpid()))
    return SlowResult(tag=params.tag, pid=os.getpid())


@signals.task_postrun.connect(weak=False)
def _kill_after_commit(task_id: Any = None, **_: Any) -> None:
    flag = os.environ.get("AITASKS_TEST_KILL_AFTER_COMMIT")
    if flag and not Path(flag).exists():
        Path(flag).write_text(str(task_id))
        os.kill(os.getpid(), signal.SIGKILL)


class SecretParams(TaskModel):
    token: SecretStr


@ai_task(name="test.ondemand.secret", version="1.0.0")
def secret_task(params: SecretParams, ctx: TaskContext) -> EchoResult:
    """EN: Fails, quoting its token. FR: Échoue en citant son jeton. DE: Scheitert und zitiert sein Token."""
    raise FatalError(f"upstream refused token {params.token.get_secret_value()}")
