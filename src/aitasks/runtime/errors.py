"""Typed errors of the platform.

Every error a task raises on purpose is a :class:`TaskError`. Whether the runtime retries it is a
property of its class (``retryable``), never of the call site: transient faults (a service that is
briefly unreachable, a GCS precondition race) retry; bad input and broken contracts never do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class TaskError(Exception):
    """Base of every error raised by a platform task on purpose."""

    retryable: bool = False
    #: Short machine-readable kind, written into audit records and metrics labels.
    kind: str = "task_error"


class FatalError(TaskError):
    """A failure that a retry cannot fix."""

    kind = "fatal"


class RetryableError(TaskError):
    """A transient failure: the runtime retries it with backoff."""

    retryable = True
    kind = "retryable"


class ServiceUnavailableError(RetryableError):
    """A service (Redis, PostgreSQL, MLflow, GCS, ...) could not be reached."""

    kind = "service_unavailable"


class PreconditionFailedError(RetryableError):
    """A conditional write lost a race (GCS generation precondition, exclusive create)."""

    kind = "precondition_failed"


@dataclass(frozen=True)
class FieldIssue:
    """One problem with one input field: where (dotted path) and what."""

    field: str
    problem: str

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}"


class InvalidInputError(FatalError):
    """Task input failed validation. Names every offending field; never retried."""

    kind = "invalid_input"

    def __init__(self, task: str, issues: Sequence[FieldIssue]) -> None:
        self.task = task
        self.issues = tuple(issues)
        detail = "; ".join(str(i) for i in self.issues) or "invalid input"
        super().__init__(f"invalid input for task {task!r}: {detail}")

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(i.field for i in self.issues)


class NotRetriedError(FatalError):
    """A retry (e.g. KFP's) of work whose earlier attempt in the same run failed with a non-retryable error.

    KFP's retry policy retries every failure; the task stops itself: the retry fails at once with the
    first attempt's error instead of redoing work that cannot succeed with the same inputs and code.
    """

    kind = "not_retried"


class ConfigurationError(FatalError):
    """The platform's settings cannot work where they run (e.g. embedded defaults in production)."""

    kind = "configuration"


class InvalidOutputError(FatalError):
    """A task returned something that does not match its declared output model (a bug)."""

    kind = "invalid_output"


class DataFormatError(FatalError):
    """A file is not what it claims to be: wrong columns, encoding, empty, truncated, ..."""

    kind = "data_format"

    def __init__(self, uri: str, problem: str) -> None:
        self.uri = uri
        self.problem = problem
        super().__init__(f"{uri}: {problem}")


class UnsafePathError(FatalError):
    """A path or URI escapes the root it must stay under, or is otherwise hostile."""

    kind = "unsafe_path"


class AuditIntegrityError(FatalError):
    """The audit log's hash chain does not verify."""

    kind = "audit_integrity"


class ServiceRequiredError(FatalError):
    """A service is unreachable and settings require it (``AITASKS_REQUIRE_SERVICES``)."""

    kind = "service_required"
