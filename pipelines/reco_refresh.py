"""`reco-refresh`: events -> features -> Feast -> (champion) refresh the live ANN index incrementally, or
rebuild it when a threshold says so -> recall check against brute force -> versioned publish; a run
summary on exit."""

from kfp import dsl

from aitasks.run_forms import GROUPS
from pipelines import steps
from pipelines.k8s import RUN_CONTEXT_DEFAULT, PipelineRun

NAME = "reco-refresh"
MODEL_NAME = "reco-two-tower"
#: Defaults of the group parameters: every key shown in the KFP UI form (``aitasks.run_forms``).
DATA_DEFAULT = GROUPS["data"].default()
FEAST_DEFAULT = GROUPS["feast"].default()
INDEX_DEFAULT = GROUPS["index"].default()
REFRESH_DEFAULT = GROUPS["refresh"].default()


@dsl.pipeline(
    name=NAME,
    description="Hourly refresh of the recommender's HNSW index with the champion model: new and changed tracks "
    "added in place, removed ones deleted, a rebuild only past a threshold, recall checked, published atomically.",
)
def reco_refresh(
    run_context: dict = RUN_CONTEXT_DEFAULT,
    events_uri: str = "",
    catalog_uri: str = "",
    as_of: str = "",
    data: dict = DATA_DEFAULT,
    feast: dict = FEAST_DEFAULT,
    model_name: str = MODEL_NAME,
    index_name: str = "reco-tracks",
    index: dict = INDEX_DEFAULT,
    refresh: dict = REFRESH_DEFAULT,
    synthetic: dict = steps.SYNTHETIC_DEFAULT,
) -> None:
    """The recommender's index refresh (hourly recurring run; kfp.local runs it in tests).

    Embeds with the model that holds the `champion` alias; the index it updates is the version CURRENT
    points at. A refresh that changes nothing hands over that version's files: no new version. The dict
    parameters group related settings (``aitasks.run_forms``): a key left out keeps its default.

    Args:
        run_context: Who and what started the run (storage root override, submitter, git revision,
            pipeline version, traceparent); filled by `python -m pipelines run/upload/schedule`.
        events_uri: Listening events (Parquet, JSONL or CSV; gs:// or under the storage root). Empty:
            synthetic events (demo and tests only).
        catalog_uri: The track catalog the index must hold (Parquet, JSONL or CSV); tracks no longer in it
            are deleted from the index. Empty: the synthetic catalog.
        as_of: Logical time of the refresh (ISO 8601, UTC): features valid then, listeners active before.
            Empty: the run's scheduled or creation time.
        data: ETL, features and drift check: chunk_rows (rows per ingest chunk), lookback_days (days of
            history the features cover), half_life_days (recency half-life of the features),
            psi_threshold and ks_pvalue_threshold (drift alert thresholds).
        feast: Feast project and online store: project, online_store (redis on clusters, sqlite on one
            machine).
        model_name: MLflow registered-model name of the recommender (its champion embeds).
        index_name: Name of the published ANN index to refresh.
        index: HNSW index: backend (hnswlib updates in place; voyager always rebuilds), m (graph degree)
            and ef_construction (build beam) of a rebuild (a change forces one), recall_floor (no publish
            below this recall@10 against brute force), target_recall (the query beam ef_search is tuned
            to reach it).
        refresh: When to rebuild instead of updating in place: active_hours (listeners who played in
            this many hours before as_of are the recall check's queries), sample_queries (queries in the
            recall check), max_deleted_fraction (rebuild past this share of deleted rows),
            max_recall_drift (rebuild when recall falls more than this below the last full build's),
            max_changed_fraction (rebuild past this share of new or changed tracks), force_rebuild
            (rebuild whatever the thresholds say; also the way past a damaged current version).
        synthetic: Demo and tests only: generator settings used when events_uri is empty (seed, users,
            tracks, events, days, start_date, dirty_rows); ignored when events_uri is set.
    """
    run = PipelineRun(NAME, run_context)
    summary = steps.SUMMARY(run)

    with dsl.ExitHandler(summary, name="reco-refresh-run"):
        prepared = steps.data_steps(
            run,
            events_uri=events_uri,
            catalog_uri=catalog_uri,
            synthetic=synthetic,
            as_of=as_of,
            data=data,
            feast=feast,
        )
        refreshed = steps.REFRESH_INDEX(
            run,
            events=prepared.ingest.outputs["good_events"],
            catalog=prepared.ingest.outputs["catalog_out"],
            user_features=prepared.features.outputs["user_features"],
            track_features=prepared.features.outputs["track_features"],
            as_of=as_of,
            name=index_name,
            model_name=model_name,
            feast=feast,
            index_settings=index,
            refresh=refresh,
        ).after(prepared.materialize)
        steps.PUBLISH_INDEX(
            run,
            index=refreshed.outputs["index"],
            name=index_name,
            model_name=model_name,
            model_version=refreshed.outputs["model_version"],
        )
