"""Shared fixtures: a throwaway runtime per test, and the rule for unreachable services."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aitasks.runtime.settings import Settings
from aitasks.runtime.task import RunContext, Runtime
from aitasks.runtime.telemetry import Telemetry


def services_required() -> bool:
    """CI sets AITASKS_REQUIRE_SERVICES=1: an unreachable service then fails the test instead of skipping it."""
    return os.environ.get("AITASKS_REQUIRE_SERVICES", "").lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> None:
    if services_required():
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


class CapturedRuntime:
    """A runtime on a temp storage root whose logs go to a buffer and whose spans are kept in memory."""

    def __init__(self, root: Path, run: RunContext | None = None) -> None:
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from aitasks.runtime import logging as rlog

        self.root = root
        self.logs = io.StringIO()
        self.spans = InMemorySpanExporter()
        self.sleeps: list[float] = []
        self.settings = Settings(storage_root=str(root / "store"), actor="pytest")
        rlog.configure_logging("debug", "json", stream=self.logs)
        self.rt = Runtime.create(
            self.settings, run=run or RunContext(run_id="run-test"), telemetry=Telemetry(span_exporter=self.spans)
        )
        self.rt.sleep = self.sleeps.append

    def log_text(self) -> str:
        return self.logs.getvalue()

    def metric(self, name: str, **labels: str) -> float:
        value = self.rt.telemetry.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
def captured(tmp_path: Path) -> Iterator[CapturedRuntime]:
    yield CapturedRuntime(tmp_path)
