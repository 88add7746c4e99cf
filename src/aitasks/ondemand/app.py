"""The Celery app of on-demand tasks, built from settings: queues, delivery rules, dead letters.

Delivery decisions (docs/en/ondemand.md explains them to operators):

- **JSON only.** Tasks, results and events are JSON; ``accept_content=["json"]`` makes a worker refuse
  anything else (a pickle message is dead-lettered, never deserialised).
- **At least once, one execution per key.** ``acks_late``: a message is acknowledged after the call, so
  a worker killed mid-task leaves it unacknowledged and the broker delivers it again
  (``reject_on_worker_lost`` does the same when only the pool process dies). The task's idempotency key
  makes the second delivery safe: it returns the committed result (an ``idempotent_hit``), or takes the
  dead worker's lease over once it expires (``ondemand_lease_ttl_s``) and runs the call once more.
- **One retry layer.** The task's own :class:`~aitasks.runtime.retry.RetryPolicy` retries retryable
  errors inside the call (bounded backoff), as in a pipeline step. Celery does not retry on top (no
  ``autoretry_for``): two layers would multiply the attempts and the backoff. Redelivery is not a
  retry of an error: it only follows a lost worker, and the quorum queue's ``x-delivery-limit`` bounds
  it (a message that keeps killing its worker is dead-lettered by the broker, reason ``delivery_limit``).
- **Time limits.** A soft limit (the task gets an exception and fails cleanly, reason ``time_limit``),
  then a hard one (the pool process is killed). A message may ask for less, never for more.
- **Dead letters.** Whatever ends without a result is published, byte for byte with its headers, to
  ``<queue>.dead`` with the reason in ``x-aitasks-reason`` (``invalid_input``, ``unknown_task``,
  ``undecodable``, ``content_disallowed``, ``invalid_message``, ``time_limit`` or the task's error kind)
  and the detail in ``x-aitasks-detail``, then acknowledged; the submitter gets a FAILURE result with
  the same reason. Should that publish fail, the message is rejected and the queue's dead-letter
  exchange still moves it there (reason only in RabbitMQ's ``x-death``). To replay a dead letter, move
  it back to the queue (e.g. a shovel): the idempotency key makes a replay of finished work a hit.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from kombu.entity import Exchange, Queue

from aitasks.runtime.errors import ConfigurationError
from aitasks.runtime.settings import DEV_BROKER_URL, DEV_RESULT_BACKEND, Settings

#: Message headers the submitter sets and the worker reads.
HEADER_TRACEPARENT = "traceparent"
HEADER_SUBMITTER = "aitasks_submitter"
HEADER_SUBMITTED_AT = "aitasks_submitted_at"
#: Headers a dead letter carries besides the original message's.
DL_REASON = "x-aitasks-reason"
DL_DETAIL = "x-aitasks-detail"
DL_AT = "x-aitasks-dead-lettered-at"
DL_BY = "x-aitasks-dead-lettered-by"
#: How long results stay in the result backend (a later submit of the same inputs is an idempotent hit anyway).
RESULT_TTL_S = 86400
#: The longest detail kept in a dead letter's header or a failure result.
MAX_DETAIL = 2000


class OnDemandTaskError(Exception):
    """A call on a worker ended without a result; ``kind`` is the dead letter's reason.

    Two positional arguments only, so the result backend (JSON) rebuilds it on the submitter's side.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass(frozen=True)
class Topology:
    """The queue of on-demand tasks (a quorum queue: replicated, durable, delivery limit) and its dead letters."""

    queue: str
    delivery_limit: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        return cls(settings.ondemand_queue, settings.ondemand_delivery_limit)

    @property
    def dead_queue(self) -> str:
        return f"{self.queue}.dead"

    @property
    def dead_exchange(self) -> str:
        return f"{self.queue}.dlx"

    def work_queue(self) -> Queue:
        # A topic exchange: Celery's native delayed delivery (ETA on quorum queues) can bind to it.
        return Queue(
            self.queue,
            Exchange(self.queue, type="topic", durable=True),
            routing_key=self.queue,
            durable=True,
            queue_arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": self.delivery_limit,
                "x-dead-letter-exchange": self.dead_exchange,
                "x-dead-letter-routing-key": self.dead_queue,
            },
        )

    def dead_letter_queue(self) -> Queue:
        return Queue(
            self.dead_queue,
            Exchange(self.dead_exchange, type="direct", durable=True),
            routing_key=self.dead_queue,
            durable=True,
            # Classic: read and put back as often as operators like (a quorum queue counts deliveries,
            # and RabbitMQ 4 drops a message past its default limit).
            queue_arguments={"x-queue-type": "classic"},
        )

    def declare(self, connection: Any) -> None:
        """Declare both queues (idempotent): the dead-letter queue must exist before the broker routes to it."""
        channel = connection.default_channel
        for q in (self.dead_letter_queue(), self.work_queue()):
            q(channel).declare()

    def delete(self, connection: Any) -> None:
        """Delete both queues and exchanges (tests, teardown)."""
        channel = connection.default_channel
        for q in (self.work_queue(), self.dead_letter_queue()):
            bound = q(channel)
            bound.delete()
            assert bound.exchange is not None
            bound.exchange.delete()


