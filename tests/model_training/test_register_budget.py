"""``model.register`` against an MLflow server that hangs or is gone (issue 14, finding 11).

Before: MLflow's own HTTP retries (7, backoff factor 2) made one request to a refused port take 252 s
(measured) and the task about 16 minutes; a server that accepts and never answers hung the step with no
audit record past ``started``. Now the task fails at its deadline (a hung server) or once its retry
budget is spent (a refused port), with a ``failed`` audit record and a one-line error.
"""

from __future__ import annotations

import contextlib
import json
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aitasks.runtime import logging as rlog
from aitasks.runtime.bundle import publish_bundle
from aitasks.runtime.errors import ServiceUnavailableError
from aitasks.runtime.retry import DeadlineExceededError
from aitasks.runtime.settings import Settings
from aitasks.runtime.storage import storage_for
from aitasks.runtime.task import RunContext, Runtime
from aitasks.runtime.telemetry import Telemetry
from tests.conftest import CapturedRuntime


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A TCP server on localhost that accepts every connection and never answers; yields its URL."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    srv.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # kept open, never read, never answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()  # an abandoned request then ends with a connection error
        srv.close()


def refused_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"  # released: nothing listens there


def _runtime(c: CapturedRuntime, **settings: object) -> Runtime:
    rt = Runtime.create(
        Settings(storage_root=str(c.root / "store"), actor="pytest", input_roots=(str(c.root),), **settings),  # type: ignore[arg-type]
        run=RunContext(run_id="run-budget"),
        telemetry=Telemetry(span_exporter=c.spans),
    )
    rt.sleep = time.sleep  # real backoff: the budget is measured on the wall clock
    rlog.configure_logging("debug", "json", stream=c.logs)  # Runtime.create pointed logging at stderr
    return rt


def _inputs(root: Path) -> dict[str, str]:
    """A model bundle and an evaluation file: all model.register reads before it calls MLflow."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "model.safetensors").write_bytes(b"\0" * 64)
        (Path(d) / "config.json").write_text("{}")
        model_uri = publish_bundle(
            storage_for(str(root)),
            Path(d),
            str(root / "bundle"),
            kind="model",
            meta={"task": "model.train@test", "params": {"epochs": 1}, "loss_curve": [0.5]},
        )
    metrics = root / "metrics.json"
    metrics.write_text(json.dumps({"blessing": {"blessed": False}, "model": {"recall_at_10": 0.1}}))
    return {"model_uri": model_uri, "metrics_uri": str(metrics), "model_name": "reco-budget"}


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    # A cold MLflow client costs seconds (its plugins import Feast), and the task's code fingerprint
    # imports its modules: both count against the deadline, so pay them before the timed calls.
    from mlflow import MlflowClient

    from aitasks.model_training.tasks import register_model_task

    MlflowClient(tracking_uri="http://127.0.0.1:9")
    assert register_model_task.code_fingerprint


def _failed(rt: Runtime) -> list[dict]:
    return [r for r in rt.audit.records() if r["task"] == "model.register" and r["status"] == "failed"]


def test_a_server_that_never_answers_fails_the_task_at_its_deadline(tmp_path: Path) -> None:
    from aitasks.model_training.tasks import register_model_task

    c = CapturedRuntime(tmp_path)
    with silent_server() as url:
        rt = _runtime(c, mlflow_tracking_uri=url, task_deadlines_s={"model.register": 6})
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceededError, match="passed its deadline of 6 s") as info:
            register_model_task(_inputs(tmp_path), runtime=rt)
        elapsed = time.monotonic() - t0
    assert "\n" not in str(info.value)
    # Bounded (the deadline plus the time to notice), where it used to hang for good.
    assert elapsed < 60, f"took {elapsed:.1f} s"
    statuses = [r["status"] for r in rt.audit.records() if r["task"] == "model.register"]
    assert statuses == ["started", "failed"]
    [failed] = _failed(rt)
    assert failed["error"]["kind"] == "deadline_exceeded"
    assert failed["retry"]["stopped_by"] == "deadline"


def test_a_silent_server_times_out_each_request_and_retries_within_the_budget(tmp_path: Path) -> None:
    from aitasks.model_training.tasks import register_model_task

    c = CapturedRuntime(tmp_path)
    with silent_server() as url:
        rt = _runtime(c, mlflow_tracking_uri=url, mlflow_http_timeout_s=1, task_retry_budgets_s={"model.register": 3})
        with pytest.raises(ServiceUnavailableError, match="Timeout") as info:
            register_model_task(_inputs(tmp_path), runtime=rt)
    message = str(info.value)
    assert "\n" not in message and "timeout 1 s, 0 client retries" in message
    [failed] = _failed(rt)
    assert failed["retry"]["stopped_by"] == "budget" and failed["retry"]["attempts"] >= 2


def test_an_unreachable_server_fails_within_the_retry_budget(tmp_path: Path) -> None:
    from aitasks.model_training.tasks import register_model_task

    c = CapturedRuntime(tmp_path)
    rt = _runtime(c, mlflow_tracking_uri=refused_url(), task_retry_budgets_s={"model.register": 3})
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match="is unreachable") as info:
        register_model_task(_inputs(tmp_path), runtime=rt)
    elapsed = time.monotonic() - t0
    message = str(info.value)
    assert "\n" not in message and len(message) < 300, message  # one summary line; the detail is in the logs
    assert "registry.unreachable" in c.log_text()
    [failed] = _failed(rt)
    assert failed["retry"]["stopped_by"] == "budget" and failed["retry"]["budget_s"] == 3
    assert failed["retry"]["attempts"] >= 2  # retried by the task, not by MLflow underneath
    assert elapsed < 60, f"took {elapsed:.1f} s (MLflow's own retries alone took 252 s per request)"
