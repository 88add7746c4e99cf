"""`reco-training`: events -> features -> Feast -> training set -> train (GPU) -> evaluate -> register
-> (blessed) promote champion -> build + check ANN index -> publish; a run summary on exit."""

from kfp import dsl

from aitasks.run_forms import GROUPS
from pipelines import steps
from pipelines.k8s import GPU_NODE_SELECTOR, GPU_TOLERATION, RUN_CONTEXT_DEFAULT, PipelineRun

NAME = "reco-training"
MODEL_NAME = "reco-two-tower"
#: Defaults of the group parameters: every key shown in the KFP UI form (``aitasks.run_forms``).
DATA_DEFAULT = GROUPS["data"].default()
FEAST_DEFAULT = GROUPS["feast"].default()
TRAINING_DEFAULT = GROUPS["training"].default()
GATE_DEFAULT = GROUPS["gate"].default()
INDEX_DEFAULT = GROUPS["index"].default()


@dsl.pipeline(
    name=NAME,
    description="Train the two-tower recommender on Feast features, gate it against popularity and the champion, "
    "register it in MLflow and publish its HNSW index.",
)
def reco_training(
    run_context: dict = RUN_CONTEXT_DEFAULT,
    events_uri: str = "",
    catalog_uri: str = "",
    as_of: str = "",
    data: dict = DATA_DEFAULT,
    feast: dict = FEAST_DEFAULT,
    training: dict = TRAINING_DEFAULT,
    model_name: str = MODEL_NAME,
    serving_mode: str = "auto",
    gate: dict = GATE_DEFAULT,
    index_name: str = "reco-tracks",
    index: dict = INDEX_DEFAULT,
    gpu_node_selector: dict = GPU_NODE_SELECTOR,
    gpu_toleration: dict = GPU_TOLERATION,
    synthetic: dict = steps.SYNTHETIC_DEFAULT,
) -> None:
    """The recommender's training pipeline (daily recurring run; `make demo` runs it with kfp.local).

    ``events_uri``/``catalog_uri``: Parquet, CSV or JSON Lines (both empty: synthetic data). Genres and
    contexts come from the data (no closed list). ``serving_mode``: ``auto`` (the evaluation picks
    whether ``recommend`` filters played tracks by default), ``all`` or ``discovery``; it is also the
    gate's protocol. The dict parameters group related settings (``aitasks.run_forms``): a key left
    out keeps its default, an unknown key fails the step that reads the group, naming it.

    Args:
        run_context: Who and what started the run (storage root override, submitter, git revision,
            pipeline version, traceparent); filled by `python -m pipelines run/upload/schedule`.
        events_uri: Listening events (Parquet, JSONL or CSV; gs:// or under the storage root). Empty:
            synthetic events (demo and tests only).
        catalog_uri: The track catalog (Parquet, JSONL or CSV). Empty: the synthetic catalog.
        as_of: End of the data interval (ISO 8601, UTC). Empty: the run's scheduled or creation time.
        data: ETL, features and drift check: chunk_rows (rows per ingest chunk), lookback_days (days of
            history the features cover), half_life_days (recency half-life of the features),
            psi_threshold and ks_pvalue_threshold (drift alert thresholds).
        feast: Feast project and online store: project, online_store (redis on clusters, sqlite on one
            machine).
        training: Training of the two-tower model (every setting of model.train): epochs, batch_size (the
            in-batch negatives), lr (dense, Adam), sparse_lr (id embeddings), seed, embedding_dim (the
            index's dimension), id_dim, hidden_dim, temperature, logq_correction, device (auto, cpu,
            cuda), average_epochs, checkpoints_per_epoch, lr_decay (none, linear, cosine), precision (auto,
            fp32, bf16, fp16), workers (DDP processes through torchrun; 1: one process),
            checkpoint_every_steps (resumable checkpoints; 0: per epoch); and holdout_days (final days
            held out for the evaluation).
        model_name: MLflow registered-model name of the recommender.
        serving_mode: auto (the evaluation picks whether served lists drop played tracks), all or
            discovery; also the gate's evaluation protocol.
        gate: Blessing rule: min_lift_over_popularity (lower bound of model / popularity recall must
            reach it), max_regression_vs_champion (lower bound of model / champion must reach 1 minus
            it), confidence (two-sided coverage of the paired bootstrap intervals), bootstrap_resamples.
        index_name: Name the ANN index is published under.
        index: HNSW index: backend (hnswlib, voyager), m (graph degree), ef_construction (build beam),
            recall_floor (no publish below this recall@10 against exact search), target_recall (the
            query beam ef_search is tuned to reach it).
        gpu_node_selector: Node selector of the GPU step (training).
        gpu_toleration: Toleration of the GPU step (the taint of the GPU node pool).
        synthetic: Demo and tests only: generator settings used when events_uri is empty (seed, users,
            tracks, events, days, start_date, dirty_rows); ignored when events_uri is set.
    """
    run = PipelineRun(NAME, run_context, gpu_node_selector=gpu_node_selector, gpu_toleration=gpu_toleration)
    summary = steps.SUMMARY(run)

    with dsl.ExitHandler(summary, name="reco-training-run"):
        prepared = steps.data_steps(
            run,
            events_uri=events_uri,
            catalog_uri=catalog_uri,
            synthetic=synthetic,
            as_of=as_of,
            data=data,
            feast=feast,
        )
        tset = steps.TRAINING_SET(
            run,
            events=prepared.ingest.outputs["good_events"],
            catalog=prepared.ingest.outputs["catalog_out"],
            user_features=prepared.features.outputs["user_features"],
            track_features=prepared.features.outputs["track_features"],
            feast=feast,
            training=training,
        ).after(prepared.materialize)
        train = steps.TRAIN(run, training_set=tset.outputs["training_set"], training=training)
        evaluation = steps.EVALUATE(
            run,
            model=train.outputs["model"],
            training_set=tset.outputs["training_set"],
            model_name=model_name,
            serving_mode=serving_mode,
            gate=gate,
        )
        registered = steps.REGISTER(
            run,
            model=train.outputs["model"],
            evaluation=evaluation.outputs["evaluation"],
            model_name=model_name,
            feature_service="reco_training",
        )

        with dsl.If(evaluation.outputs["Output"] == True, name="blessed"):  # noqa: E712 - a KFP condition
            promoted = steps.PROMOTE(
                run, model_name=model_name, version=registered.output, blessed=evaluation.outputs["Output"]
            )
            built = steps.BUILD_INDEX(
                run,
                model=train.outputs["model"],
                training_set=tset.outputs["training_set"],
                index_settings=index,
                k=10,
                sample_queries=1000,
            ).after(promoted)
            steps.PUBLISH_INDEX(
                run,
                index=built.outputs["index"],
                name=index_name,
                model_name=model_name,
                model_version=registered.output,
            )
