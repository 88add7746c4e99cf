"""`data-pipeline`: source -> ingest/validate/quarantine -> features -> Feast materialize, drift check."""

from kfp import dsl

from pipelines.steps import data_steps, run_context

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
    dirty_rows: int = 0,
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
    pipeline_version: str = "",
    traceparent: str = "",
) -> None:
    """The data pipeline. Empty ``events_uri``/``catalog_uri``: synthetic data from the generator settings."""
    run = run_context(
        NAME,
        storage_root=storage_root,
        submitter=submitter,
        git_revision=git_revision,
        traceparent=traceparent,
        pipeline_version=pipeline_version,
    )
    data_steps(
        NAME,
        run,
        events_uri=events_uri,
        catalog_uri=catalog_uri,
        seed=seed,
        users=users,
        tracks=tracks,
        events=events,
        days=days,
        start_date=start_date,
        dirty_rows=dirty_rows,
        as_of=as_of,
        chunk_rows=chunk_rows,
        lookback_days=lookback_days,
        half_life_days=half_life_days,
        feast_project=feast_project,
        online_store=online_store,
        psi_threshold=psi_threshold,
        ks_pvalue_threshold=ks_pvalue_threshold,
    )
