"""Helpers for pipeline steps (the thin KFP components call these; no kfp import here).

A component receives the run context as task inputs (KFP placeholders: job id and name, task name)
plus submitter, git revision and trace parent passed down from the pipeline parameters, builds a
:class:`~aitasks.runtime.task.Runtime` from them, makes one task call, and copies result files into
its KFP output artifact paths.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from aitasks.runtime.settings import load_settings
from aitasks.runtime.storage import is_gcs, storage_for
from aitasks.runtime.task import RunContext, Runtime


def step_runtime(
    *,
    storage_root: str,
    run_id: str,
    pipeline: str = "",
    pipeline_version: str = "",
    step: str = "",
    submitter: str = "",
    git_revision: str = "",
    traceparent: str = "",
) -> Runtime:
    """A runtime for one pipeline step; service addresses still come from the environment's settings.

    An empty ``storage_root`` means the environment's ``AITASKS_STORAGE_ROOT`` (set per deployment by
    the manifests' ConfigMap; dev and prod are separate KFP deployments with separate caches).
    """
    overrides: dict[str, Any] = {"storage_root": storage_root} if storage_root else {}
    if submitter:
        overrides["actor"] = submitter
    settings = load_settings(**overrides)
    run = RunContext(
        run_id=run_id or "local",
        pipeline=pipeline,
        pipeline_version=pipeline_version,
        step=step,
        submitter=submitter,
        git_revision=git_revision,
        traceparent=traceparent,
    )
    return Runtime.create(settings, run=run)


def copy_to_output(uri: str, path: str) -> None:
    """Copy the file at ``uri`` (local or GCS) to a KFP output artifact ``path``."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if is_gcs(uri):
        storage_for(uri).get_file(uri, dest)
    else:
        shutil.copyfile(uri, dest)


def write_json(path: str, payload: Any) -> None:
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str), "utf-8")


def finish_step(rt: Runtime, job: str) -> None:
    """Hand the step's metrics on (Pushgateway / textfile per settings) and flush spans."""
    rt.telemetry.push(
        job,
        gateway=rt.settings.pushgateway_url,
        textfile_dir=rt.settings.metrics_textfile_dir,
        grouping={"run_id": rt.run.run_id, "step": rt.run.step},
    )
    rt.telemetry.provider.force_flush()


def resolve_as_of(as_of: str) -> str:
    """A run's reference time: the given ISO time, or now (UTC) floored to the hour when empty.

    Flooring keeps retries and re-runs within the hour on one idempotency key.
    """
    from datetime import UTC, datetime

    if as_of:
        parsed = datetime.fromisoformat(as_of.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            raise ValueError(f"as_of {as_of!r} has no timezone; give UTC, e.g. 2026-10-31T00:00:00Z")
        return parsed.isoformat()
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0).isoformat()


def input_uri(artifact: Any, *, bundle: bool = False) -> str:
    """The URI to hand a task for a KFP input artifact.

    The producer records the artifact's storage URI as ``stable_uri`` metadata (same for every pod);
    without it, the local artifact path (for a bundle, the ``MANIFEST.json`` inside it).
    """
    from aitasks.runtime.bundle import MANIFEST

    stable = artifact.metadata.get("stable_uri")
    if stable:
        return str(stable)
    return str(Path(artifact.path) / MANIFEST) if bundle else str(artifact.path)


def export_output(uri: str, artifact: Any, *, bundle: bool = False, **metadata: Any) -> None:
    """Copy a task output (a file, or a bundle whose manifest is ``uri``) into a KFP output artifact."""
    if bundle:
        from aitasks.runtime.bundle import export_bundle

        export_bundle(uri, Path(artifact.path))
    else:
        copy_to_output(uri, artifact.path)
    artifact.metadata.update({"stable_uri": uri, **metadata})
