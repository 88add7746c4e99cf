"""Bounded exponential backoff with full jitter, for errors marked retryable only.

A task retries a retryable error while three bounds all allow it: ``max_attempts``, the retry budget
(``budget_s``: seconds since the first failure, sized for a service restart) and the task's deadline
(the next attempt must start before it). Client libraries do not retry underneath (MLflow and redis-py
retries are set to 0 by the platform): this is the one retry layer.
"""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aitasks.runtime.errors import RetryableError, TaskError

#: Builtin exceptions that are transient by nature (network hiccups); everything else must opt in
#: by subclassing :class:`~aitasks.runtime.errors.RetryableError`.
TRANSIENT_BUILTINS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)


class RetryPolicy(BaseModel):
    """How often and how patiently a task retries retryable errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(default=3, ge=1, le=100)
    initial_backoff_s: float = Field(default=0.5, ge=0)
    max_backoff_s: float = Field(default=30.0, ge=0)
    multiplier: float = Field(default=2.0, ge=1)
    jitter: bool = True
    #: Seconds after the first failure during which retries may still start (with ``max_attempts`` and the
    #: deadline as further bounds). Overridable per task in settings (``AITASKS_TASK_RETRY_BUDGETS_S``).
    budget_s: float = Field(default=60.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _bounds(self) -> RetryPolicy:
        if self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("max_backoff_s must be >= initial_backoff_s")
        return self

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed ``attempt`` (1-based): full jitter over the capped exponential."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        if not self.jitter:
            return cap
        return (rng or random).uniform(0, cap)


#: The policy of tasks whose work is one or more calls to a service (MLflow, Redis, a SQL registry, GCS):
#: keep retrying through a restart of up to two minutes (an MLflow server on PostgreSQL took 60+ s to
#: become healthy on a loaded machine), with backoff capped at 15 s so a recovered service is seen soon.
#: The budget is the bound: with full jitter, 20 attempts ran out after 113 s of a refused port (measured),
#: so ``max_attempts`` is only a backstop here.
SERVICE_RETRY = RetryPolicy(max_attempts=50, initial_backoff_s=1.0, max_backoff_s=15.0, budget_s=120.0)


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, TaskError):
        return exc.retryable
    return isinstance(exc, TRANSIENT_BUILTINS)


def error_kind(exc: BaseException) -> str:
    return exc.kind if isinstance(exc, TaskError) else type(exc).__name__


class DeadlineExceededError(RetryableError):
    """A task call passed its wall-clock deadline (every attempt and backoff together).

    The runtime never retries it in the same call (the deadline is spent); it is marked retryable so a
    retry of the whole step (KFP's ``set_retry``, a new pod, a new deadline) may run the work again.
    """

    kind = "deadline_exceeded"
