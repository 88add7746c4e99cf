"""The task contract: one decorator turns a typed function into a registered platform task.

.. code-block:: python

    @ai_task(name="data.ingest", version="1.0.0", retry=RetryPolicy(max_attempts=3))
    def ingest_events_task(params: IngestParams, ctx: TaskContext) -> IngestResult:
        '''EN: ... FR: ... DE: ...'''

Calling ``ingest_events_task(params)`` then:

1. validates the input against the strict input model (unknown fields, wrong types, NaN and out of
   range values are refused with :class:`InvalidInputError` naming every field; never retried);
2. computes the idempotency key from task name, version, code fingerprint (the source of the task's
   module and the first-party modules it imports), canonical inputs (secrets left out) and the content
   hashes of the input artifacts (fields typed :data:`InputArtifact`);
3. returns the committed result if the key was committed before (and its output artifacts still
   exist), logging and auditing an ``idempotent_hit`` that says why the result was reused;
4. otherwise runs the function inside a span, retrying only retryable errors with bounded
   exponential backoff and jitter, within the task's retry budget and wall-clock deadline (the body
   runs in a worker thread the call stops waiting for at the deadline: see :func:`_call_body`);
5. validates the output, commits it create-only (a lost race returns the winner's result), writes
   an audit record and updates the metrics.
"""

from __future__ import annotations

import contextvars
import inspect
import os
import random
import threading
import time
import typing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    SecretStr,
    ValidationError,
    model_validator,
)

from aitasks.runtime import logging as rlog
from aitasks.runtime.audit import AuditLog, StorageAuditLog, audit_from_settings
from aitasks.runtime.errors import (
    DataFormatError,
    FieldIssue,
    InvalidInputError,
    InvalidOutputError,
    NotRetriedError,
    PreconditionFailedError,
    UnsafePathError,
)
from aitasks.runtime.fingerprint import code_fingerprint
from aitasks.runtime.hashing import sha256_json
from aitasks.runtime.idempotency import LEASE_TTL_S, LEASE_WAIT_S, IdempotencyStore, Lease, lease_expired
from aitasks.runtime.inputs import validate_strict
from aitasks.runtime.retry import DeadlineExceededError, RetryPolicy, error_kind, is_retryable
from aitasks.runtime.settings import Settings, load_settings
from aitasks.runtime.storage import Storage, confine, is_gcs, join_uri, publish_local_file, storage_for
from aitasks.runtime.telemetry import (
    Telemetry,
    child_env,
    current_traceparent,
    default_telemetry,
    derived_traceparent,
    parent_context,
)


