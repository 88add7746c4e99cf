"""`make bench`: run the benchmarks with progress, print a table, write bench/results/latest.json.

Commands::

    python -m bench                      # every benchmark of BENCHES, in order
    python -m bench --only audio,ann     # a subset (labels of BENCHES); merged into latest.json
    python -m bench --list               # the labels
    python -m bench report               # bench/results/report.{html,md} from latest.json (make bench-report)
    python -m bench reference            # bench/results/reference.json from latest.json (make bench-reference)
    python -m bench scale [--check]      # docs/{en,fr,de}/scale.md from reference.json (make scale / make check)

To add a benchmark, add one line to ``BENCHES``: a label, the module and function (no arguments, returns
records made with :func:`bench.common.record`), a title for the progress line and, if it needs one, the
service it talks to (``redis``, ``rabbitmq``, ``postgres``): an unreachable service skips that bench with
a line saying why instead of failing the run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.common import RESULTS, run_meta, service_problem


@dataclass(frozen=True)
class Bench:
    """One benchmark of ``make bench``."""

    label: str  #: what ``--only`` selects
    module: str  #: ``bench.audio``
    function: str  #: a function of ``module`` taking no arguments, returning a list of records
    title: str  #: shown beside the progress counter
    needs: str | None = None  #: a service it cannot run without (``redis``, ``rabbitmq``, ``postgres``)

    def load(self) -> Callable[[], list[dict[str, Any]]]:
        fn: Callable[[], list[dict[str, Any]]] = getattr(importlib.import_module(self.module), self.function)
        return fn


BENCHES: list[Bench] = [
    Bench("task_overhead", "bench.task_overhead", "bench_task_overhead", "task overhead vs a bare call"),
    Bench("startup", "bench.startup", "bench_startup", "step start-up per family vs python -c 'import numpy'"),
    Bench("feast", "bench.feast_online", "bench_feast", "Feast online reads (sqlite, Redis)"),
    Bench("redis", "bench.redis_server", "bench_redis_server", "Redis server: HGETALL of a user row vs PING"),
    Bench("ondemand", "bench.ondemand", "bench_ondemand", "on-demand tasks on Celery vs a direct call", "rabbitmq"),
    Bench("training", "bench.training", "bench_training", "two-tower training: sparse vs dense Adam"),
    Bench("training_ddp", "bench.training", "bench_training_ddp", "two-tower DDP: 2 processes vs 1"),
    Bench("reco_quality", "bench.reco_quality", "bench_reco_quality", "recommender recall@10 over 5 seeds"),
    Bench("ann", "bench.ann", "bench_ann", "ANN index: hnswlib vs numpy vs Voyager, 100k x 64"),
    Bench("ann_memory", "bench.ann_memory", "bench_ann_memory", "ANN index memory per item vs raw vectors"),
    Bench("audio", "bench.audio", "bench_audio", "audio analysis vs naive librosa, x realtime per core"),
    Bench("content", "bench.content", "bench_content", "content generation: batched vs one at a time"),
    Bench("serving", "bench.serving", "bench_serving", "updater events/s, API latency", "redis"),
    Bench("classifier", "bench.classifier", "bench_classifier", "audio classifier: Keras vs torch"),
    Bench("tuning", "bench.tuning", "bench_tuning", "Optuna study wall time per trial vs plain training"),
]


def select(only: str | None) -> list[Bench]:
    """The benches named in ``only`` (comma-separated labels), in ``BENCHES`` order; all when empty."""
    if not only:
        return list(BENCHES)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    known = {b.label for b in BENCHES}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return [b for b in BENCHES if b.label in wanted]


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def run(benches: list[Bench], console: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run ``benches`` in order with a progress line each; (records, one outcome per bench)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    records: list[dict[str, Any]] = []
    outcomes: list[dict[str, Any]] = []
    started = time.perf_counter()
    n = len(benches)
    for i, b in enumerate(benches, 1):
        head = f"[{i}/{n}] {b.label}: {b.title}"
        # A plain line first: logs of a non-interactive run (CI) show which bench is running too.
        console.print(f"{head} ... (total {_fmt_s(time.perf_counter() - started)})", highlight=False)
        problem = service_problem(b.needs) if b.needs else None
        t0 = time.perf_counter()
        outcome: dict[str, Any] = {"label": b.label, "module": b.module, "function": b.function}
        if problem:
            console.print(f"[yellow]    skipped: {problem}[/yellow]", highlight=False)
            outcomes.append({**outcome, "status": "skipped", "reason": problem})
            continue
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
        ) as progress:
            progress.add_task(head, total=None)
            try:
                got = b.load()()
            except Exception as exc:  # one broken bench must not cost the figures of the others
                status = "skipped" if type(exc).__name__ == "ServiceUnavailableError" else "failed"
                reason = f"{type(exc).__name__}: {exc}"
                got = None
        elapsed = time.perf_counter() - t0
        if got is None:
            colour = "yellow" if status == "skipped" else "red"
            console.print(f"[{colour}]    {status} after {_fmt_s(elapsed)}: {reason}[/{colour}]", highlight=False)
            outcomes.append({**outcome, "status": status, "reason": reason, "elapsed_s": round(elapsed, 1)})
            continue
        records += got
        outcomes.append({**outcome, "status": "ok", "records": len(got), "elapsed_s": round(elapsed, 1)})
        console.print(f"    done in {_fmt_s(elapsed)}: {len(got)} figures", highlight=False)
    return records, outcomes


def print_table(records: list[dict[str, Any]], console: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="aitasks benchmarks (ratio = value / baseline, same run)")
    for col in ("benchmark", "metric", "value", "unit", "baseline", "baseline value", "ratio"):
        table.add_column(col)
    for r in records:
        table.add_row(  # Text: a metric's ``[disk]`` is not rich markup
            Text(r["benchmark"]),
            Text(r["metric"]),
            f"{r['value']:.4g}",
            Text(r["unit"]),
            Text(r["baseline"]),
            f"{r['baseline_value']:.4g}",
            f"{r['ratio']:.3g}",
        )
    console.print(table)


def merge(previous: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``previous`` without the benchmarks ``new`` measured again, then ``new`` (a subset run keeps the rest)."""
    again = {r["benchmark"] for r in new}
    return [r for r in previous if r["benchmark"] not in again] + new


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(width=170, emoji=False)
    benches = select(args.only)
    started = time.perf_counter()
    records, outcomes = run(benches, console)
    print_table(records, console)
    RESULTS.mkdir(parents=True, exist_ok=True)
    latest = RESULTS / "latest.json"
    meta_path = RESULTS / "latest.meta.json"
    out, runs = records, outcomes
    if args.only and latest.exists():
        out = merge(json.loads(latest.read_text("utf-8")), records)
        if meta_path.exists():
            ran = {o["label"] for o in outcomes}
            runs = [o for o in json.loads(meta_path.read_text("utf-8")).get("benches", []) if o["label"] not in ran]
            runs += outcomes
    latest.write_text(json.dumps(out, indent=2), "utf-8")
    meta = run_meta()
    meta.update({"benches": runs, "elapsed_s": round(time.perf_counter() - started, 1), "only": args.only or ""})
    meta_path.write_text(json.dumps(meta, indent=2), "utf-8")
    kept = len(out) - len(records)
    console.print(f"wrote {latest} ({len(records)} figures{f', {kept} kept from earlier runs' if kept else ''})")
    bad = [o for o in outcomes if o["status"] == "failed"]
    for o in outcomes:
        if o["status"] != "ok":
            console.print(f"[yellow]{o['label']}: {o['status']}: {o['reason']}[/yellow]", highlight=False)
    return 1 if bad else 0


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import write_report

    for path in write_report(RESULTS / "latest.json", RESULTS):
        print(f"wrote {path}")
    return 0


