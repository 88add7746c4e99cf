"""`make demo`: the main job end to end on embedded defaults, then a human summary and summary.json.

Until the recommendation pipeline exists, the main job is the data pipeline: synthetic events ->
ingest/validate/quarantine -> point-in-time features -> Feast (sqlite online store) -> drift check.
The summary is built from the audit trail of this run (records appended since it started) and the
committed task results they point to, so it reports what the platform recorded, not what the demo hoped.
"""

from __future__ import annotations

import json
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

START_DATE = date(2026, 10, 1)
DAYS = 30


def _committed_results(store: str, records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    from aitasks.runtime.idempotency import IdempotencyStore
    from aitasks.runtime.storage import storage_for

    ids = IdempotencyStore(storage_for(store), store)
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        if rec.get("status") in ("succeeded", "idempotent_hit") and rec.get("idempotency_key"):
            committed = ids.get(rec["task"], rec["idempotency_key"])
            if committed:
                out[rec["task"]] = {"status": rec["status"], **committed["result"]}
    return out


def run_demo(workdir: Path, *, events: int = 200_000, console: Console | None = None) -> dict[str, Any]:
    from aitasks.runtime.audit import AuditLog
    from pipelines.cli import run_local

    con = console or Console()
    store = workdir / "store"
    audit = AuditLog(store / "audit")
    start_seq = len(audit.records())
    as_of = (START_DATE + timedelta(days=DAYS)).isoformat() + "T00:00:00+00:00"
    params = {
        "storage_root": str(store),
        "events": events,
        "days": DAYS,
        "start_date": START_DATE.isoformat(),
        "as_of": as_of,
        "submitter": "make-demo",
    }
    con.rule("[bold]aitasks demo: data-pipeline on kfp.local[/bold]")
    t0 = time.perf_counter()
    run_local("data-pipeline", params, workdir)
    elapsed = time.perf_counter() - t0

    new_records = audit.records()[start_seq:]
    results = _committed_results(str(store), new_records)
    verify = audit.verify()
    online = _online_sample(results, store)

    ingest = results.get("data.ingest", {})
    feats = results.get("data.features", {})
    drift = results.get("data.drift", {})
    mat = results.get("feast.materialize", {})
    summary = {
        "pipeline": "data-pipeline",
        "elapsed_s": round(elapsed, 1),
        "storage_root": str(store),
        "tasks": {t: r["status"] for t, r in results.items()},
        "ingest": {k: ingest.get(k) for k in ("input_rows", "good_rows", "quarantined_rows", "reasons")},
        "features": {k: feats.get(k) for k in ("user_rows", "track_rows")}
        | {"snapshots": len(feats.get("snapshots", []))},
        "feast": {
            "repo": mat.get("repo_uri"),
            "feature_services": mat.get("feature_services"),
            "online_sample": online,
        },
        "drift": {k: drift.get(k) for k in ("any_drift", "drifted_features", "max_psi", "report_markdown_uri")},
        "audit": {
            "verified": verify.ok,
            "records": verify.records,
            "this_run": len(new_records),
            "problems": verify.problems,
        },
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))

    table = Table(title=f"aitasks demo summary ({elapsed:.0f} s)", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("tasks", ", ".join(f"{t}: {s}" for t, s in summary["tasks"].items()))
    table.add_row(
        "ingest",
        f"{ingest.get('input_rows', 0):,} rows in = {ingest.get('good_rows', 0):,} good + "
        f"{ingest.get('quarantined_rows', 0):,} quarantined",
    )
    table.add_row(
        "features",
        f"{feats.get('user_rows', 0):,} user rows, {feats.get('track_rows', 0):,} track rows, "
        f"{summary['features']['snapshots']} daily snapshots",
    )
    table.add_row("feast", f"repo {mat.get('repo_uri')}; services {', '.join(mat.get('feature_services', []))}")
    table.add_row("online read", json.dumps(online)[:200])
    table.add_row(
        "drift",
        f"any drift: {drift.get('any_drift')}; max PSI {drift.get('max_psi', 0):.3f}; "
        f"report {drift.get('report_markdown_uri')}",
    )
    table.add_row(
        "audit", f"{'verified' if verify.ok else 'BROKEN'}: {verify.records} records ({len(new_records)} from this run)"
    )
    table.add_row("summary", str(workdir / "summary.json"))
    con.print(table)
    if not verify.ok or len(results) < 5:
        raise SystemExit("demo incomplete: " + json.dumps(summary["audit"]) + f" tasks={list(results)}")
    return summary


def _online_sample(results: dict[str, dict[str, Any]], store: Path) -> dict[str, Any]:
    """Read one user's serving features back from the Feast online store (what serving would see)."""
    import polars as pl

    from aitasks.data_processing import feature_store as fs
    from aitasks.runtime.settings import load_settings

    feats = results.get("data.features")
    if not feats:
        return {}
    users = pl.read_parquet(feats["user_features_uri"], columns=["user_id"])["user_id"]
    user = str(users.sort()[0])
    cfg = fs.config_for(
        settings=load_settings(storage_root=str(store)),
        project="aitasks",
        user_features=Path(feats["user_features_uri"]),
        track_features=Path(feats["track_features_uri"]),
        online_store="sqlite",
    )
    values = fs.online_features(cfg, user_ids=[user])
    # The entity id itself stays out of the summary (no raw user identifiers in outputs people read).
    sample = {k: v for k, v in values.items() if k != "user_id"}
    return {"entity": "user", "features": len(sample), "sample": dict(list(sample.items())[:4])}