class TaskModel(BaseModel):
    """Base of every task input and output model: strict, frozen, finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, validate_default=True)

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        """Facts to attach to the exported artifact of output field ``field`` (KFP UI metadata).

        Results override this; the step adapter always adds the artifact's stable storage URI.
        """
        return {}


@dataclass(frozen=True)
class Metric:
    """Marks a result field as a step metric (logged to the KFP ``Metrics`` artifact by the adapter).

    A number or bool is logged under ``name`` (default: the field name); a list or tuple as its length;
    a mapping of numbers as one metric per key, named ``prefix + key``.
    """

    name: str = ""
    prefix: str = ""


def metric_fields(model: type[BaseModel]) -> dict[str, Metric]:
    """The fields of ``model`` marked with :class:`Metric`, in declaration order."""
    out: dict[str, Metric] = {}
    for name, info in model.model_fields.items():
        for m in info.metadata:
            if isinstance(m, Metric):
                out[name] = m
    return out


def metric_values(result: BaseModel) -> dict[str, float]:
    """The step metrics of a result: ``{metric name: value}`` from its :class:`Metric` fields."""
    out: dict[str, float] = {}
    for name, marker in metric_fields(type(result)).items():
        value = getattr(result, name)
        if value is None:
            continue
        if isinstance(value, Mapping):
            for key, v in sorted(value.items()):
                if isinstance(v, bool | int | float):
                    out[f"{marker.prefix}{key}"] = float(v)
        elif isinstance(value, list | tuple):
            out[marker.name or name] = float(len(value))
        elif isinstance(value, bool | int | float):
            out[marker.name or name] = float(value)
        else:
            raise TypeError(f"metric field {name!r} holds {type(value).__name__}: not a number, list or mapping")
    return out


def current_hour() -> datetime:
    """Now (UTC) floored to the hour: retries and re-runs within the hour share one idempotency key."""
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def _as_of(value: Any) -> Any:
    """Empty or missing: the current hour (UTC)."""
    if value is None or value == "":
        return current_hour()
    return value


#: A run's reference time: an ISO 8601 time with timezone, or empty for the current hour (UTC). It is
#: resolved when the input is validated, so the resolved time joins the idempotency key.
AsOfTime = Annotated[AwareDatetime, BeforeValidator(_as_of)]


def _real_time(value: Any) -> bool:
    """A resolved, plausible run time: not empty, not an unresolved KFP placeholder, not the epoch."""
    if not isinstance(value, str) or not value or value.startswith("{{"):
        return False
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return parsed.tzinfo is not None and parsed.year > 1970


class LogicalTimeParams(TaskModel):
    """Inputs with an ``as_of`` logical time, resolved once per run so every retry shares one key.

    ``as_of`` given: it wins. Otherwise the step's ``scheduled_time`` (a recurring run's scheduled time,
    KFP placeholder ``{{$.pipeline_job_schedule_time_utc}}``), else ``run_created_time`` (a one-off run's
    creation time), else the current hour (direct calls). The two run times are not inputs of their own:
    they only decide ``as_of``, which joins the idempotency key.
    """

    @model_validator(mode="before")
    @classmethod
    def _logical_time(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        scheduled, created = data.pop("scheduled_time", ""), data.pop("run_created_time", "")
        if not data.get("as_of"):
            chosen = next((t for t in (scheduled, created) if _real_time(t)), None)
            if chosen is not None:
                data["as_of"] = chosen
        return data


def _empty_to_none(value: Any) -> Any:
    return None if value == "" else value


#: Marks an optional input where an empty string (a KFP parameter left blank) means "not given".
EmptyIsNone = BeforeValidator(_empty_to_none)


@dataclass(frozen=True)
class ArtifactRef:
    """Marks a ``str`` field as an artifact URI (``direction`` = ``input`` or ``output``)."""

    direction: str


#: An input URI whose *content hash* joins the idempotency key (same path, new content: new key).
InputArtifact = Annotated[str, ArtifactRef("input")]
#: An output URI in a result; a committed result is reused only while its outputs still exist.
OutputArtifact = Annotated[str, ArtifactRef("output")]


@dataclass(frozen=True)
class Location:
    """Marks a ``str`` field as a location the task reads (``read``) or publishes under (``write``)."""

    access: str


#: A directory, prefix or file the task reads without hashing it as an artifact (a catalog root, a manifest).
InputLocation = Annotated[str, Location("read")]
#: A root the task publishes under (e.g. an index publish root).
PublishLocation = Annotated[str, Location("write")]


def _confined_fields(model: type[BaseModel]) -> dict[str, str]:
    """``{field: "read" | "write"}``: every artifact or location field, optional ones included."""

    def access(meta: Any) -> str | None:
        if isinstance(meta, ArtifactRef):
            return "read" if meta.direction == "input" else None
        return meta.access if isinstance(meta, Location) else None

    def find(tp: Any) -> str | None:
        for m in getattr(tp, "__metadata__", ()):
            if (a := access(m)) is not None:
                return a
        return next((a for arg in typing.get_args(tp) if (a := find(arg)) is not None), None)

    out = {}
    for name, info in model.model_fields.items():
        found = next((a for m in info.metadata if (a := access(m)) is not None), None) or find(info.annotation)
        if found is not None:
            out[name] = found
    return out


def confine_inputs(task: str, model: type[BaseModel], params: BaseModel, settings: Settings) -> None:
    """Refuse any artifact or location input outside the storage root and the allowed roots (not retried).

    Reads: the storage root and ``AITASKS_INPUT_ROOTS``; publish roots: the storage root and
    ``AITASKS_PUBLISH_ROOTS``. Checked after normalisation and symlink resolution, before anything is
    read (the content hashes of the key included); the error names the field and never a file's content.
    """
    issues = []
    for f, access in _confined_fields(model).items():
        uri = getattr(params, f)
        if not uri:
            continue
        extra = settings.input_roots if access == "read" else settings.publish_roots
        setting = "AITASKS_INPUT_ROOTS" if access == "read" else "AITASKS_PUBLISH_ROOTS"
        for i, one in enumerate(uri if isinstance(uri, list | tuple) else [uri]):
            try:
                confine(str(one), [settings.storage_root, *extra])
            except UnsafePathError as exc:
                where = f"{f}.{i}" if isinstance(uri, list | tuple) else f
                issues.append(FieldIssue(where, f"{exc} (the storage root, or add a root to {setting})"))
    if issues:
        raise InvalidInputError(task, issues)


def _artifact_fields(model: type[BaseModel], direction: str) -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        if any(isinstance(m, ArtifactRef) and m.direction == direction for m in info.metadata):
            out.append(name)
    return out


def _secret_fields(model: type[BaseModel]) -> list[str]:
    """Fields typed ``SecretStr`` (optional or not): kept out of keys, logs and audit."""

    def is_secret(tp: Any) -> bool:
        return tp is SecretStr or any(is_secret(a) for a in typing.get_args(tp))

    return [n for n, i in model.model_fields.items() if is_secret(i.annotation)]


@dataclass(frozen=True)
class RunContext:
    """Who runs what, where: reaches every step as task inputs (KFP placeholders) or environment."""

    run_id: str = "local"
    pipeline: str = ""
    pipeline_version: str = ""
    step: str = ""
    submitter: str = ""
    git_revision: str = ""
    traceparent: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RunContext:
        e = os.environ if env is None else env
        return cls(
            run_id=e.get("AITASKS_RUN_ID", "local"),
            pipeline=e.get("AITASKS_PIPELINE", ""),
            pipeline_version=e.get("AITASKS_PIPELINE_VERSION", ""),
            step=e.get("AITASKS_STEP", ""),
            submitter=e.get("AITASKS_SUBMITTER", ""),
            git_revision=e.get("AITASKS_GIT_REVISION", ""),
            traceparent=e.get("TRACEPARENT", ""),
        )

    def effective_traceparent(self) -> str:
        return self.traceparent or derived_traceparent(self.run_id)


@dataclass
class Runtime:
    """Everything a task call needs from its surroundings; built once per process or step."""

    settings: Settings
    run: RunContext
    telemetry: Telemetry
    audit: AuditLog | StorageAuditLog
    storage: Storage
    idempotency: IdempotencyStore
    sleep: Callable[[float], None] = time.sleep
    #: A key's lease lives this long without renewal (the holder renews it every quarter of it).
    lease_ttl_s: float = LEASE_TTL_S
    #: The longest a call waits for another holder's commit of the same key.
    lease_wait_s: float = LEASE_WAIT_S
    #: Append a ``started`` audit record before the body runs (a killed or hung call leaves a trace).
    audit_started: bool = True

    @classmethod
    def create(
        cls,
        settings: Settings | None = None,
        run: RunContext | None = None,
        telemetry: Telemetry | None = None,
        storage: Storage | None = None,
    ) -> Runtime:
        s = settings or load_settings()
        # In production a runtime never starts on an embedded default (local disk, sqlite, dev key).
        s.check_production()
        rlog.configure_logging(s.log_level, s.log_format, s.pseudonymization_key.get_secret_value())
        rlog.register_settings(s)  # its secrets (keys, URL passwords) never leave the process
        st = storage or storage_for(s.storage_root)
        return cls(
            settings=s,
            run=run or RunContext.from_env(),
            telemetry=telemetry or default_telemetry(s.trace_exporter, s.otlp_endpoint),
            audit=audit_from_settings(s),
            storage=st,
            idempotency=IdempotencyStore(st, s.storage_root),
        )


@dataclass
class TaskContext:
    """Per-call context handed to the task function."""

    runtime: Runtime
    task: str
    version: str
    key: str
    attempt: int
    log: Any
    span: Any
    workdir: str
    secrets: tuple[str, ...] = field(default=(), repr=False)
    #: Set when the call stopped waiting for this attempt (its deadline passed): a long body may check
    #: it between steps and stop early; nothing it returns afterwards is used.
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def storage(self) -> Storage:
        return self.runtime.storage

    @property
    def trace_id(self) -> str:
        return f"{self.span.get_span_context().trace_id:032x}"

    @property
    def traceparent(self) -> str:
        """Hand this to child steps (task input) so they continue this trace."""
        return current_traceparent(self.span)

    def child_env(self) -> dict[str, str]:
        """Environment for a subprocess that continues this trace."""
        return child_env(self.span)

    def output_uri(self, *parts: str) -> str:
        """A URI under this call's work directory (keyed by the idempotency key, so retries overwrite)."""
        return join_uri(self.workdir, *parts)

    @contextmanager
    def publish(self, uri: str) -> Iterator[Path]:
        """Write to the yielded local path; it is published atomically to ``uri`` on success."""
        with publish_local_file(uri, self.storage) as p:
            yield p


