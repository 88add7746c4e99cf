"""On-demand tasks: any registered task, run now on Celery workers instead of as a pipeline step.

The same task, the same contract: the worker calls the registered task through the runtime, so a
message gets the same validation, idempotency key, audit records, trace and metrics as a pipeline
step. What Celery adds is delivery: a RabbitMQ quorum queue (at-least-once, acks after the call, a
delivery limit, a dead-letter queue with the reason) and a Redis result backend.

- :mod:`aitasks.ondemand.app`: the Celery app built from settings, the queue topology, the errors.
- :mod:`aitasks.ondemand.worker`: the worker side (``aitasks worker``).
- :mod:`aitasks.ondemand.client`: submit, wait, read dead letters (``aitasks submit``).

Nothing here reads the environment or connects at import time.
"""

from __future__ import annotations

from aitasks.ondemand.app import OnDemandTaskError, Topology, make_app, ondemand_problems
from aitasks.ondemand.client import DeadLetter, Submission, read_dead_letters, submit, wait

__all__ = [
    "DeadLetter",
    "OnDemandTaskError",
    "Submission",
    "Topology",
    "make_app",
    "ondemand_problems",
    "read_dead_letters",
    "submit",
    "wait",
]
