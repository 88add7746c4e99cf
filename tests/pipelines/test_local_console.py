"""The quiet kfp.local console: one line per finished step, raw output in a file, the tail on failure."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
from rich.console import Console

from aitasks.runtime.audit import AuditLog
from aitasks.runtime.settings import Settings
from aitasks.runtime.task import Metric, RunContext, Runtime, TaskContext, TaskModel, ai_task
from pipelines.local_console import quiet_run, step_line, unsupported_table
from pipelines.unsupported import unsupported_locally
from tests.runtime import _tasks
from tests.runtime._tasks import scale_task


def _runtime(root: Path, step: str) -> Runtime:
    settings = Settings(storage_root=str(root), input_roots=(str(root.parent),))
    return Runtime.create(settings, run=RunContext(run_id="r1", step=step))


def test_each_finished_step_is_one_line_and_raw_output_goes_to_the_file(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    _tasks.CALLS.clear()
    root = tmp_path / "store"
    src = tmp_path / "n.txt"
    src.write_text("1 2 3")
    audit = AuditLog(root / "audit")
    log = tmp_path / "logs" / "run.log"
    console = Console(file=io.StringIO(), width=160)
    with quiet_run(log, audit, str(root), console):
        # What kfp.local does: executor subprocesses and the launcher write to fds 1 and 2.
        subprocess.run(
            [sys.executable, "-c", "import sys; print('EXECUTOR-STDOUT'); print('EXECUTOR-STDERR', file=sys.stderr)"],
            check=True,
        )
        print("IN-PROCESS-PRINT")
        scale_task({"source": str(src), "factor": 2.0}, runtime=_runtime(root, "scale-once"))
        scale_task({"source": str(src), "factor": 2.0}, runtime=_runtime(root, "scale-again"))
    raw = log.read_text()
    assert {"EXECUTOR-STDOUT", "EXECUTOR-STDERR", "IN-PROCESS-PRINT"} <= set(raw.split())
    seen = capfd.readouterr()
    terminal = seen.out + seen.err
    assert "EXECUTOR-STDOUT" not in terminal and "IN-PROCESS-PRINT" not in terminal, "nothing raw on the terminal"
    assert str(log) in console.file.getvalue()  # type: ignore[attr-defined]
    step_lines = [ln for ln in terminal.splitlines() if "test.scale" in ln]
    assert len(step_lines) == 2, terminal
    assert "scale-once" in step_lines[0] and "ran" in step_lines[0]
    assert "scale-again" in step_lines[1] and "reused" in step_lines[1]


def test_a_failed_run_shows_the_log_tail(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    audit = AuditLog(tmp_path / "store" / "audit")
    log = tmp_path / "run.log"
    with pytest.raises(RuntimeError), quiet_run(log, audit, str(tmp_path / "store"), Console(file=io.StringIO())):
        print("Traceback: the step's own error line")
        raise RuntimeError("kfp.local: task failed")
    terminal = capfd.readouterr().out
    assert "the run failed" in terminal and "the step's own error line" in terminal


def test_step_line_of_a_failure_names_the_error_kind_and_escapes_markup() -> None:
    line = step_line(
        {
            "task": "data.ingest",
            "step": "ingest[/x]",
            "status": "failed",
            "duration_ms": 1500,
            "error": {"kind": "data_format"},
        },
        None,
    )
    out = io.StringIO()
    Console(file=out, width=200).print(line)
    assert "ingest[/x]" in out.getvalue() and "data_format" in out.getvalue() and "1.5 s" in out.getvalue()


def test_the_unsupported_settings_are_one_table_row_per_step() -> None:
    rows = unsupported_locally("reco-training")
    assert rows["train-model"]["resources"].endswith("nvidia.com/gpu")
    assert rows["train-model"]["nodeSelector"] and rows["ingest-events"]["secretAsEnv"] == "yes"
    out = io.StringIO()
    Console(file=out, width=80).print(unsupported_table(rows))
    lines = out.getvalue().splitlines()
    header = lines.index(next(ln for ln in lines if ln.lstrip().startswith("step ")))
    assert len(lines) - header - 1 == len(rows), "a row per step, in 80 columns: not ~50 lines of raw dicts"
    assert "every step: pod labels, settings env, secret env" in " ".join(" ".join(lines[:header]).split())
    [train] = [ln for ln in lines if ln.lstrip().startswith("train-model")]
    assert "8Gi-16Gi" in train and "node selector" in train


class _FigParams(TaskModel):
    n: int


class _FigResult(TaskModel):
    rows: Annotated[int, Metric()]
    share: Annotated[float, Metric()]
    note: str


@ai_task(name="test.figures", version="1.0.0")
def _figures(params: _FigParams, ctx: TaskContext) -> _FigResult:
    """Figures.

    EN: Figures.
    FR: Chiffres.
    DE: Zahlen.
    """
    return _FigResult(rows=params.n, share=0.125, note="x")


def test_a_step_line_shows_the_result_s_metric_fields() -> None:
    line = step_line(
        {"task": "test.figures", "step": "figs", "status": "succeeded", "duration_ms": 20},
        {"rows": 12000, "share": 0.125, "note": "x"},
    )
    assert "rows=12,000" in line and "share=0.125" in line and "note" not in line