P = TypeVar("P", bound=TaskModel)
R = TypeVar("R", bound=TaskModel)

_REGISTRY: dict[str, Task[Any, Any]] = {}


def _issues(task: str, exc: ValidationError) -> InvalidInputError:
    issues = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ())) or "<input>"
        issues.append(FieldIssue(loc, str(err.get("msg", "invalid"))))
    return InvalidInputError(task, issues)


class Task(Generic[P, R]):
    """A registered platform task. Call it like the function it wraps (without ``ctx``)."""

    def __init__(
        self,
        fn: Callable[[P, TaskContext], R],
        *,
        name: str,
        version: str,
        retry: RetryPolicy,
        params_model: type[P],
        result_model: type[R],
        state: Callable[[P, Runtime], Mapping[str, Any]] | None = None,
        verify: Callable[[P, R, Runtime], str | None] | None = None,
        deadline_s: float | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.version = version
        self.retry = retry
        self.state = state
        self.verify = verify
        self.deadline_s = deadline_s
        self.params_model = params_model
        self.result_model = result_model
        self.doc = inspect.getdoc(fn) or ""
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__module__ = fn.__module__

    def __repr__(self) -> str:
        return f"<Task {self.name}@{self.version}>"

    # -- inputs -------------------------------------------------------------------------------
    def validate(self, params: P | Mapping[str, Any]) -> P:
        """Validate raw input (mapping) or re-check a model instance. Raises InvalidInputError."""
        try:
            if isinstance(params, self.params_model):
                return self.params_model.model_validate(params.model_dump())
            if isinstance(params, BaseModel):
                raise InvalidInputError(
                    self.name,
                    [FieldIssue("<input>", f"expected {self.params_model.__name__}, got {type(params).__name__}")],
                )
            if not isinstance(params, Mapping):
                raise InvalidInputError(self.name, [FieldIssue("<input>", "expected a mapping of fields")])
            return validate_strict(self.name, self.params_model, params)
        except ValidationError as exc:
            raise _issues(self.name, exc) from None

    def canonical_inputs(self, params: P) -> dict[str, Any]:
        """The inputs that define the work: everything but secrets, JSON-normalised."""
        return params.model_dump(mode="json", exclude=set(_secret_fields(self.params_model)))

    @property
    def code_fingerprint(self) -> str:
        """sha256 of the task's module source and the first-party modules it imports (computed once)."""
        return code_fingerprint(self.fn)

    def key_parts(self, params: P, rt: Runtime, *, state: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What the idempotency key hashes: task, version, code, inputs, input artifacts' content, state."""
        hashes: dict[str, str] = {}
        for f in _artifact_fields(self.params_model, "input"):
            uri = getattr(params, f)
            if uri is None:
                continue
            try:
                hashes[f] = _storage_of(uri, rt).content_hash(uri)
            except FileNotFoundError:
                raise InvalidInputError(self.name, [FieldIssue(f, f"artifact not found: {uri}")]) from None
        # Artifacts count by content, not by where they lie: the same bytes at another path (a new KFP
        # output directory on every run) are the same work.
        inputs = {k: v for k, v in self.canonical_inputs(params).items() if k not in hashes}
        payload: dict[str, Any] = {
            "task": self.name,
            "version": self.version,
            "code": self.code_fingerprint,
            "inputs": inputs,
            "artifacts": hashes,
        }
        state = self.external_state(params, rt) if state is None else state
        if state:
            payload["state"] = dict(state)
        return payload

    def idempotency_key(
        self, params: P, rt: Runtime, *, state: Mapping[str, Any] | None = None
    ) -> tuple[str, dict[str, str]]:
        """Key = hash of task name, version, code fingerprint, canonical inputs and input artifacts' hashes."""
        parts = self.key_parts(params, rt, state=state)
        return sha256_json(parts), parts["artifacts"]

    def external_state(self, params: P, rt: Runtime) -> dict[str, Any]:
        """Outside state the result depends on (e.g. the current champion model): part of the key."""
        if self.state is None:
            return {}
        return dict(self.state(params, rt))

    # -- call ---------------------------------------------------------------------------------
    def __call__(self, params: P | Mapping[str, Any], *, runtime: Runtime | None = None) -> R:
        rt = runtime or Runtime.create()
        return _execute(self, params, rt)

    def run(self, params: P | Mapping[str, Any], *, runtime: Runtime | None = None) -> R:
        return self(params, runtime=runtime)

    # -- fault budget -------------------------------------------------------------------------
    def deadline(self, settings: Settings) -> float:
        """Seconds this task's call may take in all (settings by name or ``*``, else its own, else the default)."""
        return settings.task_deadline_s(self.name, self.deadline_s)

    def retry_policy(self, settings: Settings) -> RetryPolicy:
        """The retry policy with the retry budget the settings give this task (else the declared one)."""
        budget = settings.task_retry_budget_s(self.name, self.retry.budget_s)
        return self.retry if budget == self.retry.budget_s else self.retry.model_copy(update={"budget_s": budget})


def storage_of(uri: str, rt: Runtime) -> Storage:
    """The runtime's storage when ``uri`` is of its kind, else the storage serving ``uri``."""
    return rt.storage if is_gcs(uri) == is_gcs(rt.settings.storage_root) else storage_for(uri)


_storage_of = storage_of


class _Deadline:
    """A call's wall-clock deadline: ``seconds`` from now (monotonic clock)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def passed(self) -> bool:
        return self.remaining() <= 0

    def error(self, task: str, during: str) -> DeadlineExceededError:
        return DeadlineExceededError(f"task {task!r} passed its deadline of {self.seconds:g} s {during}")


class _RetryBudget:
    """Which bound, if any, stops the retries of a failed attempt: kind, attempts, budget, deadline.

    Time spent retrying counts from the first failure; it is the larger of the wall clock and the sum of
    backoffs (a runtime with a fake ``sleep``, as in tests, then still sees its budget run out).
    """

    def __init__(self, policy: RetryPolicy, deadline: _Deadline) -> None:
        self.policy = policy
        self.deadline = deadline
        self.first_failure: float | None = None
        self.slept = 0.0

    def used(self) -> float:
        if self.first_failure is None:
            return 0.0
        return max(time.monotonic() - self.first_failure, self.slept)

    def stop(self, err: BaseException, attempt: int, delay: float) -> str | None:
        """``None`` to retry after ``delay``, else why not: a reason recorded in the audit."""
        if self.first_failure is None:
            self.first_failure = time.monotonic()
        if isinstance(err, DeadlineExceededError):
            return "deadline"
        if not is_retryable(err):
            return "not_retryable"
        if attempt >= self.policy.max_attempts:
            return "max_attempts"
        if self.used() + delay > self.policy.budget_s:
            return "budget"
        if self.deadline.remaining() <= delay:
            return "deadline"
        return None

    def waited(self, delay: float) -> None:
        self.slept += delay

    def summary(self, stopped: str | None, attempts: int) -> dict[str, Any]:
        return {
            "stopped_by": stopped or "",
            "attempts": attempts,
            "retrying_for_s": round(self.used(), 3),
            "budget_s": self.policy.budget_s,
            "max_attempts": self.policy.max_attempts,
            "deadline_s": self.deadline.seconds,
        }


def _call_body(task: Task[P, R], params: P, ctx: TaskContext, deadline: _Deadline) -> Any:
    """Run one attempt of the task's body, waiting for it at most until the call's deadline.

    The body runs in a daemon worker thread with a copy of the caller's context (span, log binding,
    registered secrets), and the caller waits on an event with a timeout. This interrupts any body, in
    any thread of the caller (a signal alarm works only in the main thread and would raise inside
    arbitrary code, half-written files and held locks included). When the deadline passes the caller
    stops waiting: it sets ``ctx.cancelled``, fails the attempt with :class:`DeadlineExceededError`
    (audited ``failed``) and releases the key's lease. The abandoned body is not killed (Python cannot
    stop a thread): it runs on until its blocked call returns, which the explicit client timeouts
    bound, and whatever it returns is dropped. It never commits (only the caller does), it writes only
    into this attempt's private working directory, and its service side effects carry their own
    idempotency keys, so a later attempt finishes or reuses them. In a step pod the process exits
    after the failure and the daemon thread ends with it.
    """
    remaining = deadline.remaining()
    if remaining <= 0:
        raise deadline.error(task.name, f"before attempt {ctx.attempt}")
    outcome: list[tuple[bool, Any]] = []
    done = threading.Event()
    context = contextvars.copy_context()

    def body() -> None:
        try:
            outcome.append((True, context.run(task.fn, params, ctx)))
        except BaseException as exc:  # handed to the caller, whatever it is
            outcome.append((False, exc))
        finally:
            done.set()

    worker = threading.Thread(target=body, name=f"task-{task.name}-{ctx.attempt}", daemon=True)
    worker.start()
    if not done.wait(remaining):
        ctx.cancelled.set()
        ctx.log.error(
            "task.deadline_exceeded",
            deadline_s=deadline.seconds,
            note="attempt abandoned: its worker thread runs on until its blocked call returns; its result is dropped",
        )
        raise deadline.error(task.name, f"during attempt {ctx.attempt} (the body did not return)")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def _verified(task: Task[P, Any], params: P, committed: Mapping[str, Any], rt: Runtime) -> str | None:
    """Why a committed record cannot be reused (``None``: it can): :func:`_damage`, then the task's own check.

    A task declares ``verify`` when its result stands for state outside its outputs (rows in an online
    store, ...): a lost or partial outside state is then run again, like a damaged output. A check that
    fails (its service unreachable) counts as "cannot verify": the body runs and meets the same service
    inside the retry loop, with its budget.
    """
    reason = _damage(task, committed, rt)
    if reason is not None or task.verify is None:
        return reason
    try:
        return task.verify(params, task.result_model.model_validate(committed["result"]), rt)
    except Exception as exc:
        return f"outside state could not be verified ({error_kind(exc)}): running again"


def _execute(task: Task[P, R], raw: P | Mapping[str, Any], rt: Runtime) -> R:
    t0 = time.perf_counter()
    deadline = _Deadline(task.deadline(rt.settings))
    tel = rt.telemetry
    run = rt.run
    base_audit = {
        "task": task.name,
        "version": task.version,
        "actor": rt.settings.actor,
        "run_id": run.run_id,
        "pipeline": run.pipeline,
        "pipeline_version": run.pipeline_version,
        "step": run.step,
        "submitter": run.submitter,
        "git_revision": run.git_revision,
    }
    with tel.tracer.start_as_current_span(
        f"task {task.name}", context=parent_context(run.effective_traceparent())
    ) as span:
        trace_id = f"{span.get_span_context().trace_id:032x}"
        span.set_attribute("aitasks.task", task.name)
        span.set_attribute("aitasks.version", task.version)
        span.set_attribute("aitasks.run_id", run.run_id)
        log = rlog.get_logger(task=task.name, version=task.version, run_id=run.run_id, trace_id=trace_id)
        try:
            params = task.validate(raw)
            confine_inputs(task.name, task.params_model, params, rt.settings)
        except InvalidInputError as exc:
            _finish(
                task,
                rt,
                span,
                log,
                t0,
                "rejected",
                {
                    **base_audit,
                    "trace_id": trace_id,
                    "attempt": 0,
                    "error": {"kind": exc.kind, "fields": list(exc.fields)},
                },
            )
            log.warning("task.rejected", error=str(exc))
            raise
        secrets = tuple(
            v.get_secret_value() for f in _secret_fields(task.params_model) if (v := getattr(params, f)) is not None
        )
        # Resetting the first token restores the state before all of this call's secrets.
        tokens = [rlog.register_secret(s) for s in secrets]
        rlog.register_user_fields(task.canonical_inputs(params))  # user ids in inputs: pseudonymised in any text
        try:
            return _run_keyed(task, params, rt, span, log, t0, base_audit, trace_id, secrets, deadline)
        finally:
            if tokens:
                rlog.reset_secrets(tokens[0])


def _run_keyed(
    task: Task[P, R],
    params: P,
    rt: Runtime,
    span: Any,
    log: Any,
    t0: float,
    base_audit: dict[str, Any],
    trace_id: str,
    secrets: tuple[str, ...],
    deadline: _Deadline,
) -> R:
    state = task.external_state(params, rt)
    parts = task.key_parts(params, rt, state=state)
    key, artifact_hashes = sha256_json(parts), parts["artifacts"]
    input_hash = key  # the key *is* the hash of everything that defines the inputs
    span.set_attribute("aitasks.idempotency_key", key)
    log = log.bind(key=key[:16])
    audit = {
        **base_audit,
        "trace_id": trace_id,
        "idempotency_key": key,
        "input_hash": input_hash,
        "input_artifacts": artifact_hashes,
        "key_parts": _key_summary(parts),
    }
    if state:
        audit["state"] = state

    # A committed result is reused only once verified: its record's hashes and every output's content.
    committed = rt.idempotency.get(task.name, key)
    rerun_reason: str | None = None
    if committed is not None:
        rerun_reason = _verified(task, params, committed, rt)
        if rerun_reason is None:
            return _hit(task, rt, span, log, t0, audit, committed, "reused")

    # One execution per key: take the key's lease, or wait for its holder's commit.
    try:
        got = _acquire(task, params, key, rt, log, deadline)
    except DeadlineExceededError as exc:
        log.error("task.failed", attempt=0, error_kind=exc.kind, error=str(exc), retryable=True)
        _finish(
            task, rt, span, log, t0, "failed", {**audit, "attempt": 0, "error": {"kind": exc.kind, "message": str(exc)}}
        )
        raise
    if not isinstance(got, Lease):
        return _hit(task, rt, span, log, t0, audit, got, "lost_race")
    lease = got
    try:
        return _run_leased(task, params, rt, span, log, t0, audit, secrets, key, lease, rerun_reason, deadline)
    finally:
        lease.release()


def _acquire(
    task: Task[P, Any], params: P, key: str, rt: Runtime, log: Any, call_deadline: _Deadline
) -> Lease | dict[str, Any]:
    """The key's lease, or the verified committed record another holder left while we waited.

    Waits with capped exponential backoff and jitter, up to ``rt.lease_wait_s`` (and never past the
    call's deadline); a lease whose holder stopped renewing it (killed, hung) is taken over once it expires.

    Raises:
        PreconditionFailedError: Another live holder kept the lease for the whole wait (retryable).
        DeadlineExceededError: The call's deadline passed while waiting.
    """
    deadline = min(time.monotonic() + rt.lease_wait_s, call_deadline.at)
    delay = 0.02
    waited = False
    while True:
        got = rt.idempotency.try_lease(task.name, key, run_id=rt.run.run_id, ttl_s=rt.lease_ttl_s)
        if isinstance(got, Lease):
            if got.taken_over is not None:
                log.warning(
                    "task.lease_taken_over",
                    previous_run=got.taken_over.get("run_id"),
                    previous_host=got.taken_over.get("host"),
                    previous_pid=got.taken_over.get("pid"),
                    released=bool(got.taken_over.get("released")),
                )
            got.start()
            return got
        if got is not None and not waited:
            waited = True
            log.info("task.waiting_for_lease", holder_run=got.get("run_id"), holder_host=got.get("host"))
        committed = rt.idempotency.get(task.name, key)
        if committed is not None and _verified(task, params, committed, rt) is None:
            return committed
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            holder = got or {}
            if call_deadline.passed():
                raise call_deadline.error(task.name, f"waiting for the lease of run {holder.get('run_id', '?')}")
            raise PreconditionFailedError(
                f"task {task.name!r}: another attempt (run {holder.get('run_id', '?')}, host "
                f"{holder.get('host', '?')}) holds the lease of this key and did not commit within "
                f"{rt.lease_wait_s:g} s"
            )
        time.sleep(min(remaining, delay * random.uniform(0.5, 1.0)))  # noqa: S311 - jitter, not a secret
        delay = min(delay * 2, 1.0)


def _run_leased(
    task: Task[P, R],
    params: P,
    rt: Runtime,
    span: Any,
    log: Any,
    t0: float,
    audit: dict[str, Any],
    secrets: tuple[str, ...],
    key: str,
    lease: Lease,
    rerun_reason: str | None,
    deadline: _Deadline,
) -> R:
    # Committed while we looked the other way (its holder released the lease after its commit).
    committed = rt.idempotency.get(task.name, key)
    if committed is not None:
        reason = _verified(task, params, committed, rt)
        if reason is None:
            return _hit(task, rt, span, log, t0, audit, committed, "reused")
        rerun_reason = reason
    if rerun_reason is not None:
        log.warning("task.committed_result_rejected", rerun_reason=rerun_reason, note="running again")
        audit = {**audit, "rerun_reason": rerun_reason}
        if committed is not None:
            rt.idempotency.forget(task.name, key)

    # A retry of the same work in the same run (KFP's retry policy retries every failure) after a
    # non-retryable failure: fail at once with the first error. New inputs or new code mean a new key.
    in_run = rt.run.run_id not in ("", "local")
    prior = rt.idempotency.failure(task.name, key, rt.run.run_id) if in_run else None
    if prior is not None:
        not_retried = NotRetriedError(
            f"task {task.name!r} already failed in run {rt.run.run_id} with a non-retryable "
            f"{prior.get('kind', 'error')}: {prior.get('message', '')} (not retried: fix the cause, start a new run)"
        )
        log.error("task.not_retried", first_error_kind=prior.get("kind"))
        _finish(task, rt, span, log, t0, "failed", {**audit, "attempt": 0, "error": {"kind": not_retried.kind}})
        raise not_retried

    log.info("task.started", inputs=task.canonical_inputs(params))
    # A private working directory per execution: a late or taken-over attempt never writes where the
    # committed outputs lie (they are published from the winner's own directory).
    workdir = join_uri(rt.settings.storage_root, "tasks", task.name, key[:32], lease.token)
    audit = {**audit, "lease": lease.token}
    if lease.taken_over is not None:
        audit["lease_taken_over"] = {
            k: lease.taken_over.get(k) for k in ("run_id", "host", "pid", "acquired_at", "released")
        }
    if rt.audit_started:
        # Before the body: a call killed or hung from here on leaves this trace.
        rt.audit.append({**audit, "status": "started", "attempt": 0, "workdir": workdir})
    attempt = 0
    policy = task.retry_policy(rt.settings)
    budget = _RetryBudget(policy, deadline)
    while True:
        attempt += 1
        ctx = TaskContext(rt, task.name, task.version, key, attempt, log.bind(attempt=attempt), span, workdir, secrets)
        try:
            out = _call_body(task, params, ctx, deadline)
            if isinstance(out, Mapping):
                out = task.result_model.model_validate(dict(out))
            if not isinstance(out, task.result_model):
                raise InvalidOutputError(
                    f"task {task.name!r} returned {type(out).__name__}, expected {task.result_model.__name__}"
                )
            # Round-trip through JSON: what we commit must be what a later hit returns.
            result_json = out.model_dump(mode="json")
            result = task.result_model.model_validate(result_json)
            break
        except ValidationError as exc:
            err: BaseException = InvalidOutputError(f"task {task.name!r} returned invalid output: {exc}")
        except Exception as exc:
            err = exc
        kind = error_kind(err)
        delay = policy.backoff(attempt)
        stopped = budget.stop(err, attempt, delay)
        if stopped is None:
            budget.waited(delay)
            rt.telemetry.task.retries.labels(task.name, kind).inc()
            log.warning("task.retrying", attempt=attempt, error_kind=kind, error=str(err), backoff_s=round(delay, 3))
            rt.audit.append(
                {
                    **audit,
                    "status": "retrying",
                    "attempt": attempt,
                    "error": {"kind": kind, "message": rlog.redact(str(err), secrets=secrets)},
                }
            )
            rt.sleep(delay)
            continue
        span.record_exception(err)
        log.error("task.failed", attempt=attempt, error_kind=kind, error=str(err), retryable=is_retryable(err))
        if is_retryable(err):
            # Why a retryable error ended the call: which bound stopped the retries, and how long they ran.
            audit = {**audit, "retry": budget.summary(stopped, attempt)}
            log.error("task.retries_stopped", **audit["retry"])
        if in_run and not is_retryable(err):
            rt.idempotency.record_failure(
                task.name,
                key,
                rt.run.run_id,
                {"kind": kind, "message": rlog.redact(str(err), secrets=secrets), "failed_at": time.time()},
            )
        _finish(
            task,
            rt,
            span,
            log,
            t0,
            "failed",
            {**audit, "attempt": attempt, "error": {"kind": kind, "message": rlog.redact(str(err), secrets=secrets)}},
        )
        raise err

    output_hash = sha256_json(result_json)
    outputs = _output_hashes(task, result_json, rt)
    record = {
        "task": task.name,
        "version": task.version,
        "key": key,
        "result": result_json,
        "output_hash": output_hash,
        "outputs": outputs,
        "outputs_hash": sha256_json(outputs),
        "trace_id": audit["trace_id"],
        "run_id": rt.run.run_id,
        "attempt": attempt,
        "lease": lease.token,
        "committed_at": time.time(),
        "key_parts": audit["key_parts"],
    }
    # Never commit a result whose succeeded record cannot be written: a full audit volume fails the
    # task here (nothing committed, a rerun executes) rather than after the commit.
    check_space = getattr(rt.audit, "check_space", None)
    if check_space is not None:
        check_space()
    committed_rec, won = rt.idempotency.commit(task.name, key, record)
    if not won:
        # Only after a lease takeover of a holder that was still alive: its commit won; ours is dropped.
        log.info("task.lost_commit_race", note="another attempt committed first; returning its result")
        _remove_tree(workdir, rt)
        return _hit(task, rt, span, log, t0, {**audit, "ran": True}, committed_rec, "lost_race", attempt=attempt)
    log.info("task.succeeded", attempt=attempt, output_hash=output_hash[:16])
    _finish(
        task,
        rt,
        span,
        log,
        t0,
        "succeeded",
        {**audit, "attempt": attempt, "output_hash": output_hash, "outcome": "executed"},
    )
    rt.idempotency.mark_audited(task.name, key, audit["trace_id"])
    return result


def _hit(
    task: Task[Any, R],
    rt: Runtime,
    span: Any,
    log: Any,
    t0: float,
    audit: dict[str, Any],
    committed: Mapping[str, Any],
    outcome: str,
    *,
    attempt: int = 0,
) -> R:
    """Return a committed (verified) result: audit status ``idempotent_hit``, ``outcome`` reused or lost_race."""
    result = task.result_model.model_validate(committed["result"])
    key = str(audit["idempotency_key"])
    if not rt.idempotency.audited(task.name, key) and _committer_gone(task, rt, key, committed):
        _adopt(task, rt, log, audit, committed)
    rt.telemetry.task.idempotent_hits.labels(task.name).inc()
    reused = _reuse_reason(committed, audit["key_parts"])
    log.info(
        "task.idempotent_hit", committed_at=committed.get("committed_at"), reason=reused["reason"], outcome=outcome
    )
    _finish(
        task,
        rt,
        span,
        log,
        t0,
        "idempotent_hit",
        {**audit, "attempt": attempt, "output_hash": committed["output_hash"], "reused": reused, "outcome": outcome},
    )
    return result


def _committer_gone(task: Task[Any, Any], rt: Runtime, key: str, committed: Mapping[str, Any]) -> bool:
    """Whether the call that committed ``committed`` can no longer write its own ``succeeded`` record.

    The committer appends its record and marks the key audited *before* it releases its lease, so
    while its lease is live under its token it is still on its way: a hit waits for it (until the
    marker appears, the lease is released, or it expires because the committer was killed) rather
    than write the record for it, which would show two executions in the audit. A released lease
    means the marker was written first (checked again after the wait); an expired lease, or another
    holder's, means the committer was killed or hung after its commit.
    """
    delay = 0.01
    while True:
        if rt.idempotency.audited(task.name, key):
            return False
        current = rt.idempotency.read_lease(task.name, key)
        if current is None:
            break
        body, _ = current
        if body.get("token") != committed.get("lease") or lease_expired(body):
            break
        time.sleep(min(delay, max(float(body.get("expires_at", 0.0)) - time.time(), 0.0) + 0.01))
        delay = min(delay * 2, 0.5)
    return not rt.idempotency.audited(task.name, key)


def _adopt(task: Task[Any, Any], rt: Runtime, log: Any, audit: dict[str, Any], committed: Mapping[str, Any]) -> None:
    """The call that committed ``committed`` died before its ``succeeded`` record: write it now, marked adopted.

    Of several hits that find the same orphaned commit, the one that creates the audited marker first
    writes the record (create-only), so the adoption is recorded once.
    """
    if not rt.idempotency.claim_audited(task.name, str(audit["idempotency_key"]), str(audit.get("trace_id", ""))):
        return
    when = committed.get("committed_at")
    log.warning("task.commit_adopted", committed_by_run=committed.get("run_id"), note="no succeeded record: adopted")
    rt.audit.append(
        {
            **audit,
            "status": "succeeded",
            "outcome": "executed",
            "run_id": committed.get("run_id", ""),
            "trace_id": committed.get("trace_id", ""),
            "attempt": committed.get("attempt", 0),
            "output_hash": committed.get("output_hash"),
            "adopted": {
                "note": "the committing call left no succeeded record (killed after its commit): recorded later",
                "by_run": audit.get("run_id", ""),
                "by_trace_id": audit.get("trace_id", ""),
                "committed_at": datetime.fromtimestamp(float(when), UTC).isoformat() if when else "",
            },
        }
    )


def _remove_tree(uri: str, rt: Runtime) -> None:
    """Best effort: drop a losing attempt's private working directory."""
    st = storage_of(uri, rt)
    try:
        if is_gcs(uri):
            for obj in st.list(uri.rstrip("/") + "/"):
                st.delete(obj)
        else:
            st.delete(uri)
    except Exception as exc:  # cleanup must not hide the result
        rlog.get_logger().warning("task.workdir_cleanup_failed", uri=uri, error=str(exc))


_BUNDLE_SUFFIX = "/MANIFEST.json"


def _output_hashes(task: Task[Any, Any], result: Mapping[str, Any], rt: Runtime) -> dict[str, Any]:
    """Content hashes of every output at commit time (a bundle: its manifest and every file it lists)."""
    out: dict[str, Any] = {}
    for f in _artifact_fields(task.result_model, "output"):
        uri = result.get(f)
        if not uri:
            continue
        st = _storage_of(uri, rt)
        try:
            entry: dict[str, Any] = {"uri": uri, "hash": st.content_hash(uri)}
            if uri.endswith(_BUNDLE_SUFFIX):
                entry["files"] = {rel: st.content_hash(u) for rel, u in _bundle_files(uri, st)}
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            entry = {"uri": uri, "hash": None}  # not there at commit: only its existence is checked later
        except DataFormatError:
            entry = {"uri": uri, "hash": st.content_hash(uri)}  # named MANIFEST.json but not a bundle
        out[f] = entry
    return out


def _bundle_files(manifest_uri: str, st: Storage) -> list[tuple[str, str]]:
    from aitasks.runtime.bundle import read_manifest

    manifest = read_manifest(manifest_uri, st)
    base = manifest_uri[: -len("MANIFEST.json")].rstrip("/") or "."
    return [(rel, join_uri(base, rel)) for rel in sorted(manifest["files"])]


def _damage(task: Task[Any, Any], committed: Mapping[str, Any], rt: Runtime) -> str | None:
    """Why a committed record cannot be reused (``None``: it can): an edited record, a missing or changed output."""
    result = committed.get("result")
    if not isinstance(result, Mapping) or committed.get("output_hash") != sha256_json(result):
        return "committed record changed since commit: its result no longer matches output_hash"
    outputs = committed.get("outputs")
    if outputs is not None and committed.get("outputs_hash") != sha256_json(outputs):
        return "committed record changed since commit: its output hashes no longer match outputs_hash"
    try:
        task.result_model.model_validate(dict(result))
    except ValidationError:
        return "committed result no longer validates against the result model"
    for f in _artifact_fields(task.result_model, "output"):
        uri = result.get(f)
        if not uri:
            continue
        st = _storage_of(uri, rt)
        recorded = (outputs or {}).get(f)
        if not isinstance(recorded, Mapping) or recorded.get("hash") is None:
            if not st.exists(uri):
                return f"output {f} ({uri}) no longer exists"
            continue
        if recorded.get("uri") != uri:
            return f"committed record changed since commit: output {f} points elsewhere"
        try:
            if st.content_hash(uri) != recorded["hash"]:
                return f"output {f} ({uri}) changed since commit"
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return f"output {f} ({uri}) no longer exists"
        files = recorded.get("files")
        if isinstance(files, Mapping):
            base = uri[: -len("MANIFEST.json")].rstrip("/") or "."
            for rel, digest in sorted(files.items()):
                file_uri = join_uri(base, rel)
                try:
                    now = st.content_hash(file_uri)
                except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                    return f"output {f}: bundle file {rel} ({file_uri}) is missing"
                if now != digest:
                    return f"output {f}: bundle file {rel} ({file_uri}) changed since commit"
    return None


def _short(value: Any) -> str:
    return sha256_json(value)[:16]


def _key_summary(parts: Mapping[str, Any]) -> dict[str, Any]:
    """The key's parts as an audit record carries them: names and short hashes, no raw inputs."""
    out: dict[str, Any] = {
        "task": parts["task"],
        "version": parts["version"],
        "code": str(parts["code"])[:16],
        "inputs": _short(parts["inputs"]),
        "artifacts": {k: str(v)[:16] for k, v in sorted(parts["artifacts"].items())},
    }
    if parts.get("state"):
        out["state"] = _short(parts["state"])
    return out


def _reuse_reason(committed: Mapping[str, Any], parts: Mapping[str, Any]) -> dict[str, Any]:
    """Why a committed result is returned instead of running: the same key, part by part."""
    same = ["task", "version", "code", "inputs", "artifacts"] + (["state"] if "state" in parts else [])
    when = committed.get("committed_at")
    return {
        "reason": "same idempotency key: " + ", ".join(same) + " match the committed result",
        "same": same,
        "key_parts": dict(parts),
        "committed_by_run": committed.get("run_id", ""),
        "committed_trace_id": committed.get("trace_id", ""),
        "committed_at": datetime.fromtimestamp(float(when), UTC).isoformat() if when else "",
    }


def _finish(
    task: Task[Any, Any], rt: Runtime, span: Any, log: Any, t0: float, status: str, entry: dict[str, Any]
) -> None:
    duration = time.perf_counter() - t0
    span.set_attribute("aitasks.status", status)
    rt.telemetry.task.runs.labels(task.name, task.version, status).inc()
    rt.telemetry.task.duration.labels(task.name, status).observe(duration)
    rt.audit.append({**entry, "status": status, "duration_ms": round(duration * 1000, 3)})


def ai_task(
    *,
    name: str,
    version: str,
    retry: RetryPolicy | None = None,
    state: Callable[[Any, Runtime], Mapping[str, Any]] | None = None,
    verify: Callable[[Any, Any, Runtime], str | None] | None = None,
    deadline_s: float | None = None,
) -> Callable[[Callable[[P, TaskContext], R]], Task[P, R]]:
    """Register ``fn(params, ctx) -> result`` as platform task ``name`` at ``version``.

    Args:
        name: Task name (``family.verb``).
        version: Task version; part of the idempotency key.
        retry: Retry policy for retryable errors.
        state: Reads outside state the result depends on (a registry alias, ...) before the call; its
            JSON-able result joins the idempotency key and the audit record, so a changed outside world
            means new work instead of a stale committed result.
        verify: ``verify(params, committed_result, runtime) -> reason | None``: re-checks, on every
            idempotent hit, outside state the committed result stands for (an online store's rows); a
            reason runs the task again and is recorded as ``rerun_reason``.
        deadline_s: Wall-clock limit of a call (every attempt and backoff); settings override it
            (``AITASKS_TASK_DEADLINES_S``); ``None``: ``AITASKS_TASK_DEADLINE_DEFAULT_S``.
    """
    if deadline_s is not None and not deadline_s > 0:
        raise ValueError(f"task {name!r}: deadline_s must be > 0")

    def deco(fn: Callable[[P, TaskContext], R]) -> Task[P, R]:
        hints = typing.get_type_hints(fn)
        params = list(inspect.signature(fn).parameters)
        if len(params) != 2:
            raise TypeError(f"task {name!r}: signature must be (params, ctx)")
        p_model, r_model = hints.get(params[0]), hints.get("return")
        for what, m in (("input", p_model), ("output", r_model)):
            if not (isinstance(m, type) and issubclass(m, TaskModel)):
                raise TypeError(f"task {name!r}: {what} must be annotated with a TaskModel subclass, got {m!r}")
        if name in _REGISTRY and _REGISTRY[name].fn.__qualname__ != fn.__qualname__:
            raise ValueError(f"task {name!r} is registered twice ({_REGISTRY[name].fn.__module__})")
        task: Task[P, R] = Task(
            fn,
            name=name,
            version=version,
            retry=retry or RetryPolicy(),
            params_model=typing.cast(type[P], p_model),
            result_model=typing.cast(type[R], r_model),
            state=state,
            verify=verify,
            deadline_s=deadline_s,
        )
        _REGISTRY[name] = task
        return task

    return deco


#: Modules whose import registers the built-in tasks.
TASK_MODULES: tuple[str, ...] = (
    "aitasks.audio_analysis.tasks",
    "aitasks.content_generation.tasks",
    "aitasks.data_processing.tasks",
    "aitasks.model_training.tasks",
    "aitasks.model_training.tuning_tasks",
    "aitasks.recommendation_update.tasks",
    "aitasks.runtime.run_summary",
)


def load_builtin_tasks() -> dict[str, Task[Any, Any]]:
    """Import every task module and return the registry (name -> task), sorted by name."""
    import importlib

    for m in TASK_MODULES:
        importlib.import_module(m)
    return {n: t for n, t in sorted(_REGISTRY.items()) if _builtin(t.__module__)}


def _builtin(module: str) -> bool:
    """A module of the built-in tasks: one of TASK_MODULES or a submodule of one (a task package)."""
    return any(module == m or module.startswith(m + ".") for m in TASK_MODULES)


#: Task-name family (before the first dot) -> the modules of TASK_MODULES that register it: a step imports
#: its own family's tasks only (another family's task module costs its imports, up to seconds at start-up).
#: A family missing here still works (every task module is imported); tests hold the table to the registry.
FAMILY_MODULES: dict[str, tuple[str, ...]] = {
    "audio": ("aitasks.audio_analysis.tasks",),
    "content": ("aitasks.content_generation.tasks",),
    "data": ("aitasks.data_processing.tasks",),
    "feast": ("aitasks.data_processing.tasks",),
    "model": ("aitasks.model_training.tasks", "aitasks.model_training.tuning_tasks"),
    "reco": ("aitasks.model_training.tasks",),
    "tune": ("aitasks.model_training.tuning_tasks",),
    "index": ("aitasks.recommendation_update.tasks",),
    "run": ("aitasks.runtime.run_summary",),
}


def get_task(name: str) -> Task[Any, Any]:
    """The registered task ``name``, importing the built-in task modules only as far as needed.

    The module of the name's family (:data:`FAMILY_MODULES`) first; then the others, in order, for a
    name whose family is not in the table.
    """
    import importlib

    if name not in _REGISTRY:
        for m in FAMILY_MODULES.get(name.split(".", 1)[0], ()) + TASK_MODULES:
            importlib.import_module(m)
            if name in _REGISTRY:
                break
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no task {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def registry() -> dict[str, Task[Any, Any]]:
    return dict(sorted(_REGISTRY.items()))
