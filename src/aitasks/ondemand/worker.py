"""The worker side of on-demand tasks: ``aitasks worker``.

Every registered task becomes a Celery task of the same name. A message carries one keyword
argument, ``params`` (a JSON object), and headers: ``traceparent`` (W3C; the call's span continues
it), ``aitasks_submitter`` and ``aitasks_submitted_at``. The worker calls the registered task through
the runtime: validation, idempotency key, lease, audit, span, metrics, the task's retry policy. The
Celery task id is the run id of the call (audit ``run_id``, trace id derived from it without a
``traceparent``); ``pipeline`` is ``ondemand``.

Failures go to the dead-letter queue with their reason (see :mod:`aitasks.ondemand.app`): a call that
raised, in :class:`OnDemandRequest` (the pool's parent process, which holds the message); a message
that never reached a task (undecodable, not JSON, unknown task), in :class:`OnDemandConsumer`.

This module imports neither the runtime nor prometheus_client at import time: ``aitasks worker`` sets
``PROMETHEUS_MULTIPROC_DIR`` first, so the pool processes' metrics add up on one ``/metrics``.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from celery import Task as CeleryTask
from celery import bootsteps, signals
from celery.exceptions import (
    Ignore,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    Terminated,
    TimeLimitExceeded,
    WorkerLostError,
)
from celery.utils.log import get_logger as celery_logger
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from kombu.exceptions import ContentDisallowed

from aitasks.ondemand.app import (
    HEADER_SUBMITTED_AT,
    HEADER_SUBMITTER,
    HEADER_TRACEPARENT,
    MAX_DETAIL,
    OnDemandApp,
    OnDemandTaskError,
    make_app,
    publish_dead_letter,
)
from aitasks.runtime.settings import Settings

_log = celery_logger(__name__)

#: No verdict on the message: it goes back to the queue (a lost pool process, a shutdown) or Celery
#: already decided its fate (revoked, rejected, ignored, retried).
_NO_VERDICT = (WorkerLostError, SystemExit, KeyboardInterrupt, Terminated, Reject, Ignore, Retry)


# -- the call ------------------------------------------------------------------------------------
def _base_runtime(app: OnDemandApp) -> Any:
    """One runtime per app and process, created in the process that runs calls (after the fork), so
    spans, leases and open files belong to it."""
    from aitasks.runtime.task import RunContext, Runtime

    held = getattr(app, "_aitasks_runtime", None)
    if held is None or held[0] != os.getpid():
        settings = app.aitasks_settings
        rt = Runtime.create(settings, run=RunContext(run_id="ondemand", pipeline="ondemand"))
        rt.lease_ttl_s = settings.ondemand_lease_ttl_s
        held = (os.getpid(), rt)
        app._aitasks_runtime = held  # type: ignore[attr-defined]
    return held[1]


def _header(request: Any, name: str) -> str:
    value = getattr(request, name, None)
    if value is None and isinstance(getattr(request, "headers", None), Mapping):
        value = request.headers.get(name)
    return value if isinstance(value, str) else ""


def _detail(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    from aitasks.runtime import logging as rlog

    return str(rlog.redact(str(exc), secrets=secrets))[:MAX_DETAIL]


def _secrets_of(task: Any, params: Mapping[str, Any]) -> tuple[str, ...]:
    """Raw values of the task's secret inputs, to scrub them out of error texts."""
    from aitasks.runtime.task import _secret_fields

    return tuple(str(params[f]) for f in _secret_fields(task.params_model) if isinstance(params.get(f), str))


