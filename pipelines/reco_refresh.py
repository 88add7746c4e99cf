"""`reco-refresh`: events -> features -> Feast -> (champion) refresh the live ANN index incrementally, or
rebuild it when a threshold says so -> recall check against brute force -> versioned publish; a run
summary on exit."""

from kfp import dsl

from pipelines import steps
from pipelines.k8s import RUN_CONTEXT_DEFAULT, PipelineRun

NAME = "reco-refresh"
MODEL_NAME = "reco-two-tower"


@dsl.pipeline(
    name=NAME,
    description="Hourly refresh of the recommender's HNSW index with the champion model: new and changed tracks "
    "added in place, removed ones deleted, a rebuild only past a threshold, recall checked, published atomically.",
)
def reco_refresh(
    run_context: dict = RUN_CONTEXT_DEFAULT,
    events_uri: str = "",
    catalog_uri: str = "",
    synthetic: dict = steps.SYNTHETIC_DEFAULT,
    as_of: str = "",
    chunk_rows: int = 65_536,
    lookback_days: int = 28,
    half_life_days: float = 14.0,
    feast_project: str = "aitasks",
    online_store: str = "sqlite",
    psi_threshold: float = 0.2,
    ks_pvalue_threshold: float = 0.01,
    model_name: str = MODEL_NAME,
    index_name: str = "reco-tracks",
    active_hours: int = 24,
    index_backend: str = "hnswlib",
    hnsw_m: int = 16,
    hnsw_ef_construction: int = 200,
    recall_floor: float = 0.95,
    target_recall: float = 0.97,
    recall_sample_queries: int = 1000,
    max_deleted_fraction: float = 0.2,
    max_recall_drift: float = 0.02,
    max_changed_fraction: float = 0.5,
    force_rebuild: bool = False,
) -> None:
    """The recommender's index refresh (hourly recurring run; kfp.local runs it in tests).

    Embeds with the model that holds the `champion` alias; the index it updates is the version CURRENT
    points at. A refresh that changes nothing hands over that version's files: no new version.

    Args:
        run_context: Who and what started the run (storage root override, submitter, git revision,
            pipeline version, traceparent); filled by `python -m pipelines run/upload/schedule`.
        events_uri: Listening events (Parquet, JSONL or CSV; gs:// or under the storage root). Empty:
            synthetic events (demo and tests only).
        catalog_uri: The track catalog the index must hold (Parquet, JSONL or CSV); tracks no longer in it
            are deleted from the index. Empty: the synthetic catalog.
        synthetic: Generator settings used only when events_uri is empty (seed, users, tracks, events,
            days, start_date, dirty_rows); ignored when events_uri is set.
        as_of: Logical time of the refresh (ISO 8601, UTC): features valid then, listeners active before.
            Empty: the run's scheduled or creation time.
        chunk_rows: Rows per ingest chunk (memory bound of the ETL).
        lookback_days: Days of history the user and track features cover.
        half_life_days: Half-life of the recency weighting of plays in the features, in days.
        feast_project: Feast project the features are registered and materialized in.
        online_store: Feast online store: redis (clusters) or sqlite (one machine).
        psi_threshold: Drift alert threshold on the population stability index of any feature.
        ks_pvalue_threshold: Drift alert threshold on the Kolmogorov-Smirnov p-value of any feature.
        model_name: MLflow registered-model name of the recommender (its champion embeds).
        index_name: Name of the published ANN index to refresh.
        active_hours: Listeners who played in this many hours before as_of are the recall check's queries.
        index_backend: HNSW implementation used when the index is rebuilt (hnswlib updates in place;
            voyager always rebuilds).
        hnsw_m: HNSW graph degree of a rebuild (a change forces one).
        hnsw_ef_construction: HNSW build beam width of a rebuild (a change forces one).
        recall_floor: Refuse to publish an index whose recall@10 against brute force is below this.
        target_recall: The query beam (ef_search) is tuned to reach this recall@10.
        recall_sample_queries: Listener queries in the recall check against brute force.
        max_deleted_fraction: Rebuild when more than this share of the index's stored rows would be
            deleted tracks (0-1).
        max_recall_drift: Rebuild when recall@10 after the update falls more than this below the recall
            of the last full build (0-1).
        max_changed_fraction: Rebuild when more than this share of the catalog is new or changed (0-1):
            updating most of a graph in place costs more than building it.
        force_rebuild: Rebuild from the whole catalog whatever the thresholds say (also the way past a
            damaged current version).
    """
    run = PipelineRun(NAME, run_context)
    summary = steps.SUMMARY(run)

    with dsl.ExitHandler(summary, name="reco-refresh-run"):
        data = steps.data_steps(
            run,
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
        refreshed = steps.REFRESH_INDEX(
            run,
            events=data.ingest.outputs["good_events"],
            catalog=data.ingest.outputs["catalog_out"],
            user_features=data.features.outputs["user_features"],
            track_features=data.features.outputs["track_features"],
            as_of=as_of,
            name=index_name,
            model_name=model_name,
            project=feast_project,
            online_store=online_store,
            active_hours=active_hours,
            backend=index_backend,
            m=hnsw_m,
            ef_construction=hnsw_ef_construction,
            recall_floor=recall_floor,
            target_recall=target_recall,
            sample_queries=recall_sample_queries,
            max_deleted_fraction=max_deleted_fraction,
            max_recall_drift=max_recall_drift,
            max_changed_fraction=max_changed_fraction,
            force_rebuild=force_rebuild,
        ).after(data.materialize)
        steps.PUBLISH_INDEX(
            run,
            index=refreshed.outputs["index"],
            name=index_name,
            model_name=model_name,
            model_version=refreshed.outputs["model_version"],
        )
