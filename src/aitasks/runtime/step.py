"""The step adapter: one call runs a registered task as a pipeline step (no kfp import here).

A KFP component body is a few lines::

    from aitasks.runtime.step import run_step

    res = run_step(
        "data.ingest",
        {"events_uri": events, "catalog_uri": catalog, "as_of": as_of, "chunk_rows": chunk_rows},
        (run_context, pipeline, run_id, step),
        outputs={"good_uri": good_events, "quarantine_uri": quarantine},
        metrics=metrics,
    )
    return res.good_rows

:func:`run_step` builds the step's runtime from the run context (one ``run_context`` dict pipeline
parameter, the compile-time pipeline name, and the two KFP placeholders that must be whole string
inputs: job id and task name), turns KFP input artifacts into storage URIs, calls the task, exports
the result's output files into the KFP output artifacts, logs the result fields the result model
marks as :class:`~aitasks.runtime.task.Metric`, pushes the step's Prometheus metrics under a job
named after the task, and flushes the spans.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aitasks.runtime.errors import FieldIssue, InvalidInputError
from aitasks.runtime.logging import get_logger, install_excepthook
from aitasks.runtime.settings import load_settings
from aitasks.runtime.storage import is_gcs, storage_for
from aitasks.runtime.task import RunContext, Runtime, TaskModel, get_task, metric_values


class RunContextParams(BaseModel):
    """The ``run_context`` pipeline parameter: who runs which pipeline version, where, in which trace.

    Filled by ``python -m pipelines run/upload/schedule``, the demos and the recurring runs; a person
    submitting from the KFP UI may leave every field empty.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    storage_root: str = Field(default="", description="Run storage root (gs://... or a path); empty: settings.")
    submitter: str = Field(default="", description="Who submitted the run (CI actor, schedule:<name>, login).")
    git_revision: str = Field(default="", description="Git revision the pipeline was built from.")
    pipeline_version: str = Field(default="", description="Uploaded pipeline version name.")
    traceparent: str = Field(default="", description="W3C trace parent; empty: a trace derived from the run id.")


#: The keys of the ``run_context`` parameter.
RUN_CONTEXT_KEYS: tuple[str, ...] = tuple(RunContextParams.model_fields)


def run_context_params(run_context: Mapping[str, Any] | None) -> RunContextParams:
    """Validate a ``run_context`` dict; an unknown key or a non-string value is named in the error."""
    try:
        return RunContextParams.model_validate(dict(run_context or {}))
    except ValidationError as exc:
        issues = [FieldIssue("run_context." + ".".join(map(str, e["loc"])), str(e["msg"])) for e in exc.errors()]
        raise InvalidInputError("step", issues) from None


def step_runtime(
    run_context: Mapping[str, Any] | None,
    *,
    run_id: str,
    step: str,
    pipeline: str = "",
    input_roots: tuple[str, ...] = (),
) -> Runtime:
    """A runtime for one pipeline step; service addresses still come from the environment's settings.

    An empty ``storage_root`` means the environment's ``AITASKS_STORAGE_ROOT`` (set per deployment by
    the manifests' ConfigMap; dev and prod are separate KFP deployments with separate caches).
    ``input_roots`` join ``AITASKS_INPUT_ROOTS`` for this step (the paths KFP gave its input artifacts).
    """
    ctx = run_context_params(run_context)
    overrides: dict[str, Any] = {"storage_root": ctx.storage_root} if ctx.storage_root else {}
    if ctx.submitter:
        overrides["actor"] = ctx.submitter
    settings = load_settings(**overrides)
    if input_roots:
        settings = settings.model_copy(update={"input_roots": (*settings.input_roots, *input_roots)})
    run = RunContext(
        run_id=run_id or "local",
        pipeline=pipeline,
        pipeline_version=ctx.pipeline_version,
        step=step,
        submitter=ctx.submitter,
        git_revision=ctx.git_revision,
        traceparent=ctx.traceparent,
    )
    return Runtime.create(settings, run=run)


def metrics_job(task_name: str) -> str:
    """The Pushgateway job of a task's step: ``data.ingest`` -> ``data-ingest``."""
    return task_name.replace(".", "-").replace("_", "-")


def _is_artifact(value: Any) -> bool:
    return hasattr(value, "path") and hasattr(value, "metadata") and not isinstance(value, str | bytes)


def input_uri(artifact: Any) -> str:
    """The URI to hand a task for a KFP input artifact.

    The producer records the artifact's storage URI as ``stable_uri`` metadata (the same in every pod);
    without it, the local artifact path (for a bundle directory, the ``MANIFEST.json`` inside it).
    """
    from aitasks.runtime.bundle import MANIFEST

    stable = (artifact.metadata or {}).get("stable_uri")
    if stable:
        return str(stable)
    path = Path(artifact.path)
    return str(path / MANIFEST) if path.is_dir() else str(path)


