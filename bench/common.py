"""Record format and helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


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
