"""Tracing (OpenTelemetry) and metrics (prometheus-client), created on demand, never at import time.

Trace context: a task continues the W3C ``traceparent`` it is given (run context or the
``TRACEPARENT`` environment variable). Without one, the trace id is derived from the run id, so
every step of one pipeline run shares one trace without extra plumbing. Child processes get the
current span's ``traceparent`` through :func:`child_env`.

Every exporter sits behind :class:`RedactingSpanExporter`: span names, attributes, status descriptions,
events (the exception events' message and stack trace) and links leave the process with secrets
redacted and user ids pseudonymised, as logs do (:mod:`aitasks.runtime.logging`).

Metrics live in a registry owned by :class:`Telemetry` (not the process-global default one), so
tests and several runtimes in one process do not collide. Batch steps push to a Pushgateway or
write a textfile at the end; long-running processes serve ``/metrics``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, Status, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_propagator = TraceContextTextMapPropagator()


def valid_traceparent(value: str) -> bool:
    m = _TRACEPARENT.match(value.strip())
    return bool(m) and m.group(1) != "0" * 32 and m.group(2) != "0" * 16  # type: ignore[union-attr]


def derived_traceparent(run_id: str) -> str:
    """A deterministic ``traceparent`` for a run: all its steps land in one trace."""
    digest = hashlib.sha256(run_id.encode()).hexdigest()
    return f"00-{digest[:32]}-{digest[32:48]}-01"


def parent_context(traceparent: str | None) -> Any:
    """An OpenTelemetry context whose parent is ``traceparent`` (or an empty context)."""
    if traceparent and valid_traceparent(traceparent):
        return _propagator.extract({"traceparent": traceparent.strip()})
    return trace.set_span_in_context(NonRecordingSpan(SpanContext(0, 0, False)))


def current_traceparent(span: Any) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def child_env(span: Any, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process that continues the current span's trace."""
    env = dict(os.environ if base is None else base)
    env["TRACEPARENT"] = current_traceparent(span)
    return env


def _redact_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    from aitasks.runtime.logging import redact

    out: dict[str, Any] = {}
    for key, value in (attributes or {}).items():
        clean = redact(list(value) if isinstance(value, tuple) else value, key=key)
        out[key] = tuple(clean) if isinstance(clean, list) else clean
    return out


def redact_span(span: ReadableSpan) -> ReadableSpan:
    """A copy of ``span`` whose text (name, attributes, status, events, links) is redacted."""
    from aitasks.runtime.logging import scrub_text

    status = span.status
    if status.description:
        status = Status(status.status_code, scrub_text(status.description))
    return ReadableSpan(
        name=scrub_text(span.name),
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=_redact_attributes(span.attributes),
        events=[Event(scrub_text(e.name), _redact_attributes(e.attributes), e.timestamp) for e in span.events],
        links=[Link(link.context, _redact_attributes(link.attributes)) for link in span.links],
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class RedactingSpanExporter(SpanExporter):
    """Hands the wrapped exporter redacted copies of the spans (console, OTLP, in-memory, ...)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([redact_span(s) for s in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


@dataclass
class TaskMetrics:
    runs: Counter
    duration: Histogram
    retries: Counter
    idempotent_hits: Counter


@dataclass
class OutcomeMetrics:
    """What the platform produced, for alerts on staleness rather than on errors."""

    pipeline_success: Gauge
    index_published: Gauge
    drift_max_psi: Gauge
    drift_features: Gauge


class Telemetry:
    """A tracer provider and a metrics registry, owned together."""

    def __init__(self, exporter: str = "none", otlp_endpoint: str = "", span_exporter: SpanExporter | None = None):
        self.provider = TracerProvider()
        exp: SpanExporter | None = span_exporter
        if exp is None and exporter == "console":
            exp = ConsoleSpanExporter()
        elif exp is None and exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exp = OTLPSpanExporter(endpoint=otlp_endpoint)
        if exp is not None:
            # Simple (synchronous) processor: batch steps are short-lived and must not lose spans.
            self.provider.add_span_processor(SimpleSpanProcessor(RedactingSpanExporter(exp)))
        self.tracer = self.provider.get_tracer("aitasks")
        self.registry = CollectorRegistry(auto_describe=True)
        self.task = TaskMetrics(
            runs=Counter(
                "aitasks_task_runs",
                "Task calls by final status (succeeded, failed, idempotent_hit).",
                ["task", "version", "status"],
                registry=self.registry,
            ),
            duration=Histogram(
                "aitasks_task_duration_seconds",
                "Wall time of task calls, by status.",
                ["task", "status"],
                registry=self.registry,
                buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800),
            ),
            retries=Counter(
                "aitasks_task_retries",
                "Retried attempts after a retryable error.",
                ["task", "error_kind"],
                registry=self.registry,
            ),
            idempotent_hits=Counter(
                "aitasks_task_idempotent_hits",
                "Calls answered from a committed result.",
                ["task"],
                registry=self.registry,
            ),
        )

        self.outcome = OutcomeMetrics(
            pipeline_success=Gauge(
                "aitasks_pipeline_last_success_timestamp_seconds",
                "Unix time at which a run of the pipeline last ended SUCCEEDED with its audit chain verified.",
                ["pipeline"],
                registry=self.registry,
            ),
            index_published=Gauge(
                "aitasks_index_published_timestamp_seconds",
                "Unix time at which a new version of the ANN index was last published (CURRENT switched).",
                ["index"],
                registry=self.registry,
            ),
            drift_max_psi=Gauge(
                "aitasks_drift_max_psi",
                "Largest population stability index of the last drift check.",
                ["pipeline"],
                registry=self.registry,
            ),
            drift_features=Gauge(
                "aitasks_drift_features",
                "Number of features over the drift thresholds in the last drift check.",
                ["pipeline"],
                registry=self.registry,
            ),
        )

    def shutdown(self) -> None:
        self.provider.shutdown()

    def push(self, job: str, gateway: str = "", textfile_dir: str = "", grouping: dict[str, str] | None = None) -> None:
        """Hand the batch step's metrics on: Pushgateway and/or node-exporter textfile."""
        if gateway:
            from prometheus_client import push_to_gateway

            push_to_gateway(gateway, job=job, registry=self.registry, grouping_key=grouping or {})
        if textfile_dir:
            from prometheus_client import write_to_textfile

            Path(textfile_dir).mkdir(parents=True, exist_ok=True)
            write_to_textfile(str(Path(textfile_dir) / f"{job}.prom"), self.registry)

    def serve(self, port: int) -> Any:
        """Serve /metrics for a long-running process. Returns the server (call ``shutdown`` on it)."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, registry=self.registry)
        return server


_DEFAULT: dict[tuple[str, str], Telemetry] = {}


def default_telemetry(exporter: str = "none", otlp_endpoint: str = "") -> Telemetry:
    """One Telemetry per exporter configuration per process, created on first use."""
    key = (exporter, otlp_endpoint)
    if key not in _DEFAULT:
        _DEFAULT[key] = Telemetry(exporter, otlp_endpoint)
    return _DEFAULT[key]


def trace_flags_sampled() -> TraceFlags:
    return TraceFlags(TraceFlags.SAMPLED)