def copy_to_output(uri: str, path: str) -> None:
    """Copy the file at ``uri`` (local or GCS) to a KFP output artifact ``path``."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if is_gcs(uri):
        storage_for(uri).get_file(uri, dest)
    else:
        shutil.copyfile(uri, dest)


def export_output(uri: str, artifact: Any, **metadata: Any) -> None:
    """Copy a task output into a KFP output artifact: a file, or a bundle when ``uri`` is its manifest."""
    from aitasks.runtime.bundle import MANIFEST, export_bundle

    if uri.rsplit("/", 1)[-1] == MANIFEST:
        export_bundle(uri, Path(artifact.path))
    else:
        copy_to_output(uri, artifact.path)
    artifact.metadata.update({"stable_uri": uri, **metadata})


def write_json(path: str, payload: Any) -> None:
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str), "utf-8")


def push_grouping(rt: Runtime, shard: Any = None) -> dict[str, str]:
    """The Pushgateway grouping key of a step: ``{pipeline, step}``, plus ``shard`` for a fan-out step.

    One group per pipeline step, replaced by each push: gauges show the latest run, and the gateway holds
    a bounded set of groups (a run id in the key would grow it forever and freeze old alerts). The
    iterations of a ``ParallelFor`` share one task name, so a sharded step adds its shard index: without
    it, each shard's push would replace the others' counters.
    """
    grouping = {"pipeline": rt.run.pipeline or "none", "step": rt.run.step or "none"}
    if shard is not None:
        grouping["shard"] = str(shard)
    return grouping


def finish_step(rt: Runtime, job: str, shard: Any = None) -> None:
    """Hand the step's metrics on (Pushgateway / textfile per settings) and flush spans."""
    rt.telemetry.push(
        job,
        gateway=rt.settings.pushgateway_url,
        textfile_dir=rt.settings.metrics_textfile_dir,
        grouping=push_grouping(rt, shard),
    )
    rt.telemetry.provider.force_flush()


#: What every component hands the adapter: the ``run_context`` parameter, the pipeline name (a compile-time
#: constant), ``dsl.PIPELINE_JOB_ID_PLACEHOLDER`` and ``dsl.PIPELINE_TASK_NAME_PLACEHOLDER``.
StepContext = tuple[Mapping[str, Any] | None, str, str, str]


def run_step(
    task: str,
    params: Mapping[str, Any],
    context: StepContext,
    *,
    outputs: Mapping[str, Any] | None = None,
    metrics: Any = None,
    classification: Any = None,
    groups: Mapping[str, Any] | None = None,
) -> Any:
    """Run registered task ``task`` as a pipeline step and return its result.

    Args:
        task: Registered task name (``data.ingest``); its module is imported on demand.
        params: The task's inputs; a KFP input artifact stands for its storage URI.
        context: ``(run_context, pipeline, run_id, step)``: the ``run_context`` pipeline parameter (see
            :class:`RunContextParams`), the pipeline's name, the KFP job id and the KFP task name.
        outputs: ``{result field: KFP output artifact}``: each field's file or bundle is exported into
            the artifact, with the storage URI and the result's ``artifact_metadata(field)``.
        metrics: A KFP ``Metrics`` output: receives the result's :class:`Metric` fields.
        classification: A KFP ``ClassificationMetrics`` output: receives the result's
            ``confusion_matrix()`` (labels, rows).
        groups: ``{group name: dict}``: run-form group parameters (``aitasks.run_forms``); the keys each
            routes to ``task`` join ``params`` (a bad group is refused, naming ``group.key``).
    """
    run_context, pipeline, run_id, step = context
    # The step's last words (an uncaught traceback in the pod log) are redacted, chained causes included.
    install_excepthook()
    t = get_task(task)
    if groups:
        from aitasks.run_forms import step_params

        params = step_params(task, params, **groups)
    inputs = {k: input_uri(v) if _is_artifact(v) else v for k, v in params.items()}
    # An input artifact without a storage URI is the local copy KFP itself placed: allowed to be read.
    kfp_paths = tuple(
        inputs[k] for k, v in params.items() if _is_artifact(v) and not (v.metadata or {}).get("stable_uri")
    )
    rt = step_runtime(run_context, run_id=run_id, step=step, pipeline=pipeline, input_roots=kfp_paths)
    job = metrics_job(task)
    shard = params.get("shard_index")  # a fan-out step: one Pushgateway group per shard
    try:
        res: TaskModel = t(inputs, runtime=rt)
        for field, artifact in (outputs or {}).items():
            uri = getattr(res, field)
            if not isinstance(uri, str) or not uri:
                raise TypeError(f"{task}: result field {field!r} is not an output URI")
            export_output(uri, artifact, **res.artifact_metadata(field))
        if metrics is not None:
            for name, value in metric_values(res).items():
                metrics.log_metric(name, value)
        if classification is not None:
            labels, rows = res.confusion_matrix()  # type: ignore[attr-defined]
            classification.log_confusion_matrix(list(labels), [list(r) for r in rows])
    except BaseException:
        # The failure counters still reach the Pushgateway; a push error must not hide the task's error.
        try:
            finish_step(rt, job, shard)
        except Exception as push_error:  # telemetry is best effort on the failure path
            get_logger(task=task).warning("step.metrics_push_failed", error=str(push_error))
        raise
    # On success a push error fails the step: KFP's retry then returns the committed result and pushes again.
    finish_step(rt, job, shard)
    return res
