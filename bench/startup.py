"""Step start-up: process start -> task body, per task family, beside a bare interpreter.

Every pipeline step and every CLI call pays its imports before doing any work. This bench starts cold
processes (``sys.executable``, the repository as working directory) and reads ``time.monotonic()``
(CLOCK_MONOTONIC: one clock for every process of the machine) in the parent just before the spawn and in
the child at each stage:

* baselines: ``python -c pass`` and ``python -c "import numpy"``, the mark taken at the end of the script;
* one step per family (:mod:`bench.startup_probe`): the family's component module (``kfp``), then the real
  :func:`~aitasks.runtime.step.run_step` (runtime from the run context, the family's task module, input
  validation, idempotency key, ``started`` audit record) up to the task body (``to_body``), then the body's
  working set (the modules the family's main task body imports first: ``to_ready``);
* the CLI's light paths, ``aitasks --help`` and ``aitasks tasks list``: spawn -> exit.

``params.stages_median_s`` also holds the child's CPU seconds to body and to ready (``time.process_time``):
on a loaded machine wall time swings several-fold, CPU time much less.

Runs are interleaved (one of each path per round, after one untimed warm-up round) so a burst of load on a
shared machine hits every path alike; the figure is the median of ``repeats`` rounds and ``params`` holds
min/max and the per-stage medians. The issue's target is the *difference* to ``python -c "import numpy"``: within 1.5 s
(``params.minus_numpy_s``); the ``ratio`` field is value / baseline as for every record.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import record

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 5
#: The issue's target: a step's start-up within this many seconds of ``python -c "import numpy"``.
TARGET_MINUS_NUMPY_S = 1.5
FAMILIES = ("audio", "data_processing", "training", "recommendation", "content_generation")
_MARK = "import time; print(time.monotonic())"
BASELINES: dict[str, list[str]] = {
    "python -c pass": ["-c", _MARK],
    'python -c "import numpy"': ["-c", "import numpy; " + _MARK],
}
CLI: dict[str, list[str]] = {
    "aitasks --help": ["-m", "aitasks.cli", "--help"],
    "aitasks tasks list": ["-m", "aitasks.cli", "tasks", "list"],
}


def _env() -> dict[str, str]:
    # The step reads its settings from the environment: none of the caller's AITASKS_* leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AITASKS_")}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _spawn(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(spawn time, exit time, stdout) of ``python *args`` in the repository."""
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    t1 = time.monotonic()
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"start-up bench: `python {' '.join(args)}` failed: {' | '.join(tail)}")
    return t0, t1, out.stdout


def _last_json(stdout: str) -> dict[str, Any]:
    # The step logs JSON lines too; the probe's marks are its last line.
    return json.loads(stdout.strip().splitlines()[-1])


def measure(repeats: int = REPEATS, families: tuple[str, ...] = FAMILIES) -> dict[str, Any]:
    """Raw samples (seconds) of every path, ``repeats`` interleaved rounds."""
    env = _env()
    base: dict[str, list[float]] = {k: [] for k in BASELINES}
    cli: dict[str, list[float]] = {k: [] for k in CLI}
    steps: dict[str, dict[str, list[float]]] = {
        f: {"interp": [], "component": [], "to_body": [], "to_ready": [], "cpu_to_body": [], "cpu_to_ready": []}
        for f in families
    }
    heavy: dict[str, dict[str, Any]] = {}
    # One untimed round first: bytecode caches written and files in the page cache, as in a built image.
    for fam in families:
        with tempfile.TemporaryDirectory(prefix="aitasks-bench-startup-") as tmp:
            _spawn(["-m", "bench.startup_probe", fam, tmp], env)
    for args in CLI.values():
        _spawn(args, env)
    for _ in range(repeats):
        for label, args in BASELINES.items():
            t0, _t1, out = _spawn(args, env)
            base[label].append(float(out.strip().splitlines()[-1]) - t0)
        for fam in families:
            with tempfile.TemporaryDirectory(prefix="aitasks-bench-startup-") as tmp:
                t0, _t1, out = _spawn(["-m", "bench.startup_probe", fam, tmp], env)
            marks = _last_json(out)
            steps[fam]["interp"].append(marks["interp"] - t0)
            steps[fam]["component"].append(marks["component"] - t0)
            steps[fam]["to_body"].append(marks["body"] - t0)
            steps[fam]["to_ready"].append(marks["ready"] - t0)
            steps[fam]["cpu_to_body"].append(marks["cpu_body"])
            steps[fam]["cpu_to_ready"].append(marks["cpu_ready"])
            heavy[fam] = {k: marks[k] for k in ("heavy_at_body", "heavy_at_ready", "working_set", "modules_at_ready")}
        for label, args in CLI.items():
            t0, t1, _out = _spawn(args, env)
            cli[label].append(t1 - t0)
    return {"baselines": base, "cli": cli, "steps": steps, "heavy": heavy, "repeats": repeats}


def _spread(xs: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}


def bench_startup(repeats: int = REPEATS) -> list[dict[str, Any]]:
    """One record per family (to body, to body ready) and per CLI path, against ``import numpy``."""
    m = measure(repeats)
    bare = statistics.median(m["baselines"]["python -c pass"])
    numpy_label = 'python -c "import numpy"'
    numpy_s = statistics.median(m["baselines"][numpy_label])
    common = {
        "repeats": repeats,
        "python -c pass_s": _spread(m["baselines"]["python -c pass"]),
        "import_numpy_s": _spread(m["baselines"][numpy_label]),
        "target_minus_numpy_s": TARGET_MINUS_NUMPY_S,
        "clock": "time.monotonic() in parent (before spawn) and child (at each mark)",
        "timing": f"median of {repeats} interleaved cold starts; shared machine: noisy",
    }
    records = [
        record("startup", "import_numpy_s", numpy_s, "s", "python -c pass", bare, common),
    ]
    for fam, st in m["steps"].items():
        h = m["heavy"][fam]
        params = {
            **common,
            "family": fam,
            "stages_median_s": {k: round(statistics.median(v), 3) for k, v in st.items()},
            "to_body_s": _spread(st["to_body"]),
            "to_ready_s": _spread(st["to_ready"]),
            "heavy_at_body": h["heavy_at_body"],
            "heavy_at_ready": h["heavy_at_ready"],
            "working_set": h["working_set"],
            "modules_at_ready": h["modules_at_ready"],
        }
        for stage, metric in (("to_body", "step_to_body_s"), ("to_ready", "step_to_ready_s")):
            value = statistics.median(st[stage])
            records.append(
                record(
                    "startup",
                    f"{metric}[{fam}]",
                    value,
                    "s",
                    numpy_label,
                    numpy_s,
                    {**params, "minus_numpy_s": round(value - numpy_s, 3)},
                )
            )
    for label, xs in m["cli"].items():
        value = statistics.median(xs)
        records.append(
            record(
                "startup",
                f"cli_wall_s[{label}]",
                value,
                "s",
                numpy_label,
                numpy_s,
                {**common, "command": label, "wall_s": _spread(xs), "minus_numpy_s": round(value - numpy_s, 3)},
            )
        )
    return records


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=REPEATS)
    args = ap.parse_args(argv)
    for r in bench_startup(args.repeats):
        extra = r["params"].get("minus_numpy_s", "")
        print(f"{r['metric']:<45} {r['value']:7.3f} s  (numpy {r['baseline_value']:.3f} s, +{extra})")


if __name__ == "__main__":
    main()