def execute(app: OnDemandApp, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], request: Any) -> dict:
    """Run registered task ``name`` for one message; the envelope returned is the Celery result.

    Raises:
        OnDemandTaskError: The call ended without a result; ``kind`` is the dead letter's reason.
    """
    from aitasks.runtime.errors import InvalidInputError
    from aitasks.runtime.retry import error_kind
    from aitasks.runtime.task import RunContext, get_task
    from aitasks.runtime.telemetry import valid_traceparent

    if args or set(kwargs) != {"params"} or not isinstance(kwargs["params"], Mapping):
        raise OnDemandTaskError("invalid_message", "a message carries one keyword argument, 'params' (a JSON object)")
    params = kwargs["params"]
    task = get_task(name)
    settings = app.aitasks_settings
    traceparent = _header(request, HEADER_TRACEPARENT)
    run = RunContext(
        run_id=str(request.id),
        pipeline="ondemand",
        step=name,
        submitter=_header(request, HEADER_SUBMITTER),
        traceparent=traceparent if valid_traceparent(traceparent) else "",
    )
    rt = dataclasses.replace(_base_runtime(app), run=run)
    metrics = ondemand_metrics(rt.telemetry.registry)
    try:
        waited = time.time() - float(_header(request, HEADER_SUBMITTED_AT))
        metrics["queue_wait"].labels(name).observe(max(waited, 0.0))
    except ValueError:
        pass
    try:
        result = task(dict(params), runtime=rt)
    except InvalidInputError as exc:
        raise OnDemandTaskError("invalid_input", _detail(exc)) from None
    except SoftTimeLimitExceeded:
        limit = (request.timelimit or (None, None))[1] or settings.ondemand_soft_time_limit_s
        raise OnDemandTaskError("time_limit", f"soft time limit exceeded ({limit} s)") from None
    except Exception as exc:
        raise OnDemandTaskError(error_kind(exc), _detail(exc, _secrets_of(task, params))) from None
    finally:
        rt.telemetry.provider.force_flush()
    return {
        "task": name,
        "version": task.version,
        "trace_id": run.effective_traceparent()[3:35],
        "result": result.model_dump(mode="json"),
    }


def ondemand_metrics(registry: Any) -> dict[str, Any]:
    """The worker's own metrics, beside the task metrics of the runtime (one set per registry)."""
    cached = _METRICS.get(id(registry))
    if cached is not None:
        return cached
    from prometheus_client import Counter, Histogram

    made = {
        "dead_letters": Counter(
            "aitasks_ondemand_dead_letters",
            "Messages moved to the dead-letter queue, by task and reason.",
            ["task", "reason"],
            registry=registry,
        ),
        "queue_wait": Histogram(
            "aitasks_ondemand_queue_wait_seconds",
            "Time from submit to the start of the call on a worker.",
            ["task"],
            registry=registry,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800),
        ),
    }
    _METRICS[id(registry)] = made
    return made


_METRICS: dict[int, dict[str, Any]] = {}


def _count_dead_letter(app: OnDemandApp, task: str, reason: str) -> None:
    try:
        from aitasks.runtime.telemetry import default_telemetry

        s = app.aitasks_settings
        ondemand_metrics(default_telemetry(s.trace_exporter, s.otlp_endpoint).registry)["dead_letters"].labels(
            task, reason
        ).inc()
    except Exception as exc:  # metrics are best effort; the dead letter is what counts
        _log.warning("aitasks: dead-letter metric failed: %s", exc)


# -- parent process: dead letters ---------------------------------------------------------------
def _dead_letter_or_reject(app: OnDemandApp, message: Any, task: str, reason: str, detail: str) -> bool:
    """Publish ``message`` to the dead-letter queue with ``reason``; True when the broker confirmed it."""
    try:
        publish_dead_letter(app, message, reason, detail)
    except Exception as exc:
        _log.error("aitasks: dead-letter publish failed (%s); rejecting to the queue's DLX instead", exc)
        return False
    _log.warning("aitasks: dead-lettered %s message %s: %s: %s", task, _message_id(message), reason, detail[:200])
    _count_dead_letter(app, task, reason)
    return True


def _message_id(message: Any) -> str:
    headers = message.headers or {}
    return str(headers.get("id") or (message.properties or {}).get("correlation_id") or "?")


