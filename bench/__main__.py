"""`make bench`: run the benchmarks, print a table, write bench/results/latest.json."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    console = Console(width=170)
    records: list[dict] = []
    from bench.task_overhead import bench_task_overhead

    with console.status("task overhead…"):
        records += bench_task_overhead()
    try:
        from bench.feast_online import bench_online_reads
    except ImportError:  # pragma: no cover - the Feast bench ships with the feature store
        bench_online_reads = None
    if bench_online_reads is not None:
        redis_url = os.environ.get("AITASKS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
        with console.status("Feast online reads (sqlite, Redis)…"), tempfile.TemporaryDirectory() as tmp:
            records += bench_online_reads(Path(tmp), redis_url=redis_url)

    from bench.ondemand import ServiceUnavailableError, bench_ondemand

    try:
        with console.status("on-demand tasks: submit -> result on a Celery worker vs a direct call…"):
            records += bench_ondemand()
    except ServiceUnavailableError as exc:  # a laptop without RabbitMQ still gets the other figures
        console.print(f"[yellow]on-demand bench skipped: {exc}[/yellow]")

    from bench.training import bench_training, bench_training_ddp

    with console.status("two-tower training: sparse vs dense Adam…"):
        records += bench_training()
    with console.status("two-tower training: DDP 2 processes vs 1 (torchrun, gloo)…"):
        records += bench_training_ddp()
    from bench.reco_quality import bench_reco_quality

    with console.status("recommender quality: recall@10 over 5 training seeds, both protocols…"):
        records += bench_reco_quality()
    try:
        from bench.ann import bench_ann
    except ImportError:  # pragma: no cover - the ANN bench ships with the index module
        bench_ann = None
    if bench_ann is not None:
        with console.status("ANN index: hnswlib vs exact numpy vs Voyager on 100k x 64…"):
            records += bench_ann()

    from bench.audio import bench_audio

    with console.status("audio analysis: one-STFT pipeline vs naive librosa, x realtime per core…"):
        records += bench_audio()

    from bench.content import bench_content

    with console.status("content generation: batched vs one prompt at a time, per generator (tiny models)…"):
        records += bench_content()

    table = Table(title="aitasks benchmarks (ratio = value / baseline, same run)")
    for col in ("benchmark", "metric", "value", "unit", "baseline", "baseline value", "ratio"):
        table.add_column(col)
    for r in records:
        table.add_row(
            r["benchmark"],
            r["metric"],
            f"{r['value']:.4g}",
            r["unit"],
            r["baseline"],
            f"{r['baseline_value']:.4g}",
            f"{r['ratio']:.3g}",
        )
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(records, indent=2))
    console.print(f"wrote {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    sys.exit(main())
