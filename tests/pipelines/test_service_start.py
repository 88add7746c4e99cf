"""Services the tests and demo-cluster start: waits that scale with the load, failures that name the slow phase."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines import cluster_demo as cd


def test_the_wait_scales_with_the_load_per_core_within_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AITASKS_SERVICE_START_TIMEOUT_S", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    for load, expected in ((0.3, 180.0), (2.0, 180.0), (5.0, 450.0), (40.0, 180.0 * cd.MAX_LOAD_FACTOR)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert cd.start_timeout(cd.MLFLOW_HEALTH_TIMEOUT_S) == pytest.approx(expected), load
    monkeypatch.setenv("AITASKS_SERVICE_START_TIMEOUT_S", "12.5")
    assert cd.start_timeout(cd.MLFLOW_HEALTH_TIMEOUT_S) == 12.5


def test_a_start_log_says_which_phase_was_slow(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("importing...\nrunning migrations\n")
    started = cd.StartLog("mlflow server", timeout_s=90.0)
    started.reached("port open")
    started.reached("port open")  # the first time counts
    err = started.timed_out("/health to answer (the port is open)", log)
    assert isinstance(err, cd.ServiceUnavailable) and isinstance(err, cd.ServiceStartTimeout)
    text = str(err)
    assert "not ready within 90 s: still waiting for /health to answer" in text
    assert "port open after 0.0 s" in text and "per core at start" in text
    assert "AITASKS_SERVICE_START_TIMEOUT_S" in text and text.endswith("running migrations\n")
    assert list(started.phases) == ["port open"]


def test_an_mlflow_server_too_slow_to_start_fails_naming_the_phase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real server given one second: MLflow is still importing, its port not open yet, and the error says so."""
    monkeypatch.setenv("AITASKS_SERVICE_START_TIMEOUT_S", "1")
    backend = f"sqlite:///{tmp_path / 'mlflow.db'}"
    server = cd.mlflow_server(tmp_path / "server", backend, str(tmp_path / "artifacts"), {})
    with pytest.raises(cd.ServiceStartTimeout, match="still waiting for its port to open") as info:
        server.__enter__()
    assert "mlflow server not ready within 1 s" in str(info.value)


def test_the_gcs_emulator_starts_within_its_scaled_wait(tmp_path: Path) -> None:
    with cd.gcs_emulator(tmp_path, "bucket-a") as url:
        assert url.startswith("http://127.0.0.1:")