class OnDemandRequest(Request):
    """A task message in the pool's parent process: clamps time limits, dead-letters failed calls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The message's ``timelimit`` header may ask for less than the worker's limits, never for more.
        settings = self._app.aitasks_settings
        limits: tuple[float | None, float | None] = tuple(getattr(self, "time_limits", None) or (None, None))
        hard, soft = limits
        hard_max, soft_max = settings.ondemand_time_limit_s, settings.ondemand_soft_time_limit_s
        hard_s, soft_s = min(hard or hard_max, hard_max), min(soft or soft_max, soft_max)
        # The pool arms the hard limit only once the soft one fired: a soft limit at or past the hard one
        # would postpone the kill. It comes down to 90 % of the hard one (time to fail cleanly).
        self.time_limits = (hard_s, soft_s if soft_s < hard_s else 0.9 * hard_s)

    def _dead_letter(self, reason: str, detail: str) -> None:
        if self.acknowledged:
            return
        if not _dead_letter_or_reject(self._app, self._message, self.name, reason, detail):
            self.reject(requeue=False)  # the queue's dead-letter exchange takes it

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        exc = exc_info.exception
        exc = getattr(exc, "exc", exc)  # ExceptionWithTraceback
        if not isinstance(exc, _NO_VERDICT) and not worker_state.should_terminate:
            if isinstance(exc, OnDemandTaskError):
                self._dead_letter(exc.kind, exc.message)
            elif isinstance(exc, TimeLimitExceeded):
                self._dead_letter("time_limit", f"hard time limit exceeded ({exc} s): the pool process was killed")
            else:  # raised outside the call (a bug here, a broken result backend, ...)
                self._dead_letter(type(exc).__name__, str(exc)[:MAX_DETAIL])
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if not soft and not worker_state.should_terminate:
            self._dead_letter("time_limit", f"hard time limit exceeded ({timeout} s): the pool process was killed")
        super().on_timeout(soft, timeout)


class OnDemandConsumer(Consumer):
    """Messages that never reach a task go to the dead-letter queue with the reason (Celery would drop
    an undecodable one and reject the others without saying why)."""

    def _poison(self, message: Any, reason: str, detail: str) -> None:
        app: OnDemandApp = self.app
        name = str((message.headers or {}).get("task") or "?")
        if _dead_letter_or_reject(app, message, name, reason, detail):
            message.ack()
        else:
            message.reject_log_error(_log, self.connection_errors)
        task_id = (message.headers or {}).get("id")
        if isinstance(task_id, str) and task_id:
            # The submitter may be waiting: give it the verdict instead of PENDING forever.
            try:
                app.backend.mark_as_failure(task_id, OnDemandTaskError(reason, detail[:MAX_DETAIL]))
            except Exception as exc:
                _log.warning("aitasks: could not store the failure of %s: %s", task_id, exc)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._poison(message, "undecodable", f"{type(exc).__name__}: {exc}")

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._poison(message, "invalid_message", "not a task message (no task name)")

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = (message.headers or {}).get("task")
        self._poison(message, "unknown_task", f"no task {name!r} is registered on this worker")

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        reason = "content_disallowed" if isinstance(exc, ContentDisallowed) else "invalid_message"
        self._poison(message, reason, f"{type(exc).__name__}: {exc}")


# -- tasks -----------------------------------------------------------------------------------------
class OnDemandCeleryTask(CeleryTask):
    """Base of the Celery tasks that stand for registered tasks."""

    Request = OnDemandRequest
    #: Expected failures: logged in one line, without a traceback (the runtime logged the details).
    throws = (OnDemandTaskError,)
    typing = False  # the body checks the message shape itself (a bad one is dead-lettered, not dropped)
    acks_late = True
    reject_on_worker_lost = True


def register_tasks(app: OnDemandApp, names: Iterable[str]) -> None:
    """Make each registered task ``name`` a Celery task of the same name on ``app``."""

    def body(self: Any, *args: Any, **kwargs: Any) -> dict:
        return execute(self.app, self.name, args, kwargs, self.request)

    for name in names:
        app.task(name=name, bind=True, base=OnDemandCeleryTask)(body)


# -- health and metrics ------------------------------------------------------------------------------
ALIVE, READY = "alive", "ready"


class _Alive(bootsteps.StartStopStep):
    """Touches ``<health_dir>/alive`` every 10 s from the worker's timer (liveness probe: a fresh file)."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.tref: Any = None

    def start(self, worker: Any) -> None:
        path = Path(worker.app.health_dir) / ALIVE
        path.touch()
        self.tref = worker.timer.call_repeatedly(10.0, path.touch, priority=10)

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
        (Path(worker.app.health_dir) / ALIVE).unlink(missing_ok=True)


