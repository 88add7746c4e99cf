"""KFP components of the content-generation family.

Each body makes one :func:`aitasks.runtime.step.run_step` call: the adapter builds the step's runtime
from the run context inputs, runs the task, exports its files into the typed outputs and logs its
metrics. Generation runs on the GPU image; the other steps on the CPU image.
"""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from components.images import image_for, image_uri

GPU_IMAGE = image_for("content_generation")
CPU_IMAGE = image_uri("cpu")


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def validate_prompts(
    prompts_uri: str,
    blocked_terms_uri: str,
    default_blocked_terms: bool,
    batch_size: int,
    policy: dict,
    on_invalid: str,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    prompts: Output[Dataset],
    metrics: Output[Metrics],
) -> list:
    """Check every prompt (quarantine with reasons) and batch the accepted ones. Returns the batch indices."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "content.validate_prompts",
        {
            "prompts_uri": prompts_uri,
            "blocked_terms_uri": blocked_terms_uri,
            "default_blocked_terms": default_blocked_terms,
            "batch_size": batch_size,
            "policy": policy,
            "on_invalid": on_invalid,
        },
        (run_context, pipeline, run_id, step),
        outputs={"prompts_uri": prompts},
        metrics=metrics,
    )
    return res.batches


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def generate_content(
    prompts: Input[Dataset],
    batch_index: int,
    models: dict,
    generation: dict,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
) -> str:
    """Generate one batch (text, images or music) with provenance. Returns the batch bundle's URI."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "content.generate",
        {"prompts_uri": prompts, "batch_index": batch_index, "models": models, "generation": generation},
        (run_context, pipeline, run_id, step),
    )
    return res.batch_uri


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def check_content(
    batch_uris: list,
    checks: dict,
    blocked_terms_uri: str,
    default_blocked_terms: bool,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    verdicts: Output[Dataset],
    metrics: Output[Metrics],
) -> int:
    """Check every output; rejected ones are recorded with reasons. Returns the number accepted."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "content.check",
        {
            "batch_uris": batch_uris,
            "checks": checks,
            "blocked_terms_uri": blocked_terms_uri,
            "default_blocked_terms": default_blocked_terms,
        },
        (run_context, pipeline, run_id, step),
        outputs={"checks_uri": verdicts},
        metrics=metrics,
    )
    return res.accepted


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def publish_content(
    verdicts: Input[Dataset],
    collection: str,
    destination: str,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    metrics: Output[Metrics],
) -> str:
    """Publish the accepted outputs as one release (manifest last) and the rejected ones to quarantine."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "content.publish",
        {"checks_uri": verdicts, "collection": collection, "destination": destination},
        (run_context, pipeline, run_id, step),
        metrics=metrics,
    )
    return res.release_uri


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def content_report(
    release_uri: str,
    verdicts: Input[Dataset],
    report_settings: dict,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    report: Output[HTML],
) -> int:
    """The HTML report with samples (text, thumbnails, audio players) and rejections. Returns samples shown."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "content.report",
        {"release_uri": release_uri, "checks_uri": verdicts},
        (run_context, pipeline, run_id, step),
        groups={"report": report_settings},
        outputs={"report_uri": report},
    )
    return res.samples
