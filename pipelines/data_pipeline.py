"""`data-pipeline`: source -> ingest/validate/quarantine -> features -> Feast materialize, drift check."""

from kfp import dsl

from pipelines.k8s import RUN_CONTEXT_DEFAULT, PipelineRun
from pipelines.steps import SYNTHETIC_DEFAULT, data_steps

NAME = "data-pipeline"


@dsl.pipeline(
    name=NAME,
    description="Listening events to validated data, point-in-time features, Feast online store and a drift report.",
)
def data_pipeline(
    run_context: dict = RUN_CONTEXT_DEFAULT,
    events_uri: str = "",
    catalog_uri: str = "",
    synthetic: dict = SYNTHETIC_DEFAULT,
    as_of: str = "",
    chunk_rows: int = 65_536,
    lookback_days: int = 28,
    half_life_days: float = 14.0,
    feast_project: str = "aitasks",
    online_store: str = "sqlite",
    psi_threshold: float = 0.2,
    ks_pvalue_threshold: float = 0.01,
) -> None:
    """The data pipeline. Empty ``events_uri``/``catalog_uri``: synthetic data from the ``synthetic`` settings.

    Args:
        run_context: Who and what started the run (storage root override, submitter, git revision,
            pipeline version, traceparent); filled by `python -m pipelines run/upload/schedule`.
        events_uri: Listening events to ingest (Parquet, JSONL or CSV; gs:// or a path under the
            storage root). Empty: synthetic events (demo and tests only).
        catalog_uri: The track catalog (Parquet, JSONL or CSV). Empty: the synthetic catalog.
        synthetic: Generator settings used only when events_uri is empty (seed, users, tracks,
            events, days, start_date, dirty_rows); ignored when events_uri is set.
        as_of: End of the data interval (ISO 8601, UTC). Empty: the run's scheduled or creation time.
        chunk_rows: Rows per ingest chunk (memory bound of the ETL).
        lookback_days: Days of history the user and track features cover.
        half_life_days: Half-life of the recency weighting of plays in the features, in days.
        feast_project: Feast project the features are registered and materialized in.
        online_store: Feast online store: redis (clusters) or sqlite (one machine).
        psi_threshold: Drift alert threshold on the population stability index of any feature.
        ks_pvalue_threshold: Drift alert threshold on the Kolmogorov-Smirnov p-value of any feature.
    """
    data_steps(
        PipelineRun(NAME, run_context),
        events_uri=events_uri,
        catalog_uri=catalog_uri,
        synthetic=synthetic,
        as_of=as_of,
        chunk_rows=chunk_rows,
        lookback_days=lookback_days,
        half_life_days=half_life_days,
        feast_project=feast_project,
        online_store=online_store,
        psi_threshold=psi_threshold,
        ks_pvalue_threshold=ks_pvalue_threshold,
    )
