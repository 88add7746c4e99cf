"""KFP components of the recommendation-update family: build or refresh the ANN index, publish it.

Each body makes one :func:`aitasks.runtime.step.run_step` call: the adapter builds the step's runtime
from the run context inputs, runs the task, exports its files into the typed outputs and logs its
metrics. Nothing else.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.images import image_for

IMAGE = image_for("recommendation_update")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def build_index(
    model: Input[Model],
    training_set: Input[Dataset],
    index_settings: dict,
    k: int,
    sample_queries: int,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    index: Output[Artifact],
    metrics: Output[Metrics],
) -> float:
    """HNSW index of the catalog's item embeddings; fails below the recall floor. Returns recall@k."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "index.build",
        {"model_uri": model, "training_set_uri": training_set, "k": k, "sample_queries": sample_queries},
        (run_context, pipeline, run_id, step),
        groups={"index": index_settings},
        outputs={"index_uri": index},
        metrics=metrics,
    )
    return res.recall_at_k


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def publish_index(
    index: Input[Artifact],
    name: str,
    model_name: str,
    model_version: int,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
) -> int:
    """Publish the index as a new version and switch CURRENT atomically. Returns the version."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "index.publish",
        {"index_uri": index, "name": name, "model_name": model_name, "model_version": model_version},
        (run_context, pipeline, run_id, step),
    )
    return res.version


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def refresh_index(
    events: Input[Dataset],
    catalog: Input[Dataset],
    user_features: Input[Dataset],
    track_features: Input[Dataset],
    as_of: str,
    name: str,
    model_name: str,
    feast: dict,
    index_settings: dict,
    refresh: dict,
    scheduled_time: str,
    run_created_time: str,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    index: Output[Artifact],
    metrics: Output[Metrics],
) -> NamedTuple("RefreshOutputs", [("model_version", int), ("recall_at_k", float), ("mode", str)]):
    """The live index updated in place (new, changed, deleted tracks) or rebuilt when a threshold says so."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "index.refresh",
        {
            "events_uri": events,
            "catalog_uri": catalog,
            "user_features_uri": user_features,
            "track_features_uri": track_features,
            "as_of": as_of,
            "name": name,
            "model_name": model_name,
            "scheduled_time": scheduled_time,
            "run_created_time": run_created_time,
        },
        (run_context, pipeline, run_id, step),
        groups={"feast": feast, "index": index_settings, "refresh": refresh},
        outputs={"index_uri": index},
        metrics=metrics,
    )
    return res.model_version, res.recall_at_k, res.mode
