"""KFP components of the recommendation-update family: build the ANN index, publish it.

Each body: build the step runtime from the run context inputs, make one ``aitasks`` task call,
copy result files to the typed outputs, log metrics. Nothing else.
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.images import image_for

IMAGE = image_for("recommendation_update")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def build_index(
    model: Input[Model],
    training_set: Input[Dataset],
    backend: str,
    m: int,
    ef_construction: int,
    k: int,
    recall_floor: float,
    target_recall: float,
    sample_queries: int,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
    index: Output[Artifact],
    metrics: Output[Metrics],
) -> float:
    """HNSW index of the catalog's item embeddings; fails below the recall floor. Returns recall@k."""
    from aitasks.recommendation_update.tasks import build_index_task
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
    res = build_index_task(
        {
            "model_uri": input_uri(model, bundle=True),
            "training_set_uri": input_uri(training_set, bundle=True),
            "backend": backend,
            "m": m,
            "ef_construction": ef_construction,
            "k": k,
            "recall_floor": recall_floor,
            "target_recall": target_recall,
            "sample_queries": sample_queries,
        },
        runtime=rt,
    )
    export_output(res.index_uri, index, bundle=True, backend=res.backend, ef_search=res.ef_search)
    metrics.log_metric("recall_at_k", res.recall_at_k)
    metrics.log_metric("ef_search", res.ef_search)
    metrics.log_metric("items", res.count)
    finish_step(rt, "index-build")
    return res.recall_at_k


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def publish_index(
    index: Input[Artifact],
    name: str,
    model_name: str,
    model_version: int,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
) -> int:
    """Publish the index as a new version and switch CURRENT atomically. Returns the version."""
    from aitasks.recommendation_update.tasks import publish_index_task
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
    res = publish_index_task(
        {
            "index_uri": input_uri(index, bundle=True),
            "name": name,
            "model_name": model_name,
            "model_version": model_version,
        },
        runtime=rt,
    )
    finish_step(rt, "index-publish")
    return res.version
