"""KFP components of the model-training family: training set, train, evaluate, register, promote.

Each body: build the step runtime from the run context inputs, make one ``aitasks`` task call,
copy result files to the typed outputs, log metrics. Nothing else.
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
    project: str,
    online_store: str,
    holdout_days: int,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
    training_set: Output[Dataset],
    metrics: Output[Metrics],
) -> str:
    """Training rows with point-in-time Feast features, held-out day, catalog snapshot. Returns split time."""
    from aitasks.model_training.tasks import training_set_task
    from aitasks.runtime.step import export_output, finish_step, input_uri, step_runtime

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
    res = training_set_task(
        {
            "events_uri": input_uri(events),
            "catalog_uri": input_uri(catalog),
            "user_features_uri": input_uri(user_features),
            "track_features_uri": input_uri(track_features),
            "project": project,
            "online_store": online_store,
            "holdout_days": holdout_days,
        },
        runtime=rt,
    )
    export_output(res.training_set_uri, training_set, bundle=True, snapshot_hash=res.snapshot_hash)
    for name in ("train_rows", "train_users", "holdout_users", "holdout_targets", "items"):
        metrics.log_metric(name, getattr(res, name))
    finish_step(rt, "reco-training-set")
    return res.split_at.isoformat()


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_model(
    training_set: Input[Dataset],
    epochs: int,
    batch_size: int,
    lr: float,
    sparse_lr: float,
    seed: int,
    embedding_dim: int,
    temperature: float,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Train the two-tower model (GPU when the pod has one); weights as safetensors."""
    from aitasks.model_training.tasks import train_model_task
    from aitasks.runtime.step import export_output, finish_step, input_uri, step_runtime

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
    res = train_model_task(
        {
            "training_set_uri": input_uri(training_set, bundle=True),
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "sparse_lr": sparse_lr,
            "seed": seed,
            "embedding_dim": embedding_dim,
            "temperature": temperature,
        },
        runtime=rt,
    )
    export_output(res.model_uri, model, bundle=True, framework="pytorch", format="safetensors", seed=res.seed)
    metrics.log_metric("examples", res.examples)
    metrics.log_metric("examples_per_s", res.examples_per_s)
    metrics.log_metric("final_loss", res.final_loss)
    finish_step(rt, "model-train")


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate_model(
    model: Input[Model],
    training_set: Input[Dataset],
    model_name: str,
    exclude_seen: bool,
    min_lift_over_popularity: float,
    max_regression_vs_champion: float,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
    evaluation: Output[Artifact],
    report: Output[HTML],
    report_markdown: Output[Markdown],
    metrics: Output[Metrics],
) -> bool:
    """Recall/NDCG/coverage vs popularity and the champion on the held-out day. Returns the blessing verdict.

    A single ``bool`` output (not a NamedTuple): kfp.local 2.17 cannot resolve a ``dsl.If`` on a
    NamedTuple field.
    """
    from aitasks.model_training.tasks import evaluate_model_task
    from aitasks.runtime.step import export_output, finish_step, input_uri, step_runtime

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
    res = evaluate_model_task(
        {
            "model_uri": input_uri(model, bundle=True),
            "training_set_uri": input_uri(training_set, bundle=True),
            "model_name": model_name,
            "exclude_seen": exclude_seen,
            "min_lift_over_popularity": min_lift_over_popularity,
            "max_regression_vs_champion": max_regression_vs_champion,
        },
        runtime=rt,
    )
    export_output(res.metrics_uri, evaluation, blessed=res.blessed)
    export_output(res.report_html_uri, report)
    export_output(res.report_markdown_uri, report_markdown)
    for name in ("recall_at_10", "recall_at_50", "ndcg_at_10", "coverage_at_10"):
        metrics.log_metric(name, res.model[name])
        metrics.log_metric(f"popularity_{name}", res.popularity[name])
    metrics.log_metric("lift_over_popularity", res.lift_over_popularity)
    finish_step(rt, "model-evaluate")
    return res.blessed


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register_model(
    model: Input[Model],
    evaluation: Input[Artifact],
    model_name: str,
    feature_service: str,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
) -> int:
    """Register the model version in MLflow with lineage tags (idempotent by model content)."""
    from aitasks.model_training.tasks import register_model_task
    from aitasks.runtime.step import finish_step, input_uri, step_runtime

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
    res = register_model_task(
        {
            "model_uri": input_uri(model, bundle=True),
            "metrics_uri": input_uri(evaluation),
            "model_name": model_name,
            "feature_service": feature_service,
        },
        runtime=rt,
    )
    finish_step(rt, "model-register")
    return res.version


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def promote_model(
    model_name: str,
    version: int,
    blessed: bool,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
) -> bool:
    """Move the `champion` alias to the blessed version. Returns whether it moved."""
    from aitasks.model_training.tasks import promote_model_task
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
    res = promote_model_task({"model_name": model_name, "version": version, "blessed": blessed}, runtime=rt)
    finish_step(rt, "model-promote")
    return res.moved
