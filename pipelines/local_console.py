"""A quiet kfp.local run: one line per step as it finishes, the raw executor logs in a file.

kfp.local streams every executor's output (the launcher's JSON, each task's structured logs) to the
terminal: a demo printed about 1,400 lines before its summary. Here the process's stdout and stderr
(file descriptors 1 and 2, so the executor subprocesses too) go to a log file whose path is printed
first, and a watcher prints one line per finished step from the run's audit trail (what the platform
recorded: status, duration, the result's metric fields). On failure the log's last lines are shown.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

#: The kubernetes settings kfp.local ignores, in the order of the table's columns.
K8S_SETTINGS = ("nodeSelector", "tolerations", "podMetadata", "configMapAsEnv", "secretAsEnv")
_MARK = {"succeeded": "[green]✓[/green]", "idempotent_hit": "[cyan]=[/cyan]", "failed": "[red]✗[/red]"}
_LABEL = {"succeeded": "ran", "idempotent_hit": "reused", "failed": "failed", "rejected": "rejected"}
#: Lines of the raw log shown when the run fails.
TAIL_LINES = 40


#: Short names of the kubernetes settings, as the table shows them.
_K8S_SHORT = {
    "nodeSelector": "node selector",
    "tolerations": "tolerations",
    "podMetadata": "pod labels",
    "configMapAsEnv": "settings env",
    "secretAsEnv": "secret env",
}


def unsupported_table(rows: dict[str, dict[str, str]]) -> Table:
    """Step x setting: what the compiled pipeline asks for that kfp.local does not honour (fits 80 columns)."""
    everywhere = [k for k in K8S_SETTINGS if rows and all(r.get(k) for r in rows.values())]
    title = "Not honoured by kfp.local (the cluster applies them)"
    if everywhere:
        title += "; every step: " + ", ".join(_K8S_SHORT[k] for k in everywhere)
    table = Table(title=title, title_justify="left", box=None)
    table.add_column("step", style="bold", no_wrap=True)
    table.add_column("cpu", no_wrap=True)
    table.add_column("memory", no_wrap=True)
    table.add_column("gpu", no_wrap=True)
    table.add_column("kubernetes")
    for step, settings in sorted(rows.items()):
        cpu, memory, gpu = _resources(settings.get("resources", ""))
        k8s = ", ".join(_K8S_SHORT[k] for k in K8S_SETTINGS if settings.get(k) and k not in everywhere)
        table.add_row(escape(step), cpu, memory, gpu, k8s)
    return table


def _resources(short: str) -> tuple[str, str, str]:
    """``"1-2 / 4Gi-8Gi + 1 nvidia.com/gpu"`` -> ``("1-2", "4Gi-8Gi", "1")``."""
    if not short:
        return "", "", ""
    main, _, gpu = short.partition(" + ")
    cpu, _, memory = main.partition(" / ")
    return cpu, memory, gpu.split(" ")[0] if gpu else ""


def _key_figures(task: str, result: dict[str, Any], limit: int = 4) -> str:
    """The result's ``Metric`` fields, as ``name=value`` (the first ``limit``)."""
    from aitasks.runtime.task import get_task, metric_values

    try:
        values = metric_values(get_task(task).result_model.model_validate(result))
    except Exception:  # a result of an older version, an unknown task: no figures rather than no line
        return ""
    shown = [f"{k}={v:,.4g}" if not float(v).is_integer() else f"{k}={int(v):,}" for k, v in values.items()]
    return " ".join(shown[:limit]) + (" …" if len(shown) > limit else "")


def step_line(record: dict[str, Any], result: dict[str, Any] | None) -> str:
    """One console line for a final audit record: mark, step, task, outcome, duration, key figures."""
    status = str(record.get("status", ""))
    step = str(record.get("step") or "-")
    seconds = float(record.get("duration_ms", 0.0)) / 1000
    figures = _key_figures(str(record["task"]), result) if result else ""
    if status in ("failed", "rejected"):
        figures = str((record.get("error") or {}).get("kind", "")) or figures
    mark = _MARK.get(status, "•")
    return (
        f"  {mark} {escape(step):<22} [dim]{escape(str(record['task'])):<24}[/dim] "
        f"{_LABEL.get(status, status):<8} {seconds:7.1f} s  {escape(figures)}"
    )


class _Watcher(threading.Thread):
    """Polls the audit trail and prints a line for each final record of this run."""

    def __init__(self, audit: Any, storage_root: str, start: int, console: Console, interval: float = 0.5) -> None:
        super().__init__(name="kfp-local-progress", daemon=True)
        from aitasks.runtime.idempotency import IdempotencyStore
        from aitasks.runtime.storage import storage_for

        self.audit, self.seen, self.console = audit, start, console
        self.store = IdempotencyStore(storage_for(storage_root), storage_root)
        self.interval = interval
        self.stop = threading.Event()
        self.lines = 0

    def poll(self) -> None:
        try:
            records = self.audit.records()
        except Exception:
            return
        for rec in records[self.seen :]:
            if rec.get("status") in ("succeeded", "idempotent_hit", "failed", "rejected") and "task" in rec:
                committed = None
                if rec["status"] != "failed" and rec.get("idempotency_key"):
                    with contextlib.suppress(Exception):
                        committed = self.store.get(rec["task"], rec["idempotency_key"])
                self.console.print(step_line(rec, (committed or {}).get("result")), highlight=False)
                self.lines += 1
        self.seen = len(records)

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.poll()
        self.poll()


@contextlib.contextmanager
def _fds_to(log_path: Path) -> Iterator[Console]:
    """Send fds 1 and 2 (this process and its children) to ``log_path``; yield a console on the old stdout."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    out = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8")
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    old_streams = sys.stdout, sys.stderr
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        # Python-level writers too, wherever sys.stdout/err pointed (a test's capture, an IDE's console).
        sys.stdout = sys.stderr = os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")
        yield Console(file=out, highlight=False, soft_wrap=True)
    finally:
        sys.stdout.flush()
        captured = sys.stdout
        sys.stdout, sys.stderr = old_streams
        captured.close()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)
        out.close()


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a text file (decoding errors replaced)."""
    try:
        text = path.read_text("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return text.splitlines()[-lines:]


@contextlib.contextmanager
def quiet_run(log_path: Path, audit: Any, storage_root: str, console: Console) -> Iterator[None]:
    """Run the body with its output in ``log_path`` and one line per finished step on ``console``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"[dim]raw executor logs: {escape(str(log_path))}[/dim]")
    start = len(audit.records())
    with _fds_to(log_path) as terminal:
        watcher = _Watcher(audit, storage_root, start, terminal)
        watcher.start()
        try:
            yield
        except BaseException:
            watcher.stop.set()
            watcher.join(10)
            terminal.print(f"[red]the run failed; last {TAIL_LINES} lines of {escape(str(log_path))}:[/red]")
            for line in tail(log_path):
                terminal.print(f"  [dim]{escape(line)}[/dim]", highlight=False)
            raise
        watcher.stop.set()
        watcher.join(10)
