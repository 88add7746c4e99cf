"""`data-pipeline`: source -> ingest/validate/quarantine -> features -> Feast materialize, drift check."""

from kfp import dsl

from components.data_processing import check_drift, compute_features, ingest_events, materialize_features, source_data
from pipelines.k8s import configure

NAME = "data-pipeline"


@dsl.pipeline(
    name=NAME,
    description="Listening events to validated data, point-in-time features, Feast online store and a drift report.",
)
def data_pipeline(
    storage_root: str = "",
    events_uri: str = "",
    catalog_uri: str = "",
    seed: int = 7,
    users: int = 2_000,
    tracks: int = 5_000,
    events: int = 200_000,
    days: int = 30,
    start_date: str = "2026-10-01",
    as_of: str = "",
    chunk_rows: int = 65_536,
    lookback_days: int = 28,
    half_life_days: float = 14.0,
    feast_project: str = "aitasks",
    online_store: str = "sqlite",
    psi_threshold: float = 0.2,
    ks_pvalue_threshold: float = 0.01,
    submitter: str = "",
    git_revision: str = "",
    traceparent: str = "",
) -> None:
    """The data pipeline. Empty ``events_uri``/``catalog_uri``: synthetic data from the generator settings."""
    run = {
        "storage_root": storage_root,
        "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        "pipeline": NAME,
        "step": dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
        "submitter": submitter,
        "git_revision": git_revision,
        "traceparent": traceparent,
    }
    src = source_data(
        events_uri=events_uri,
        catalog_uri=catalog_uri,
        seed=seed,
        users=users,
        tracks=tracks,
        events=events,
        days=days,
        start_date=start_date,
        **run,
    )
    # The source step reads URIs whose content may change under the same name: never served from cache
    # (the task's own idempotency key covers content hashes).
    configure(src, pipeline=NAME, step="source", task_name="data.source", task_version="1.0.0", retries=2, cache=False)

    ingest = ingest_events(
        events=src.outputs["events_out"],
        catalog=src.outputs["tracks_out"],
        as_of=as_of,
        chunk_rows=chunk_rows,
        **run,
    )
    configure(
        ingest,
        pipeline=NAME,
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
        pipeline=NAME,
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
        pipeline=NAME,
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
    configure(drift, pipeline=NAME, step="drift", task_name="data.drift", task_version="1.0.0")
