"""Task overhead: validation + idempotency + audit + trace + metrics, against a bare function call.

Three paths, all measured in this run against the same bare call:
* ``first_call``: a new key every call (validate, key, store miss, run, commit create-only, audit);
* ``idempotent_hit``: the same key again (validate, key, store hit, audit);
* both with durable writes (fsync) on the machine's disk, as production runs them.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field

from aitasks.runtime.task import TaskContext, TaskModel, ai_task
from bench.common import percentiles_ms, record


class NoopParams(TaskModel):
    x: int = Field(ge=-(10**9))
    label: str = "bench"


class NoopResult(TaskModel):
    y: int


def bare(params: NoopParams, ctx: Any) -> NoopResult:
    return NoopResult(y=params.x * 2)


@ai_task(name="bench.noop", version="1.0.0")
def noop_task(params: NoopParams, ctx: TaskContext) -> NoopResult:
    """EN: Benchmark no-op. FR: Tâche vide de mesure. DE: Leere Messaufgabe."""
    return bare(params, ctx)


def bench_task_overhead(n: int = 1000) -> list[dict[str, Any]]:
    from aitasks.runtime import logging as rlog
    from aitasks.runtime.settings import Settings
    from aitasks.runtime.task import RunContext, Runtime
    from aitasks.runtime.telemetry import Telemetry

    results = []
    rlog.configure_logging("info", "json", stream=io.StringIO())
    bare_p50, bare_p99 = percentiles_ms(lambda i: bare(NoopParams(x=i), None), n)
    roots = [("disk", str(Path.cwd()))]
    if Path("/dev/shm").is_dir():  # the same code without disk latency: what the CPU side costs
        roots.append(("tmpfs", "/dev/shm"))
    for label, base in roots:
        with tempfile.TemporaryDirectory(prefix="aitasks-bench-", dir=base) as tmp:
            rt = Runtime.create(Settings(storage_root=tmp), run=RunContext(run_id="bench"), telemetry=Telemetry())
            first_p50, first_p99 = percentiles_ms(lambda i, rt=rt: noop_task({"x": i}, runtime=rt), n)
            hit_p50, _ = percentiles_ms(lambda i, rt=rt: noop_task({"x": 5}, runtime=rt), n)
            params = {"n": n, "storage": f"{label}, fsync on", "log_sink": "in-memory JSON"}
            results += [
                record("task_overhead", f"first_call_p50[{label}]", first_p50, "ms", "bare_call_p50", bare_p50, params),
                record("task_overhead", f"first_call_p99[{label}]", first_p99, "ms", "bare_call_p99", bare_p99, params),
                record(
                    "task_overhead", f"idempotent_hit_p50[{label}]", hit_p50, "ms", "bare_call_p50", bare_p50, params
                ),
                record(
                    "task_overhead",
                    f"overhead_p50_vs_1ms_target[{label}]",
                    first_p50 - bare_p50,
                    "ms",
                    "target",
                    1.0,
                    params,
                ),
            ]
    return results
