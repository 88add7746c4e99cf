"""The command line: one clear line on error, exit codes people and CI can rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from aitasks.runtime.audit import AuditLog

CLI = [sys.executable, "-m", "aitasks.cli"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], check=False, capture_output=True, text=True, env=env, timeout=120)


def test_tasks_list_shows_every_task() -> None:
    out = run("tasks", "list", "--json")
    assert out.returncode == 0, out.stderr
    names = {t["name"] for t in json.loads(out.stdout)}
    assert {"data.source", "data.ingest", "data.features", "feast.materialize", "data.drift"} <= names


def test_audit_verify_exit_codes(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit")
    for i in range(3):
        log.append({"task": "t", "i": i})
    ok = run("audit", "verify", "--root", str(tmp_path / "audit"))
    assert ok.returncode == 0 and "verified" in ok.stdout
    lines = log.log_path.read_text().splitlines()
    log.log_path.write_text("\n".join(lines[:2]) + "\n")
    bad = run("audit", "verify", "--root", str(tmp_path / "audit"))
    assert bad.returncode == 1 and "truncated" in bad.stderr


def test_bad_input_gives_one_clear_line(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "AITASKS_STORAGE_ROOT": str(tmp_path)}
    out = run("tasks", "run", "data.drift", "--params", '{"features_uri": "/nope", "psi_threshold": -1}', env=env)
    assert out.returncode == 3, "invalid input (exit 1 is a failed task, 2 a usage error)"
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "psi_threshold" in lines[0] and "Traceback" not in out.stderr


def test_audit_tail_filters_answer_who_ran_what(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit")
    log.append(
        {"task": "audio.analyze", "run_id": "r1", "step": "analyze-shard", "status": "failed", "submitter": "ci"}
    )
    log.append(
        {"task": "audio.analyze", "run_id": "r2", "step": "analyze-shard", "status": "succeeded", "submitter": "ana"}
    )
    log.append({"task": "audio.collect", "run_id": "r2", "step": "collect", "status": "succeeded", "submitter": "ana"})
    out = run("audit", "tail", "--root", str(tmp_path / "audit"), "--run", "r2", "--task", "audio.analyze")
    assert out.returncode == 0, out.stderr
    [rec] = [json.loads(line) for line in out.stdout.splitlines()]
    assert rec["submitter"] == "ana" and rec["status"] == "succeeded"
    failed = run("audit", "tail", "--root", str(tmp_path / "audit"), "--status", "failed")
    assert [json.loads(x)["run_id"] for x in failed.stdout.splitlines()] == ["r1"]
