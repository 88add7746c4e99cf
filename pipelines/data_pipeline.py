"""`data-pipeline`: source -> ingest/validate/quarantine -> features -> Feast materialize, drift check."""

from kfp import dsl

from aitasks.run_forms import GROUPS
from pipelines.k8s import RUN_CONTEXT_DEFAULT, PipelineRun
from pipelines.steps import SYNTHETIC_DEFAULT, data_steps

NAME = "data-pipeline"
#: Defaults of the group parameters: every key shown in the KFP UI form (``aitasks.run_forms``).
DATA_DEFAULT = GROUPS["data"].default()
FEAST_DEFAULT = GROUPS["feast"].default()


@dsl.pipeline(
    name=NAME,
    description="Listening events to validated data, point-in-time features, Feast online store and a drift report.",
)
def data_pipeline(
    run_context: dict = RUN_CONTEXT_DEFAULT,
    events_uri: str = "",
    catalog_uri: str = "",
    as_of: str = "",
    data: dict = DATA_DEFAULT,
    feast: dict = FEAST_DEFAULT,
    synthetic: dict = SYNTHETIC_DEFAULT,
) -> None:
    """The data pipeline. Empty ``events_uri``/``catalog_uri``: synthetic data from the ``synthetic`` settings.

    Args:
        run_context: Who and what started the run (storage root override, submitter, git revision,
            pipeline version, traceparent); filled by `python -m pipelines run/upload/schedule`.
        events_uri: Listening events to ingest (Parquet, JSONL or CSV; gs:// or a path under the
            storage root). Empty: synthetic events (demo and tests only).
        catalog_uri: The track catalog (Parquet, JSONL or CSV). Empty: the synthetic catalog.
        as_of: End of the data interval (ISO 8601, UTC). Empty: the run's scheduled or creation time.
        data: ETL, features and drift check: chunk_rows (rows per ingest chunk), lookback_days (days of
            history the features cover), half_life_days (recency half-life of the features),
            psi_threshold and ks_pvalue_threshold (drift alert thresholds). A key left out keeps its default.
        feast: Feast project and online store: project, online_store (redis on clusters, sqlite on one
            machine).
        synthetic: Demo and tests only: generator settings used when events_uri is empty (seed, users,
            tracks, events, days, start_date, dirty_rows); ignored when events_uri is set.
    """
    data_steps(
        PipelineRun(NAME, run_context),
        events_uri=events_uri,
        catalog_uri=catalog_uri,
        synthetic=synthetic,
        as_of=as_of,
        data=data,
        feast=feast,
    )
