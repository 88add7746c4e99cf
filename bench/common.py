"""Record format and helpers shared by the benchmarks."""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
#: The default port of each service a bench may need, when its URL names none.
_PORTS = {"redis": 6379, "rabbitmq": 5672, "postgres": 5432}


def record(
    benchmark: str,
    metric: str,
    value: float,
    unit: str,
    baseline: str,
    baseline_value: float,
    params: dict[str, Any],
    *,
    higher_is_better: bool = False,
) -> dict[str, Any]:
    """One figure: ``ratio`` = value / baseline_value (how many times the baseline)."""
    ratio = value / baseline_value if baseline_value else float("inf")
    return {
        "benchmark": benchmark,
        "metric": metric,
        "value": round(value, 6),
        "unit": unit,
        "baseline": baseline,
        "baseline_value": round(baseline_value, 6),
        "ratio": round(ratio, 3),
        "higher_is_better": higher_is_better,
        "params": params,
    }


def percentiles_ms(fn: Callable[[int], Any], n: int, warmup: int = 20) -> tuple[float, float]:
    """p50 and p99 in milliseconds of ``fn(i)`` over ``n`` calls."""
    for i in range(warmup):
        fn(-1 - i)
    samples = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn(i)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.99 * len(samples)))]


def service_url(service: str) -> str:
    """The URL a bench uses for ``service`` (``redis``, ``rabbitmq``, ``postgres``), from the settings."""
    from aitasks.runtime.settings import load_settings

    settings = load_settings()
    if service == "redis":
        return os.environ.get("AITASKS_BENCH_REDIS_URL", settings.redis_url)
    if service == "rabbitmq":
        return settings.ondemand_broker_url.get_secret_value()
    if service == "postgres":
        return os.environ.get("AITASKS_BENCH_POSTGRES_URL", "postgresql://127.0.0.1:5432/postgres")
    raise ValueError(f"unknown service {service!r}; known: {', '.join(sorted(_PORTS))}")


def service_problem(service: str, timeout_s: float = 2.0) -> str | None:
    """Why ``service`` cannot be reached (one line, no credentials), or ``None`` when a TCP connect works."""
    url = urlsplit(service_url(service))
    host, port = url.hostname or "127.0.0.1", url.port or _PORTS[service]
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"{service} unreachable at {host}:{port} ({exc.strerror or exc})"


def _git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return ""
    return out.stdout.strip()


def run_meta() -> dict[str, Any]:
    """Facts about the machine and the code of a bench run (written beside latest.json)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "date": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "git_revision": _git_revision(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count() or 0,
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0),
        "load_average_1_5_15": [round(x, 2) for x in load],
    }


def make_reference(latest: Path, reference: Path, note: str = "") -> Path:
    """Write the committed snapshot: ``{"meta": run facts, "records": latest.json}`` (sorted, stable)."""
    if not latest.exists():
        raise SystemExit(f"{latest} does not exist: run `make bench` (or `python -m bench --only ...`) first")
    records = json.loads(latest.read_text("utf-8"))
    meta_path = latest.with_name("latest.meta.json")
    meta = json.loads(meta_path.read_text("utf-8")) if meta_path.exists() else {}
    if note:
        meta["note"] = note
    records = sorted(records, key=lambda r: (r["benchmark"], r["metric"]))
    reference.write_text(json.dumps({"meta": meta, "records": records}, indent=2, sort_keys=True) + "\n", "utf-8")
    return reference
