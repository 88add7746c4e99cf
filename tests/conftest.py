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

    def __init__(self, root: Path, run: RunContext | None = None, *, inputs: tuple[Path, ...] = ()) -> None:
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from aitasks.runtime import logging as rlog

        self.root = root
        self.logs = io.StringIO()
        self.spans = InMemorySpanExporter()
        self.sleeps: list[float] = []
        # Tests write their inputs beside the store: ``root`` (and ``inputs``) are allowed input roots.
        roots = tuple(str(r) for r in (root, *inputs))
        self.settings = Settings(storage_root=str(root / "store"), input_roots=roots, actor="pytest")
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


class RecoWorld:
    """The demo's data (same generator settings) through ingest, features, Feast and the training set.

    Built once per session: the model, evaluation, registry, index and recommend tests share it.
    """

    def __init__(self, root: Path) -> None:
        from aitasks.data_processing.tasks import (
            compute_features_task,
            ingest_events_task,
            materialize_features_task,
            source_data_task,
        )
        from aitasks.model_training.tasks import training_set_task

        self.captured = CapturedRuntime(root)
        rt = self.captured.rt
        self.rt = rt
        self.settings = self.captured.settings
        self.source = source_data_task({}, runtime=rt)
        self.ingest = ingest_events_task(
            {
                "events_uri": self.source.events_uri,
                "catalog_uri": self.source.tracks_uri,
                "as_of": "2026-10-31T00:00:00Z",
            },
            runtime=rt,
        )
        self.features = compute_features_task(
            {"events_uri": self.ingest.good_uri, "catalog_uri": self.source.tracks_uri}, runtime=rt
        )
        self.materialized = materialize_features_task(
            {
                "user_features_uri": self.features.user_features_uri,
                "track_features_uri": self.features.track_features_uri,
                "end": "2026-10-31T00:00:00Z",
            },
            runtime=rt,
        )
        self.training_set = training_set_task(
            {
                "events_uri": self.ingest.good_uri,
                "catalog_uri": self.source.tracks_uri,
                "user_features_uri": self.features.user_features_uri,
                "track_features_uri": self.features.track_features_uri,
            },
            runtime=rt,
        )


@pytest.fixture(scope="session")
def reco_world(tmp_path_factory: pytest.TempPathFactory) -> RecoWorld:
    return RecoWorld(tmp_path_factory.mktemp("reco-world"))
