"""The submitting side of on-demand tasks: ``aitasks submit``, and reading the dead-letter queue.

A submit validates the input locally first when the task is known here (a bad input never leaves the
machine; the worker validates again, it is the authority), then publishes one JSON message and
returns once the broker confirmed it. The trace: the caller's ``traceparent`` (argument or
``TRACEPARENT``) travels in the message headers and the worker's span continues it; without one, a
new trace starts here and its id comes back in the :class:`Submission`.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from celery.exceptions import TimeLimitExceeded
from celery.result import AsyncResult

from aitasks.ondemand.app import (
    DL_AT,
    DL_DETAIL,
    DL_REASON,
    HEADER_SUBMITTED_AT,
    HEADER_SUBMITTER,
    HEADER_TRACEPARENT,
    OnDemandApp,
    OnDemandTaskError,
    make_app,
)
from aitasks.runtime.settings import Settings, load_settings


@dataclass(frozen=True)
class Submission:
    """A message the broker holds: its task id (the run id of the call) and the trace it belongs to."""

    task_id: str
    task: str
    traceparent: str

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def _declared(app: OnDemandApp) -> None:
    """Declare the queues once per app, so a message sent before any worker started is not dropped."""
    if getattr(app, "_aitasks_declared", False):
        return
    with app.connection_for_write() as conn:
        app.topology.declare(conn)
    app._aitasks_declared = True  # type: ignore[attr-defined]


def submit(
    task: str,
    params: Mapping[str, Any],
    *,
    settings: Settings | None = None,
    app: OnDemandApp | None = None,
    submitter: str = "",
    traceparent: str = "",
    validate: bool = True,
    soft_time_limit_s: float | None = None,
    time_limit_s: float | None = None,
) -> Submission:
    """Send registered task ``task`` with ``params`` to the on-demand queue; return once the broker has it.

    Args:
        task: Registered task name (``audio.analyze``).
        params: The task's inputs (a JSON object).
        settings: Broker, result backend, queue (default: the environment's).
        app: An app to reuse across many submits (default: one built from ``settings``).
        submitter: Who asks (audit ``submitter``; default: ``AITASKS_SUBMITTER`` or the settings' actor).
        traceparent: W3C trace parent to continue (default: ``TRACEPARENT``, else a new trace).
        validate: Validate ``params`` here first when the task is registered in this process.
        soft_time_limit_s: Ask for a shorter soft time limit than the worker's (never longer).
        time_limit_s: Ask for a shorter hard time limit than the worker's (never longer).

    Raises:
        InvalidInputError: ``validate`` and the input is refused; nothing was sent.
    """
    from aitasks.runtime.telemetry import valid_traceparent

    if app is None:
        app = make_app(settings or load_settings())
    if validate:
        from aitasks.runtime.task import get_task

        try:
            known = get_task(task)
        except KeyError:
            known = None  # the worker may know more tasks (``--include``): it decides
        if known is not None:
            known.validate(params)
    given = traceparent or os.environ.get("TRACEPARENT", "")
    tp = given if valid_traceparent(given) else new_traceparent()
    who = submitter or os.environ.get("AITASKS_SUBMITTER", "") or app.aitasks_settings.actor
    _declared(app)
    result = app.send_task(
        task,
        kwargs={"params": json.loads(json.dumps(dict(params)))},
        task_id=str(uuid.uuid4()),
        queue=app.topology.queue,
        headers={HEADER_TRACEPARENT: tp, HEADER_SUBMITTER: who, HEADER_SUBMITTED_AT: repr(time.time())},
        soft_time_limit=soft_time_limit_s,
        time_limit=time_limit_s,
    )
    return Submission(result.id, task, tp)


def wait(app: OnDemandApp, task_id: str, timeout: float | None = None) -> dict[str, Any]:
    """The result envelope of a submitted call (``task``, ``version``, ``trace_id``, ``result``).

    Raises:
        OnDemandTaskError: The call ended without a result (``kind``: the dead letter's reason).
        celery.exceptions.TimeoutError: No result within ``timeout`` seconds.
    """
    try:
        value = AsyncResult(task_id, app=app).get(timeout=timeout, propagate=True)
    except TimeLimitExceeded as exc:  # the hard limit: Celery stores its own error for the killed call
        raise OnDemandTaskError("time_limit", f"hard time limit exceeded ({exc})") from None
    if not isinstance(value, dict):
        raise OnDemandTaskError("invalid_result", f"unexpected result {type(value).__name__}")
    return value


def status(app: OnDemandApp, task_id: str) -> str:
    """Celery state of a call: PENDING (unknown or queued), STARTED, SUCCESS, FAILURE."""
    return str(AsyncResult(task_id, app=app).state)


@dataclass(frozen=True)
class DeadLetter:
    """One message of the dead-letter queue."""

    reason: str
    detail: str
    task: str
    task_id: str
    dead_lettered_at: str
    body: bytes
    content_type: str
    headers: dict[str, Any] = field(default_factory=dict)


def read_dead_letters(app: OnDemandApp, *, limit: int = 100, remove: bool = False) -> list[DeadLetter]:
    """Up to ``limit`` dead letters, oldest first. ``remove``: acknowledge them (else they stay queued).

    A message the broker dead-lettered itself (delivery limit) has no ``x-aitasks-reason``: its reason
    is RabbitMQ's, from ``x-death`` (e.g. ``delivery_limit``).
    """
    out: list[DeadLetter] = []
    topology = app.topology
    with app.connection_for_write() as conn:
        queue = topology.dead_letter_queue()(conn.default_channel)
        queue.declare()
        held = []
        while len(out) < limit:
            message = queue.get(no_ack=False, accept=["json"])  # never decoded here: raw body
            if message is None:
                break
            held.append(message)
            headers = dict(message.headers or {})
            deaths = headers.get("x-death") or [{}]
            body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
            out.append(
                DeadLetter(
                    reason=str(headers.get(DL_REASON) or deaths[0].get("reason") or "unknown"),
                    detail=str(headers.get(DL_DETAIL, "")),
                    task=str(headers.get("task", "")),
                    task_id=str(headers.get("id", "")),
                    dead_lettered_at=str(headers.get(DL_AT, "")),
                    body=body,
                    content_type=str(message.content_type or ""),
                    headers=headers,
                )
            )
        for message in held:
            if remove:
                message.ack()
            else:
                message.reject(requeue=True)
    return out
