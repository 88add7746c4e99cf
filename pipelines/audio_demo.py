"""`make demo-audio`: the `audio-analysis` pipeline end to end on kfp.local and a generated catalog.

The catalog is the documented synthetic one (``aitasks.audio_analysis.demo_catalog``): procedural
tracks of four classes in four formats with planted problems and known labels, so the summary can
say not only what the platform found but whether it was right (quarantine reasons vs the planted
ones, the planted duplicate found, classification vs the true class).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

PIPELINE = "audio-analysis"
EXPECTED_TASKS = (
    "audio.source",
    "audio.list_catalog",
    "audio.analyze",
    "audio.collect",
    "audio.anomalies",
    "audio.train_classifier",
    "audio.register_classifier",
    "audio.classify",
    "audio.feast_write",
    "audio.report",
)


def run_audio_demo(
    workdir: Path,
    *,
    run_context: dict[str, Any] | None = None,
    console: Console | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Run `audio-analysis` with kfp.local under ``workdir``; print and return the summary.

    ``run_context`` holds further run context keys, ``overrides`` further pipeline parameters (a dict
    given in part, ``synthetic={"tracks": 12}`` or ``classifier={"epochs": 15}``, is merged over its default).
    """
    import pyarrow.parquet as pq

    from pipelines.demo import run_and_collect

    con = console or Console()
    store = workdir / "store"
    params = {
        "run_context": {"storage_root": str(store), "submitter": "make-demo", **(run_context or {})},
        "as_of": "2026-11-25T00:00:00+00:00",
        **overrides,
    }
    outcome = run_and_collect(PIPELINE, params, workdir, con)
    results, run, verify, new_records = outcome.results, outcome.run, outcome.verify, outcome.records
    source = results.get("audio.source", {})
    anomalies = results.get("audio.anomalies", {})
    trained = results.get("audio.train_classifier", {})
    registered = results.get("audio.register_classifier", {})
    classify = results.get("audio.classify", {})
    feast = results.get("audio.feast_write", {})
    report = results.get("audio.report", {})
    collect = results.get("audio.collect", {})

    truth: dict[str, Any] = {}
    agreement = None
    quarantine: dict[str, str] = {}
    duplicates: list[list[str]] = []
    if source.get("catalog_root"):
        truth_file = Path(source["catalog_root"]) / "truth.json"
        if truth_file.exists():
            truth = json.loads(truth_file.read_text("utf-8"))
    if classify.get("predictions_uri") and truth:
        preds = pq.read_table(classify["predictions_uri"]).to_pylist()
        judged = [p for p in preds if p["track_id"] in truth["labels"]]
        if judged:
            agreement = sum(p["label"] == truth["labels"][p["track_id"]] for p in judged) / len(judged)
    audio_s = 0.0
    if collect.get("analysis_uri"):
        folder = Path(collect["analysis_uri"]).parent
        audio_s = float(
            sum(pq.read_table(folder / "features.parquet", columns=["duration_s"])["duration_s"].to_pylist())
        )
        quarantine = {
            Path(r["uri"]).stem: r["reason"] for r in pq.read_table(folder / "quarantine.parquet").to_pylist()
        }
    if anomalies.get("anomalies_uri"):
        folder = Path(anomalies["anomalies_uri"]).parent
        duplicates = [[r["a"], r["b"]] for r in pq.read_table(folder / "duplicates.parquet").to_pylist()]
    summary = {
        "pipeline": PIPELINE,
        "elapsed_s": round(outcome.elapsed, 1),
        "storage_root": str(store),
        "tasks": {t: r["status"] for t, r in results.items()},
        "failed": run["failed"],
        "catalog": {
            "root": source.get("catalog_root"),
            "tracks_analysed": collect.get("tracks"),
            "audio_minutes": round(audio_s / 60, 1),
            "quarantined": dict(sorted(Counter(quarantine.values()).items())),
            "planted": truth.get("planted", {}),
        },
        "anomalies": {
            "flags_by_code": anomalies.get("flags_by_code"),
            "outliers": anomalies.get("outliers"),
            "duplicate_pairs": duplicates,
        },
        "classifier": {
            "test_accuracy": trained.get("accuracy"),
            "macro_f1": trained.get("macro_f1"),
            "chance": trained.get("chance"),
            "per_class_f1": trained.get("per_class_f1"),
            "registered": f"{registered.get('model_name')} v{registered.get('version')}",
            "champion": registered.get("promoted"),
            "catalog_agreement_with_truth": None if agreement is None else round(agreement, 3),
            "class_counts": classify.get("class_counts"),
        },
        "feast": {k: feast.get(k) for k in ("project", "rows_written", "rows_total", "online_store")},
        "report_html": report.get("report_uri"),
        "audit": {"verified": verify.ok, "records": verify.records, "this_run": len(new_records)},
    }
    (workdir / "audio-summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    _print(con, summary, workdir)
    missing = [t for t in EXPECTED_TASKS if t not in results]
    if not verify.ok or missing or run["failed"]:
        raise SystemExit(f"audio demo incomplete: missing={missing} failed={run['failed']} audit_ok={verify.ok}")
    return summary


def _print(con: Console, s: dict[str, Any], workdir: Path) -> None:
    cat, an, clf = s["catalog"], s["anomalies"], s["classifier"]
    table = Table(title=f"aitasks audio demo summary ({s['elapsed_s']:.0f} s)", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("tasks", ", ".join(f"{t}: {st}" for t, st in s["tasks"].items()))
    table.add_row("catalog", f"{cat['tracks_analysed']} tracks analysed ({cat['audio_minutes']} min of audio)")
    table.add_row("quarantine", ", ".join(f"{k}: {v}" for k, v in cat["quarantined"].items()) or "none")
    table.add_row("flags", ", ".join(f"{k}: {v}" for k, v in (an["flags_by_code"] or {}).items()))
    table.add_row("duplicates", ", ".join(" ~ ".join(p) for p in an["duplicate_pairs"]) or "none")
    table.add_row(
        "classifier",
        f"test accuracy {clf['test_accuracy']:.3f} (chance {clf['chance']:.2f}), macro F1 {clf['macro_f1']:.3f}; "
        f"{clf['registered']}{' champion' if clf['champion'] else ''}; catalog agreement with the true class "
        f"{clf['catalog_agreement_with_truth']}",
    )
    f = s["feast"]
    table.add_row("Feast", f"track_audio: {f['rows_written']} rows ({f['rows_total']} total) in {f['project']!r}")
    table.add_row("report", str(s["report_html"]))
    a = s["audit"]
    table.add_row(
        "audit", f"{'verified' if a['verified'] else 'BROKEN'}: {a['records']} records ({a['this_run']} from this run)"
    )
    table.add_row("summary", str(workdir / "audio-summary.json"))
    con.print(table)
