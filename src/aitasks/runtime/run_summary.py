"""What one pipeline run did, from the audit trail: the run's exit handler and the demo both use it.

The KFP backend keeps no "who ran what" and a run's steps run in separate pods, so the audit log is
the record: every task call appended a hash-chained record carrying the run id. The summary lists
each task's last status in the run and the committed result it points to, and verifies the chain.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from aitasks.runtime.task import TaskContext, TaskModel, ai_task

#: Statuses that end a task call, in the order a later one overrides an earlier one within a run.
_FINAL = ("succeeded", "idempotent_hit", "failed", "rejected")


def summarize_run(records: list[dict[str, Any]], *, run_id: str | None, storage_root: str) -> dict[str, Any]:
    """Per task: last final status of the run and its committed result (when it succeeded).

    Args:
        records: Audit records (in append order).
        run_id: Only records of this run; ``None``: every record given.
        storage_root: Where the idempotency store lives.
    """
    from aitasks.runtime.idempotency import IdempotencyStore
    from aitasks.runtime.storage import storage_for

    ids = IdempotencyStore(storage_for(storage_root), storage_root)
    tasks: dict[str, dict[str, Any]] = {}
    submitters: set[str] = set()
    revisions: set[str] = set()
    for rec in records:
        if run_id is not None and rec.get("run_id") != run_id:
            continue
        if rec.get("submitter"):
            submitters.add(str(rec["submitter"]))
        if rec.get("git_revision"):
            revisions.add(str(rec["git_revision"]))
        if rec.get("status") not in _FINAL:
            continue
        entry: dict[str, Any] = {"status": rec["status"], "step": rec.get("step", ""), "trace_id": rec.get("trace_id")}
        if rec["status"] in ("succeeded", "idempotent_hit") and rec.get("idempotency_key"):
            committed = ids.get(rec["task"], rec["idempotency_key"])
            if committed:
                entry["result"] = committed["result"]
        elif "error" in rec:
            entry["error"] = rec["error"]
        tasks[rec["task"]] = entry
    failed = sorted(t for t, e in tasks.items() if e["status"] in ("failed", "rejected"))
    return {
        "run_id": run_id,
        "tasks": tasks,
        "failed": failed,
        "submitters": sorted(submitters),
        "git_revisions": sorted(revisions),
    }


class RunSummaryParams(TaskModel):
    run_id: str = Field(min_length=1, max_length=256, description="The KFP run whose records to summarise.")
    pipeline: str = Field(default="", max_length=256, description="Pipeline name (for the summary).")
    final_status: Annotated[str, BeforeValidator(lambda v: "" if v is None else str(v))] = Field(
        default="", max_length=64, description="The run's status from KFP, when known."
    )
    started_at: str = Field(
        default_factory=lambda: repr(time.time()),
        max_length=64,
        description="Unique per attempt (default: now): a summary is never reused.",
    )


class RunSummaryResult(TaskModel):
    summary_uri: str
    tasks: dict[str, str]
    failed: list[str]
    audit_verified: bool
    audit_records: int


@ai_task(name="run.summary", version="1.0.0")
def run_summary_task(params: RunSummaryParams, ctx: TaskContext) -> RunSummaryResult:
    """Summarise a pipeline run from the audit trail and verify the audit chain (exit handler).

    EN: Runs when the pipeline ends, whatever its outcome: collects every task's final status in the run
    (succeeded, idempotent hit, failed, rejected) with its committed result, who submitted the run and
    from which git revision, verifies the hash chain of the audit log and writes
    `<root>/runs/<run_id>/summary.json`.
    FR: S'exécute à la fin du pipeline, quelle qu'en soit l'issue : rassemble l'état final de chaque
    tâche de l'exécution (réussie, résultat idempotent, échouée, rejetée) avec son résultat enregistré,
    qui a soumis l'exécution et depuis quelle révision git, vérifie la chaîne de hachage du journal
    d'audit et écrit `<root>/runs/<run_id>/summary.json`.
    DE: Läuft am Ende der Pipeline, unabhängig vom Ergebnis: sammelt den Endstatus jeder Aufgabe des
    Laufs (erfolgreich, idempotenter Treffer, fehlgeschlagen, abgelehnt) mit ihrem festgeschriebenen
    Ergebnis, wer den Lauf gestartet hat und aus welcher Git-Revision, prüft die Hash-Kette des
    Audit-Logs und schreibt `<root>/runs/<run_id>/summary.json`.
    """
    import json

    from aitasks.runtime.storage import join_uri

    audit = ctx.runtime.audit
    report = audit.verify()
    summary = summarize_run(audit.records(), run_id=params.run_id, storage_root=ctx.settings.storage_root)
    summary |= {
        "pipeline": params.pipeline,
        "final_status": params.final_status,
        "audit": report.to_dict(),
    }
    safe_run = "".join(c if c.isalnum() or c in "-_." else "_" for c in params.run_id)[:128]
    uri = join_uri(ctx.settings.storage_root, "runs", safe_run, "summary.json")
    ctx.storage.write_bytes(uri, json.dumps(summary, indent=2, sort_keys=True, default=str).encode("utf-8"))
    ctx.log.info("run.summarised", tasks=len(summary["tasks"]), failed=summary["failed"], audit_ok=report.ok)
    if params.final_status.upper() == "SUCCEEDED" and report.ok and not summary["failed"]:
        # The "pipeline did not succeed within its schedule" alert reads this (pushed with the step's metrics).
        ctx.runtime.telemetry.outcome.pipeline_success.labels(params.pipeline or "unknown").set_to_current_time()
    return RunSummaryResult(
        summary_uri=uri,
        tasks={t: e["status"] for t, e in summary["tasks"].items()},
        failed=summary["failed"],
        audit_verified=report.ok,
        audit_records=report.records,
    )