class _Ready(bootsteps.StartStopStep):
    """``<health_dir>/ready`` exists while the consumer is connected and consuming (readiness probe)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        (Path(c.app.health_dir) / READY).touch()

    def stop(self, c: Any) -> None:
        (Path(c.app.health_dir) / READY).unlink(missing_ok=True)

    def shutdown(self, c: Any) -> None:
        self.stop(c)


def prepare_metrics_dir(pool: str, port: int) -> str:
    """For a prefork worker serving metrics: a clean ``PROMETHEUS_MULTIPROC_DIR`` (set before anything
    imports prometheus_client), so the pool processes' samples add up on the parent's ``/metrics``."""
    if pool != "prefork" or not port:
        return ""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if not path:
        path, owner = tempfile.mkdtemp(prefix="aitasks-metrics-"), os.getpid()

        def _remove() -> None:
            if os.getpid() == owner:  # not in a forked pool process
                shutil.rmtree(path, ignore_errors=True)

        atexit.register(_remove)
    shutil.rmtree(path, ignore_errors=True)  # samples of a previous run of this container are stale
    Path(path).mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def _serve_metrics(settings: Settings, multiproc_dir: str) -> None:
    from prometheus_client import CollectorRegistry, start_http_server

    if multiproc_dir:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiproc_dir)

        @signals.worker_process_shutdown.connect(weak=False)
        def _dead(pid: int | None = None, **_: Any) -> None:
            multiprocess.mark_process_dead(pid or os.getpid(), multiproc_dir)
    else:
        from aitasks.runtime.telemetry import default_telemetry

        registry = default_telemetry(settings.trace_exporter, settings.otlp_endpoint).registry
    start_http_server(settings.metrics_port, registry=registry)


def build_worker_app(settings: Settings, include: Iterable[str] = (), health_dir: str = "") -> OnDemandApp:
    """The app a worker runs: every built-in task (plus the tasks of ``include`` modules) registered."""
    import importlib

    from aitasks.runtime.task import load_builtin_tasks, registry

    load_builtin_tasks()
    for module in include:
        importlib.import_module(module)
    app = make_app(settings)
    register_tasks(app, registry())
    if health_dir:
        Path(health_dir).mkdir(parents=True, exist_ok=True)
        app.health_dir = health_dir
        app.steps["worker"].add(_Alive)
        app.steps["consumer"].add(_Ready)
    return app


def run_worker(
    settings: Settings,
    *,
    pool: str = "prefork",
    concurrency: int = 1,
    include: Iterable[str] = (),
    hostname: str = "",
    health_dir: str = "",
    loglevel: str = "INFO",
    max_tasks_per_child: int = 0,
) -> None:
    """Run a worker on ``settings.ondemand_queue`` until it is stopped (SIGTERM: warm shutdown).

    Args:
        settings: Broker, result backend, queue, limits; ``metrics_port`` > 0 serves ``/metrics``.
        pool: ``prefork`` (production: time limits, a killed call does not take the worker down),
            ``solo`` or ``threads``.
        concurrency: Pool processes (one per pod scales best with the autoscaler).
        include: Modules whose import registers more tasks.
        hostname: Celery node name (default ``aitasks-<random>@<host>``; unique per worker).
        health_dir: Keep liveness/readiness files there (Kubernetes exec probes).
        max_tasks_per_child: Replace a pool process after this many calls (0: never).
    """
    multiproc_dir = prepare_metrics_dir(pool, settings.metrics_port)
    app = build_worker_app(settings, include, health_dir)
    with app.connection_for_write() as conn:
        app.topology.declare(conn)
    if settings.metrics_port:
        _serve_metrics(settings, multiproc_dir)
    argv = [
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--queues={app.topology.queue}",
        f"--hostname={hostname or f'aitasks-{uuid.uuid4().hex[:8]}@%h'}",
        f"--loglevel={loglevel}",
        # No chatter between workers: each one only consumes its queue.
        "--without-gossip",
        "--without-mingle",
    ]
    if max_tasks_per_child:
        argv.append(f"--max-tasks-per-child={max_tasks_per_child}")
    app.worker_main(argv)