def cmd_reference(args: argparse.Namespace) -> int:
    from bench.common import make_reference

    path = make_reference(RESULTS / "latest.json", RESULTS / "reference.json", note=args.note)
    print(f"wrote {path}")
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    from bench.capacity import check_all, render_all

    if args.check:
        stale = check_all()
        for line in stale:
            print(line, file=sys.stderr)
        if stale:
            print("docs/*/scale.md are stale: run `make scale`", file=sys.stderr)
            return 1
        print("docs/*/scale.md are up to date")
        return 0
    for path, missing in render_all():
        print(f"wrote {path}" + (f" ({len(missing)} figures not measured)" if missing else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description="aitasks benchmarks")
    ap.add_argument("--only", help="comma-separated labels (see --list); results merged into latest.json")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    sub = ap.add_subparsers(dest="command")
    sub.add_parser("report", help="render bench/results/report.{html,md} (and PNG plots) from latest.json")
    ref = sub.add_parser("reference", help="latest.json (+ run facts) -> the committed bench/results/reference.json")
    ref.add_argument("--note", default="", help="a word on the run (machine load, what was left out)")
    scale = sub.add_parser("scale", help="render docs/{en,fr,de}/scale.md from reference.json and bench/volumes.yaml")
    scale.add_argument("--check", action="store_true", help="fail when the committed pages are stale")
    args = ap.parse_args(argv)
    if args.list:
        for b in BENCHES:
            print(f"{b.label:<14} {b.module}.{b.function}  {b.title}" + (f"  [needs {b.needs}]" if b.needs else ""))
        return 0
    handler = {"report": cmd_report, "reference": cmd_reference, "scale": cmd_scale}.get(args.command, cmd_run)
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
