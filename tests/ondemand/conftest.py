"""Real on-demand workers for the tests: RabbitMQ and Redis from the settings (AITASKS_ONDEMAND_*).

Each worker is an ``aitasks worker`` subprocess on a queue of its own (``aitasks-test-<random>``, deleted
afterwards, dead-letter queue included) with a throwaway storage root. Unreachable services skip the
tests, or fail them under ``AITASKS_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from aitasks.ondemand.app import OnDemandApp, make_app
from aitasks.runtime.settings import Settings, load_settings
from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]


def reachable_or_skip(settings: Settings) -> None:
    """Skip (fail in CI) unless the broker and the result backend answer."""
    import kombu
    import redis

    broker = settings.ondemand_broker_url.get_secret_value()
    try:
        with kombu.Connection(broker, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        skip_or_fail(f"RabbitMQ unreachable at {urlsplit(broker).hostname}:{urlsplit(broker).port}: {exc}")
    backend = settings.ondemand_result_backend.get_secret_value()
    try:
        client = redis.Redis.from_url(backend, socket_connect_timeout=3)
        client.ping()
        client.close()
    except Exception as exc:
        skip_or_fail(f"Redis unreachable at {urlsplit(backend).hostname}:{urlsplit(backend).port}: {exc}")


class Worker:
    """An ``aitasks worker`` subprocess; ``ready()`` waits for its readiness file."""

    def __init__(self, env: dict[str, str], workdir: Path, pool: str, name: str) -> None:
        self.health = workdir / f"health-{name}"
        self.log_path = workdir / f"worker-{name}.log"
        argv = [sys.executable, "-m", "aitasks.cli", "worker", f"--pool={pool}", "--concurrency=1"]
        argv += ["--include=tests.ondemand.worker_tasks", f"--health-dir={self.health}"]
        argv += [f"--hostname=aitasks-test-{name}-{uuid.uuid4().hex[:6]}@%h"]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def ready(self, timeout: float = 60.0) -> Worker:
        deadline = time.monotonic() + timeout
        while not (self.health / "ready").exists():
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"worker not ready within {timeout} s:\n{self.log()}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


class Lab:
    """A queue of its own, a storage root, the app to submit with, and the workers started on it."""

    def __init__(self, workdir: Path, **overrides: Any) -> None:
        self.workdir = workdir
        self.queue = f"aitasks-test-{uuid.uuid4().hex[:10]}"
        self.notes = workdir / "notes"
        self.notes.mkdir(parents=True, exist_ok=True)
        self.env_overrides = {
            "AITASKS_STORAGE_ROOT": str(workdir / "store"),
            "AITASKS_ONDEMAND_QUEUE": self.queue,
            "AITASKS_ACTOR": "ondemand-worker",
            "AITASKS_TEST_ONDEMAND_DIR": str(self.notes),
            **{f"AITASKS_{k.upper()}": str(v) for k, v in overrides.items()},
        }
        self.settings = load_settings(storage_root=str(workdir / "store"), ondemand_queue=self.queue, **overrides)
        reachable_or_skip(self.settings)
        self.app: OnDemandApp = make_app(self.settings)
        self.workers: list[Worker] = []
        self.task_ids: list[str] = []

    def worker(self, pool: str = "solo", name: str = "w", **env: str) -> Worker:
        full = {**os.environ, **self.env_overrides, **env}
        full["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), full.get("PYTHONPATH", "")])
        w = Worker(full, self.workdir, pool, f"{name}{len(self.workers)}")
        self.workers.append(w)
        return w

    def audit(self, run_id: str) -> list[dict[str, Any]]:
        from aitasks.runtime.audit import audit_from_settings

        return [r for r in audit_from_settings(self.settings).records() if r.get("run_id") == run_id]

    def lines(self, name: str) -> list[str]:
        path = self.notes / name
        return path.read_text().splitlines() if path.exists() else []

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        from celery.result import AsyncResult

        for task_id in self.task_ids:
            with contextlib.suppress(Exception):
                AsyncResult(task_id, app=self.app).forget()
        with contextlib.suppress(Exception), self.app.connection_for_write() as conn:
            self.app.topology.delete(conn)


@contextlib.contextmanager
def lab(workdir: Path, **overrides: Any) -> Iterator[Lab]:
    it = Lab(workdir, **overrides)
    try:
        yield it
    finally:
        it.close()


def eventually(check: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll ``check()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
