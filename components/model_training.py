"""KFP components of the model-training family: training set, train, evaluate, register, promote.

Each body makes one :func:`aitasks.runtime.step.run_step` call: the adapter builds the step's runtime
from the run context inputs, runs the task, exports its files into the typed outputs and logs its
metrics. Nothing else.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.images import image_for

GPU_IMAGE = image_for("model_training")
CPU_IMAGE = image_for("model_evaluation")


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def build_training_set(
    events: Input[Dataset],
    catalog: Input[Dataset],
    user_features: Input[Dataset],
    track_features: Input[Dataset],
    feast: dict,
    training: dict,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    training_set: Output[Dataset],
    metrics: Output[Metrics],
) -> str:
    """Training rows with point-in-time Feast features, held-out day, catalog snapshot. Returns split time."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "reco.training_set",
        {
            "events_uri": events,
            "catalog_uri": catalog,
            "user_features_uri": user_features,
            "track_features_uri": track_features,
        },
        (run_context, pipeline, run_id, step),
        groups={"feast": feast, "training": training},
        outputs={"training_set_uri": training_set},
        metrics=metrics,
    )
    return res.split_at_iso


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_model(
    training_set: Input[Dataset],
    training: dict,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Train the two-tower model (GPU when the pod has one; DDP with training.workers > 1); weights as safetensors."""
    from aitasks.runtime.step import run_step

    run_step(
        "model.train",
        {"training_set_uri": training_set},
        (run_context, pipeline, run_id, step),
        groups={"training": training},
        outputs={"model_uri": model},
        metrics=metrics,
    )


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def train_model_pytorchjob(
    training_set: Input[Dataset],
    training: dict,
    namespace: str,
    replicas: int,
    gpus_per_replica: int,
    node_selector: dict,
    tolerations: list,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    model: Output[Model],
    metrics: Output[Metrics],
    image: str = GPU_IMAGE,
    timeout_s: int = 21600,
    cleanup: str = "on_success",
):
    """Train the two-tower model on a Kubeflow PyTorchJob (Master + Workers with GPUs); waits for it."""
    from aitasks.runtime.step import run_step

    run_step(
        "model.train_pytorchjob",
        {
            "training_set_uri": training_set,
            "image": image,
            "namespace": namespace,
            "replicas": replicas,
            "gpus_per_replica": gpus_per_replica,
            "node_selector": node_selector,
            "tolerations": tolerations,
            "timeout_s": timeout_s,
            "cleanup": cleanup,
        },
        (run_context, pipeline, run_id, step),
        groups={"training": training},
        outputs={"model_uri": model},
        metrics=metrics,
    )


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate_model(
    model: Input[Model],
    training_set: Input[Dataset],
    model_name: str,
    serving_mode: str,
    gate: dict,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    evaluation: Output[Artifact],
    report: Output[HTML],
    report_markdown: Output[Markdown],
    metrics: Output[Metrics],
) -> bool:
    """Recall/NDCG/coverage vs popularity and the champion on the held-out day. Returns the blessing verdict.

    A single ``bool`` output (not a NamedTuple): kfp.local 2.17 cannot resolve a ``dsl.If`` on a
    NamedTuple field.
    """
    from aitasks.runtime.step import run_step

    res = run_step(
        "model.evaluate",
        {
            "model_uri": model,
            "training_set_uri": training_set,
            "model_name": model_name,
            "serving_mode": serving_mode,
        },
        (run_context, pipeline, run_id, step),
        groups={"gate": gate},
        outputs={"metrics_uri": evaluation, "report_html_uri": report, "report_markdown_uri": report_markdown},
        metrics=metrics,
    )
    return res.blessed


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register_model(
    model: Input[Model],
    evaluation: Input[Artifact],
    model_name: str,
    feature_service: str,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
) -> int:
    """Register the model version in MLflow with lineage tags (idempotent by model content)."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "model.register",
        {"model_uri": model, "metrics_uri": evaluation, "model_name": model_name, "feature_service": feature_service},
        (run_context, pipeline, run_id, step),
    )
    return res.version


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def promote_model(
    model_name: str,
    version: int,
    blessed: bool,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
) -> bool:
    """Move the `champion` alias to the blessed version. Returns whether it moved."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "model.promote",
        {"model_name": model_name, "version": version, "blessed": blessed},
        (run_context, pipeline, run_id, step),
    )
    return res.moved
