"""Step groups shared by pipelines (plain Python, called inside a ``@dsl.pipeline`` body).

kfp.local cannot pass artifacts into nested pipelines, so pipelines that share steps call these
functions instead of nesting a sub-pipeline; the compiled YAML is the same flat DAG either way.
"""

from typing import Any, NamedTuple

from kfp import dsl

from components.data_processing import check_drift, compute_features, ingest_events, materialize_features, source_data
from pipelines.k8s import configure


def run_context(
    pipeline: str,
    *,
    storage_root: Any,
    submitter: Any,
    git_revision: Any,
    traceparent: Any,
    pipeline_version: Any = "",
) -> dict:
    """The run context every component receives as inputs (KFP placeholders resolve per run and step)."""
    return {
        "storage_root": storage_root,
        "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        "pipeline": pipeline,
        "step": dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
        "submitter": submitter,
        "git_revision": git_revision,
        # The uploaded pipeline version (content hash + git revision); with submitter and git revision it
        # lands in every task's audit record: the audit answers "who ran what" (the KFP backend does not).
        "pipeline_version": pipeline_version,
        "traceparent": traceparent,
    }


class DataSteps(NamedTuple):
    source: Any
    ingest: Any
    features: Any
    materialize: Any
    drift: Any


def data_steps(
    pipeline: str,
    run: dict,
    *,
    events_uri: Any,
    catalog_uri: Any,
    seed: Any,
    users: Any,
    tracks: Any,
    events: Any,
    days: Any,
    start_date: Any,
    dirty_rows: Any,
    as_of: Any,
    chunk_rows: Any,
    lookback_days: Any,
    half_life_days: Any,
    feast_project: Any,
    online_store: Any,
    psi_threshold: Any,
    ks_pvalue_threshold: Any,
) -> DataSteps:
    """source -> ingest/validate/quarantine -> features -> Feast materialize, and the drift check."""
    src = source_data(
        events_uri=events_uri,
        catalog_uri=catalog_uri,
        seed=seed,
        users=users,
        tracks=tracks,
        events=events,
        days=days,
        start_date=start_date,
        dirty_rows=dirty_rows,
        **run,
    )
    # The source step reads URIs whose content may change under the same name: never served from cache
    # (the task's own idempotency key covers content hashes).
    configure(
        src, pipeline=pipeline, step="source", task_name="data.source", task_version="1.0.0", retries=2, cache=False
    )

    ingest = ingest_events(
        events=src.outputs["events_out"],
        catalog=src.outputs["tracks_out"],
        as_of=as_of,
        chunk_rows=chunk_rows,
        **run,
    )
    configure(
        ingest,
        pipeline=pipeline,
        step="ingest",
        task_name="data.ingest",
        task_version="1.0.0",
        memory="2Gi",
        memory_limit="4Gi",
        retries=2,
    )

    feats = compute_features(
        events=ingest.outputs["good_events"],
        catalog=src.outputs["tracks_out"],
        lookback_days=lookback_days,
        half_life_days=half_life_days,
        **run,
    )
    configure(
        feats,
        pipeline=pipeline,
        step="features",
        task_name="data.features",
        task_version="1.0.0",
        cpu="1",
        memory="4Gi",
        memory_limit="8Gi",
    )

    mat = materialize_features(
        user_features=feats.outputs["user_features"],
        track_features=feats.outputs["track_features"],
        end=feats.outputs["Output"],
        project=feast_project,
        online_store=online_store,
        **run,
    )
    # Materializing writes to an external online store: state the cache cannot see.
    configure(
        mat,
        pipeline=pipeline,
        step="materialize",
        task_name="feast.materialize",
        task_version="1.0.0",
        retries=3,
        cache=False,
    )

    drift = check_drift(
        features=feats.outputs["user_features"],
        split_at="",
        warmup_days=lookback_days,
        psi_threshold=psi_threshold,
        ks_pvalue_threshold=ks_pvalue_threshold,
        **run,
    )
    configure(drift, pipeline=pipeline, step="drift", task_name="data.drift", task_version="1.0.0")
    return DataSteps(src, ingest, feats, mat, drift)
