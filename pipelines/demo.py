"""`make demo`: the main job end to end on embedded defaults, then a human summary and summary.json.

The main job is the `reco-training` pipeline on kfp.local: synthetic events -> ingest/validate/
quarantine -> point-in-time features -> Feast (sqlite online store) -> training set from Feast ->
two-tower model -> evaluation against popularity and the champion -> MLflow registry (sqlite) ->
champion alias -> HNSW index checked against exact search -> versioned publish. The summary is
built from the audit trail of this run and the committed task results it points to (what the
platform recorded, not what the demo hoped), plus one real recommendation read back the way
`aitasks recommend` serves it. The evaluation lines show both protocols (all next plays, discovery)
for the model, popularity and the listener's own history, the serving mode the evaluation chose,
and the gate's paired intervals.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

START_DATE = date(2026, 10, 1)
DAYS = 30
PIPELINE = "reco-training"
EXPECTED_TASKS = (
    "data.source",
    "data.ingest",
    "data.features",
    "feast.materialize",
    "data.drift",
    "reco.training_set",
    "model.train",
    "model.evaluate",
    "model.register",
)


@dataclass(frozen=True)
class Outcome:
    """A local pipeline run as the platform recorded it: per-task results from the audit trail."""

    results: dict[str, dict[str, Any]]
    run: dict[str, Any]
    verify: Any
    records: list[dict[str, Any]]
    elapsed: float


def run_and_collect(pipeline: str, params: dict[str, Any], workdir: Path, con: Console) -> Outcome:
    """Run ``pipeline`` with kfp.local, then read this run's audit records and committed results back."""
    from aitasks.runtime.audit import AuditLog
    from aitasks.runtime.run_summary import summarize_run
    from pipelines.cli import run_local

    store = Path(params["run_context"]["storage_root"])
    audit = AuditLog(store / "audit")
    start_seq = len(audit.records())
    con.rule(f"[bold]aitasks demo: {pipeline} on kfp.local[/bold]")
    t0 = time.perf_counter()
    run_local(pipeline, params, workdir)
    elapsed = time.perf_counter() - t0
    new_records = audit.records()[start_seq:]
    run = summarize_run(new_records, run_id=None, storage_root=str(store))
    results = {t: {"status": e["status"], **e.get("result", {})} for t, e in run["tasks"].items()}
    return Outcome(results=results, run=run, verify=audit.verify(), records=new_records, elapsed=elapsed)


