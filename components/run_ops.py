"""KFP components that belong to a run rather than a task family: the exit-handler run summary."""

from kfp import dsl
from kfp.dsl import PipelineTaskFinalStatus

from components.images import image_for

IMAGE = image_for("run_ops")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def summarize_run(
    status: PipelineTaskFinalStatus,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
) -> str:
    """Exit handler: the run's tasks and outcomes from the audit trail, audit chain verified."""
    import time

    from aitasks.runtime.run_summary import run_summary_task
    from aitasks.runtime.step import finish_step, step_runtime

    rt = step_runtime(
        storage_root=storage_root,
        run_id=run_id,
        pipeline=pipeline,
        step=step,
        submitter=submitter,
        git_revision=git_revision,
        pipeline_version=pipeline_version,
        traceparent=traceparent,
    )
    res = run_summary_task(
        {
            "run_id": run_id,
            "pipeline": pipeline,
            "final_status": str(status.state or ""),
            "started_at": repr(time.time()),
        },
        runtime=rt,
    )
    finish_step(rt, "run-summary")
    return res.summary_uri
