"""KFP components that belong to a run rather than a task family: the exit-handler run summary."""

from kfp import dsl
from kfp.dsl import PipelineTaskFinalStatus

from components.images import image_for

IMAGE = image_for("run_ops")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def summarize_run(
    status: PipelineTaskFinalStatus,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
) -> str:
    """Exit handler: the run's tasks and outcomes from the audit trail, audit chain verified."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "run.summary",
        {"run_id": run_id, "pipeline": pipeline, "final_status": status.state},
        (run_context, pipeline, run_id, step),
    )
    return res.summary_uri