def run_demo(
    workdir: Path,
    *,
    events: int = 200_000,
    dirty_rows: int = 600,
    synthetic: dict[str, Any] | None = None,
    run_context: dict[str, Any] | None = None,
    console: Console | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Run `reco-training` with kfp.local under ``workdir``; print and return the summary.

    ``dirty_rows`` contract-breaking rows are mixed into the synthetic events so the quarantine has
    something to catch; ``synthetic`` holds further generator settings (users, tracks, ...),
    ``run_context`` further run context keys, ``overrides`` further pipeline parameters
    (``training={"epochs": 2}``, ...; a group dict given in part keeps its other defaults).
    """
    con = console or Console()
    store = workdir / "store"
    as_of = (START_DATE + timedelta(days=DAYS)).isoformat() + "T00:00:00+00:00"
    params = {
        "run_context": {"storage_root": str(store), "submitter": "make-demo", **(run_context or {})},
        "synthetic": {
            "events": events,
            "days": DAYS,
            "start_date": START_DATE.isoformat(),
            "dirty_rows": dirty_rows,
            **(synthetic or {}),
        },
        "as_of": as_of,
        **overrides,
    }
    outcome = run_and_collect(PIPELINE, params, workdir, con)
    results, run, verify, new_records, elapsed = (
        outcome.results,
        outcome.run,
        outcome.verify,
        outcome.records,
        outcome.elapsed,
    )

    ingest = results.get("data.ingest", {})
    evaluation = results.get("model.evaluate", {})
    registered = results.get("model.register", {})
    promoted = results.get("model.promote", {})
    built = results.get("index.build", {})
    published = results.get("index.publish", {})
    model = evaluation.get("model") or {}
    pop = evaluation.get("popularity") or {}
    lift = (model.get("recall_at_10", 0.0) / pop["recall_at_10"]) if pop.get("recall_at_10") else None
    mlflow_db = store / "mlflow" / "mlflow.db"
    sample = _sample_recommendation(store, results)
    summary = {
        "pipeline": PIPELINE,
        "elapsed_s": round(elapsed, 1),
        "storage_root": str(store),
        "tasks": {t: r["status"] for t, r in results.items()},
        "failed": run["failed"],
        "ingest": {k: ingest.get(k) for k in ("input_rows", "good_rows", "quarantined_rows", "reasons")},
        "evaluation": {
            "model": {k: model.get(k) for k in _METRICS},
            "popularity": {k: pop.get(k) for k in _METRICS},
            "own_history": {k: (evaluation.get("own_history") or {}).get(k) for k in _METRICS},
            "protocols": _protocols(evaluation),
            "serving_mode": evaluation.get("serving_mode"),
            "filter_played": evaluation.get("filter_played"),
            "gate": {
                name: _interval(evaluation.get(name)) for name in ("vs_popularity", "vs_champion", "vs_own_history")
            },
            "lift_recall_at_10": None if lift is None else round(lift, 3),
            "champion_version_compared": evaluation.get("champion_version"),
            "blessed": evaluation.get("blessed"),
            "reasons": evaluation.get("reasons"),
            "report_html": evaluation.get("report_html_uri"),
            "report_markdown": evaluation.get("report_markdown_uri"),
        },
        "model": {
            "name": registered.get("model_name"),
            "version": registered.get("version"),
            # A committed result replayed by an idempotent hit did nothing in this run.
            "new_version": bool(registered.get("created")) and registered.get("status") == "succeeded",
            "champion": promoted.get("version") if promoted else None,
            "alias_moved": bool(promoted.get("moved")) and promoted.get("status") == "succeeded",
            "mlflow_tracking_uri": f"sqlite:///{mlflow_db}",
            "mlflow_ui": f"mlflow ui --backend-store-uri sqlite:///{mlflow_db} --port 5000",
        },
        "index": {
            "name": published.get("name"),
            "version": published.get("version"),
            "new_version": bool(published.get("created")) and published.get("status") == "succeeded",
            "recall_at_10_vs_exact": built.get("recall_at_k"),
            "ef_search": built.get("ef_search"),
            "items": built.get("count"),
        },
        "recommendation_sample": sample,
        "audit": {
            "verified": verify.ok,
            "records": verify.records,
            "this_run": len(new_records),
            "problems": verify.problems,
        },
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    _print(con, summary, elapsed, workdir)
    missing = [t for t in EXPECTED_TASKS if t not in results]
    if not verify.ok or missing or run["failed"]:
        raise SystemExit(f"demo incomplete: missing={missing} failed={run['failed']} audit_ok={verify.ok}")
    return summary


_METRICS = ("recall_at_10", "recall_at_50", "ndcg_at_10", "coverage_at_10")
_RANKERS = ("model", "popularity", "own_history", "champion")


def _protocols(evaluation: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """recall@10 of every ranker under each evaluation protocol (all next plays, discovery)."""
    out: dict[str, dict[str, float | None]] = {}
    for protocol, rankers in (evaluation.get("protocols") or {}).items():
        out[protocol] = {r: (rankers.get(r) or {}).get("recall_at_10") for r in _RANKERS}
    return out


def _interval(test: dict[str, Any] | None) -> dict[str, Any] | None:
    """A paired comparison of the gate, reduced to its ratio and interval."""
    if not test:
        return None
    keys = ("ratio", "ratio_low", "ratio_high", "users", "confidence")
    return {k: test.get(k) for k in keys}


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def _fmt_interval(t: dict[str, Any] | None) -> str:
    if not t:
        return "n/a"
    return f"{t['ratio']:.3f}x [{t['ratio_low']:.3f}, {t['ratio_high']:.3f}]"


def _print(con: Console, s: dict[str, Any], elapsed: float, workdir: Path) -> None:
    ev, m, ix = s["evaluation"], s["model"], s["index"]
    table = Table(title=f"aitasks demo summary ({elapsed:.0f} s)", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    statuses = Counter(s["tasks"].values())
    counts = ", ".join(f"{n} {st}" for st, n in sorted(statuses.items()))
    table.add_row("tasks", f"{len(s['tasks'])}: {counts} (one line each above)")
    ing = s["ingest"]
    reasons = ", ".join(f"{k}: {v:,}" for k, v in sorted((ing.get("reasons") or {}).items()))
    table.add_row(
        "ingest",
        f"{ing.get('input_rows') or 0:,} rows in = {ing.get('good_rows') or 0:,} good + "
        f"{ing.get('quarantined_rows') or 0:,} quarantined" + (f" ({reasons})" if reasons else ""),
    )
    labels = {"all": "recall@10, all next plays", "discovery": "recall@10, discovery (unplayed)"}
    for protocol, r in ev.get("protocols", {}).items():
        served = " [serving mode]" if protocol == ev.get("serving_mode") else ""
        champion = "" if r.get("champion") is None else f", champion {_fmt(r['champion'])}"
        table.add_row(
            labels.get(protocol, protocol),
            f"model {_fmt(r['model'])} vs popularity {_fmt(r['popularity'])}, own history "
            f"{_fmt(r['own_history'])}{champion}{served}",
        )
    table.add_row(
        "serving mode",
        f"{ev.get('serving_mode')}: recommend defaults to filter_played={str(ev.get('filter_played')).lower()}; "
        f"model NDCG@10 {_fmt(ev['model']['ndcg_at_10'])}, coverage@10 {_fmt(ev['model']['coverage_at_10'])}",
    )
    gate = ev.get("gate", {})
    table.add_row(
        "gate (paired)",
        f"model / popularity {_fmt_interval(gate.get('vs_popularity'))}; model / champion "
        f"{_fmt_interval(gate.get('vs_champion'))}; model / own history {_fmt_interval(gate.get('vs_own_history'))}",
    )
    table.add_row("blessing", f"{ev['blessed']}: " + " ".join(ev.get("reasons") or []))
    table.add_row(
        "model",
        f"{m['name']} v{m['version']} ({'new version' if m['new_version'] else 'existing version'}); "
        f"champion -> v{m['champion']}" + ("" if m["alias_moved"] else " (alias unchanged)"),
    )
    table.add_row(
        "index",
        f"{ix['name']} v{ix['version']} ({'new' if ix['new_version'] else 'unchanged'}); recall@10 vs exact "
        f"{_fmt(ix['recall_at_10_vs_exact'])} at ef={ix['ef_search']} over {ix['items']} tracks",
    )
    rec = s["recommendation_sample"]
    if rec:
        table.add_row("recommend", f"{rec['source']} ({rec['reason']}): {', '.join(rec['tracks'][:5])} ...")
    table.add_row("reports", f"{ev['report_html']}\n{ev['report_markdown']}")
    table.add_row("MLflow UI", m["mlflow_ui"])
    a = s["audit"]
    table.add_row(
        "audit", f"{'verified' if a['verified'] else 'BROKEN'}: {a['records']} records ({a['this_run']} from this run)"
    )
    table.add_row("summary", str(workdir / "summary.json"))
    con.print(table)


def _sample_recommendation(store: Path, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Serve one recommendation the way `aitasks recommend` does (online features, current index)."""
    import polars as pl

    from aitasks.recommendation_update.recommend import recommend
    from aitasks.runtime.bundle import open_bundle
    from aitasks.runtime.settings import load_settings

    ts = results.get("reco.training_set")
    if not ts or "index.publish" not in results:
        return {}
    with open_bundle(ts["training_set_uri"], kind="training_set") as (ts_dir, _):
        user = str(pl.read_parquet(ts_dir / "users.parquet", columns=["user_id"])["user_id"].sort()[0])
    rec = recommend(load_settings(storage_root=str(store)), user, k=10)
    # The user id itself stays out of the summary (no raw user identifiers in outputs people read).
    return {
        "source": rec.source,
        "reason": rec.reason,
        "tracks": [r.track_id for r in rec.items],
        "index_version": rec.index_version,
        "model_version": rec.model_version,
        "filter_played": rec.filter_played,
        "filter_played_source": rec.filter_played_source,
        "filtered_played": rec.filtered_played,
    }