class OnDemandApp(Celery):
    """A Celery app that knows the settings and topology it was built from."""

    aitasks_settings: Settings
    topology: Topology
    #: Where ``aitasks worker`` keeps its liveness and readiness files (empty: none).
    health_dir: str = ""


def _local(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in {"127.0.0.1", "localhost", "::1"}


def ondemand_problems(settings: Settings) -> list[str]:
    """What stops on-demand tasks from working with ``settings`` (empty: fine).

    Limits must be ordered everywhere; in production the broker and the result backend must not be the
    embedded localhost defaults (the pipeline steps' guard, ``Settings.production_problems``, does not
    cover them: steps never talk to the broker).
    """
    problems = []
    if settings.ondemand_time_limit_s <= settings.ondemand_soft_time_limit_s:
        problems.append("AITASKS_ONDEMAND_TIME_LIMIT_S must be greater than AITASKS_ONDEMAND_SOFT_TIME_LIMIT_S")
    if settings.env == "production":
        broker = settings.ondemand_broker_url.get_secret_value()
        backend = settings.ondemand_result_backend.get_secret_value()
        if broker == DEV_BROKER_URL or _local(broker):
            problems.append("AITASKS_ONDEMAND_BROKER_URL is the localhost default (set it from the Secret)")
        if backend == DEV_RESULT_BACKEND or _local(backend):
            problems.append("AITASKS_ONDEMAND_RESULT_BACKEND is the localhost default (set it from the Secret)")
    return problems


def make_app(settings: Settings) -> OnDemandApp:
    """The Celery app of on-demand tasks for ``settings`` (no connection is made here).

    Raises:
        ConfigurationError: :func:`ondemand_problems` found something.
    """
    problems = ondemand_problems(settings)
    if problems:
        raise ConfigurationError("on-demand settings: " + "; ".join(problems))
    topology = Topology.from_settings(settings)
    app = OnDemandApp("aitasks", set_as_current=False)
    app.aitasks_settings = settings
    app.topology = topology
    app.conf.update(
        broker_url=settings.ondemand_broker_url.get_secret_value(),
        result_backend=settings.ondemand_result_backend.get_secret_value(),
        # JSON only: a worker never deserialises pickle (or anything else) from the broker.
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_queues=[topology.work_queue()],
        task_default_queue=topology.queue,
        task_default_exchange=topology.queue,
        task_default_routing_key=topology.queue,
        task_create_missing_queues=False,
        # At least once: acknowledge after the call; a lost pool process puts the message back.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        # A message the worker cannot acknowledge any more (connection lost) is redelivered elsewhere:
        # stop working on it here rather than run it twice in parallel.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # One message at a time per pool process: long calls never hold a backlog hostage.
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.ondemand_soft_time_limit_s,
        task_time_limit=settings.ondemand_time_limit_s,
        task_track_started=True,
        result_expires=RESULT_TTL_S,
        # Publisher confirms: submit and dead-letter publishes return once the broker holds the message.
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        # The runtime logs JSON through structlog; Celery keeps its own loggers and leaves the root alone.
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_consumer="aitasks.ondemand.worker:OnDemandConsumer",
    )
    return app


def dead_letter_headers(headers: dict[str, Any] | None, reason: str, detail: str) -> dict[str, Any]:
    """The original headers plus why, when and by whom the message was dead-lettered."""
    out = dict(headers or {})
    out.update(
        {
            DL_REASON: reason,
            DL_DETAIL: detail[:MAX_DETAIL],
            DL_AT: datetime.now(UTC).isoformat(),
            DL_BY: socket.gethostname(),
        }
    )
    return out


def publish_dead_letter(app: OnDemandApp, message: Any, reason: str, detail: str) -> None:
    """Publish a copy of ``message`` (a kombu message: body bytes, headers, properties) to the dead-letter
    queue with ``reason``; returns once the broker confirmed it. The caller acknowledges the original."""
    topology = app.topology
    props = getattr(message, "properties", {}) or {}
    with app.producer_or_acquire() as producer:
        producer.publish(
            message.body,
            exchange=topology.dead_exchange,
            routing_key=topology.dead_queue,
            headers=dead_letter_headers(message.headers, reason, detail),
            content_type=message.content_type or "application/octet-stream",
            content_encoding=message.content_encoding or "binary",
            correlation_id=props.get("correlation_id"),
            delivery_mode=2,
            declare=[topology.dead_letter_queue()],
            retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
        )
