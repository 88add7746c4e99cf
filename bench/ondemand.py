"""On-demand tasks: submit -> result round trip on a real Celery worker, against a direct call.

Both paths call the same trivial task (``bench.noop``) through the runtime (validation, key, lease,
commit, audit, span, metrics) on the same kind of storage, with a new input each call, so the
difference is what Celery adds: publish with confirm (RabbitMQ), delivery to a prefork worker (the
production pool), the pool hop, the result in Redis and the submitter's wait for it.

The broker and the result backend come from the settings (``AITASKS_ONDEMAND_BROKER_URL``,
``AITASKS_ONDEMAND_RESULT_BACKEND``); the queue is a throwaway one, deleted afterwards.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import percentiles_ms, record
from bench.task_overhead import noop_task

ROOT = Path(__file__).resolve().parents[1]


class ServiceUnavailableError(RuntimeError):
    pass


def _start_worker(env: dict[str, str], health: Path, log: Path, pool: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "aitasks.cli", "worker", f"--pool={pool}", "--concurrency=1"]
    argv += [
        "--include=bench.task_overhead",
        f"--health-dir={health}",
        f"--hostname=aitasks-bench-{uuid.uuid4().hex[:6]}@%h",
    ]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (health / "ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise ServiceUnavailableError(f"the bench worker did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    return proc


def bench_ondemand(n: int = 200, pool: str = "prefork") -> list[dict[str, Any]]:
    """Round-trip p50/p99 (submit -> result) and the overhead over a direct call, measured in this run.

    Once with the storage root on disk (fsync, as production writes) and once on tmpfs when there is
    one (what Celery adds without the disk's noise).
    """
    import kombu

    from aitasks.ondemand import make_app
    from aitasks.runtime import logging as rlog
    from aitasks.runtime.settings import load_settings

    rlog.configure_logging("info", "json", stream=io.StringIO())
    broker = load_settings().ondemand_broker_url.get_secret_value()
    try:
        with kombu.Connection(broker, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        raise ServiceUnavailableError(f"RabbitMQ unreachable: {exc}") from None
    roots = [("disk", str(Path.cwd()))]
    if Path("/dev/shm").is_dir():
        roots.append(("tmpfs", "/dev/shm"))
    out: list[dict[str, Any]] = []
    for label, base in roots:
        queue = f"aitasks-bench-{uuid.uuid4().hex[:8]}"
        with tempfile.TemporaryDirectory(prefix="aitasks-bench-ondemand-", dir=base) as tmp:
            settings = load_settings(storage_root=str(Path(tmp) / "store"), ondemand_queue=queue)
            app = make_app(settings)
            try:
                figures = _measure(app, settings, Path(tmp), n, pool)
            finally:
                with app.connection_for_write() as conn:
                    app.topology.delete(conn)
        params = {"n": n, "pool": f"{pool}, concurrency 1", "task": "bench.noop, new input each call", "storage": label}
        rt_p50, rt_p99, direct_p50, direct_p99, submit_p50 = figures
        out += [
            record("ondemand", f"round_trip_p50[{label}]", rt_p50, "ms", "direct_call_p50", direct_p50, params),
            record("ondemand", f"round_trip_p99[{label}]", rt_p99, "ms", "direct_call_p99", direct_p99, params),
            record(
                "ondemand",
                f"celery_overhead_p50[{label}]",
                rt_p50 - direct_p50,
                "ms",
                "direct_call_p50",
                direct_p50,
                params,
            ),
            record("ondemand", f"submit_only_p50[{label}]", submit_p50, "ms", "direct_call_p50", direct_p50, params),
        ]
    return out


def _measure(app: Any, settings: Any, tmp: Path, n: int, pool: str) -> tuple[float, float, float, float, float]:
    from aitasks.ondemand import submit, wait
    from aitasks.runtime.task import RunContext, Runtime
    from aitasks.runtime.telemetry import Telemetry

    env = {
        **os.environ,
        "AITASKS_STORAGE_ROOT": settings.storage_root,
        "AITASKS_ONDEMAND_QUEUE": settings.ondemand_queue,
        "AITASKS_LOG_LEVEL": "warning",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = _start_worker(env, tmp / "health", tmp / "worker.log", pool)
    try:
        # Direct: the same task in this process, on a storage root beside the worker's.
        direct = settings.model_copy(update={"storage_root": str(tmp / "direct")})
        rt = Runtime.create(direct, run=RunContext(run_id="bench-direct"), telemetry=Telemetry())
        direct_p50, direct_p99 = percentiles_ms(lambda i: noop_task({"x": i, "label": "direct"}, runtime=rt), n)

        def round_trip(i: int) -> None:
            sub = submit("bench.noop", {"x": i, "label": "ondemand"}, app=app)
            result = wait(app, sub.task_id, timeout=60)["result"]
            assert result == {"y": 2 * i}, result

        rt_p50, rt_p99 = percentiles_ms(round_trip, n)
        submit_p50, _ = percentiles_ms(lambda i: submit("bench.noop", {"x": 10**6 + i, "label": "enqueue"}, app=app), n)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rt_p50, rt_p99, direct_p50, direct_p99, submit_p50


if __name__ == "__main__":
    import json

    print(json.dumps(bench_ondemand(int(sys.argv[1]) if len(sys.argv) > 1 else 200), indent=2))
