"""Bounded exponential backoff with full jitter, for errors marked retryable only."""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aitasks.runtime.errors import TaskError

#: Builtin exceptions that are transient by nature (network hiccups); everything else must opt in
#: by subclassing :class:`~aitasks.runtime.errors.RetryableError`.
TRANSIENT_BUILTINS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)


class RetryPolicy(BaseModel):
    """How often and how patiently a task retries retryable errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(default=3, ge=1, le=20)
    initial_backoff_s: float = Field(default=0.5, ge=0)
    max_backoff_s: float = Field(default=30.0, ge=0)
    multiplier: float = Field(default=2.0, ge=1)
    jitter: bool = True

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


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, TaskError):
        return exc.retryable
    return isinstance(exc, TRANSIENT_BUILTINS)


def error_kind(exc: BaseException) -> str:
    return exc.kind if isinstance(exc, TaskError) else type(exc).__name__
