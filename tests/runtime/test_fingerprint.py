"""The code a task runs is part of its idempotency key, and every reuse says why it was a reuse."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aitasks.runtime import fingerprint
from tests.conftest import CapturedRuntime

TASK_MODULE = '''
from aitasks.runtime.task import TaskContext, TaskModel, ai_task
from {pkg} import helper


class P(TaskModel):
    x: int


class R(TaskModel):
    y: int


@ai_task(name="{name}", version="1.0.0")
def double_task(params: P, ctx: TaskContext) -> R:
    """Doubles. EN: doubles. FR: double. DE: verdoppelt."""
    return R(y=helper.scale(params.x) {op})
'''


@pytest.fixture
def edit_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A first-party package ``fp_<n>`` on sys.path holding a task module and a helper it imports."""
    pkg = f"fp_{tmp_path.name.replace('-', '_')}"
    root = tmp_path / "src" / pkg
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "helper.py").write_text("def scale(x):\n    return 2 * x\n")
    (root / "tasks.py").write_text(TASK_MODULE.format(pkg=pkg, name=f"test.{pkg}", op=""))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    fingerprint.clear_cache()
    yield root, pkg
    fingerprint.clear_cache()
    for m in [m for m in sys.modules if m == pkg or m.startswith(pkg + ".")]:
        del sys.modules[m]


def _load(pkg: str):
    fingerprint.clear_cache()
    importlib.invalidate_caches()
    for m in [m for m in sys.modules if m == pkg or m.startswith(pkg + ".")]:
        del sys.modules[m]
    return importlib.import_module(f"{pkg}.tasks").double_task


def test_an_edited_task_body_without_a_version_bump_runs_again(
    edit_pkg: tuple[Path, str], captured: CapturedRuntime
) -> None:
    root, pkg = edit_pkg
    task = _load(pkg)
    assert task({"x": 3}, runtime=captured.rt).y == 6
    assert task({"x": 3}, runtime=captured.rt).y == 6  # same code: reused
    (root / "tasks.py").write_text(TASK_MODULE.format(pkg=pkg, name=f"test.{pkg}", op="+ 1"))
    edited = _load(pkg)
    assert edited.version == task.version == "1.0.0"
    assert edited({"x": 3}, runtime=captured.rt).y == 7, "the edited body ran instead of the old result"
    records = captured.rt.audit.records()
    statuses = [r["status"] for r in records if r["task"] == f"test.{pkg}" and r["status"] != "started"]
    assert statuses == ["succeeded", "idempotent_hit", "succeeded"]


def test_an_edited_helper_module_changes_the_fingerprint(edit_pkg: tuple[Path, str]) -> None:
    root, pkg = edit_pkg
    before = _load(pkg).code_fingerprint
    assert _load(pkg).code_fingerprint == before, "stable while nothing changes"
    (root / "helper.py").write_text("def scale(x):\n    return 3 * x\n")
    assert _load(pkg).code_fingerprint != before


def test_the_closure_covers_first_party_imports_only() -> None:
    closure = fingerprint.module_closure("aitasks.data_processing.tasks")
    assert "aitasks.data_processing.tasks" in closure
    assert "aitasks.runtime.task" in closure, "from-imports of first-party modules count"
    assert "aitasks" in closure and "aitasks.data_processing" in closure, "package __init__ modules count"
    # An import inside a task body (lazy, for start-up time) still counts.
    assert "aitasks.data_processing.etl" in closure or any(m.startswith("aitasks.data_processing.etl") for m in closure)
    assert not any(m.split(".")[0] in {"pydantic", "numpy", "pyarrow"} for m in closure)
    assert all(len(h) == 64 for h in closure.values())


def test_fingerprint_is_the_same_in_a_cold_process() -> None:
    from aitasks.runtime.task import get_task

    here = get_task("data.drift").code_fingerprint
    code = "from aitasks.runtime.task import get_task; print(get_task('data.drift').code_fingerprint)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == here


def test_a_reuse_says_why_in_the_audit_and_in_audit_tail(edit_pkg: tuple[Path, str], captured: CapturedRuntime) -> None:
    _, pkg = edit_pkg
    task = _load(pkg)
    task({"x": 5}, runtime=captured.rt)
    task({"x": 5}, runtime=captured.rt)
    first, hit = [r for r in captured.rt.audit.records() if r["task"] == f"test.{pkg}" and r["status"] != "started"]
    assert first["key_parts"]["code"] == task.code_fingerprint[:16]
    assert set(first["key_parts"]) == {"task", "version", "code", "inputs", "artifacts"}
    reused = hit["reused"]
    assert reused["same"] == ["task", "version", "code", "inputs", "artifacts"]
    assert "same idempotency key" in reused["reason"]
    assert reused["key_parts"] == first["key_parts"]
    assert reused["committed_by_run"] == first["run_id"] and reused["committed_at"].startswith("20")
    assert "5" not in json.dumps(reused["key_parts"]["inputs"]), "inputs appear as a hash, never raw"

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "aitasks.cli",
            "audit",
            "tail",
            "--root",
            str(captured.rt.settings.resolved_audit_root()),
            "--text",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    line = out.stdout.strip().splitlines()[-1]
    assert "idempotent_hit" in line and "reused the result of run" in line
    assert f"code {task.code_fingerprint[:16]}" in line


def test_a_source_less_module_falls_back_to_the_distribution_version() -> None:
    fingerprint.clear_cache()
    assert fingerprint._module_fingerprint("no_such_module_anywhere").startswith("dist:")
    fingerprint.clear_cache()


def test_distinct_tasks_of_distinct_modules_have_distinct_fingerprints() -> None:
    from aitasks.runtime.task import get_task

    assert get_task("data.drift").code_fingerprint != get_task("run.summary").code_fingerprint
