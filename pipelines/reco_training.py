"""`reco-training`: events -> features -> Feast -> training set -> train (GPU) -> evaluate -> register
-> (blessed) promote champion -> build + check ANN index -> publish; a run summary on exit."""

from kfp import dsl

from pipelines import steps
from pipelines.k8s import GPU_NODE_SELECTOR, GPU_TOLERATION, RUN_CONTEXT_DEFAULT, PipelineRun

NAME = "reco-training"
MODEL_NAME = "reco-two-tower"


@dsl.pipeline(
    name=NAME,
    description="Train the two-tower recommender on Feast features, gate it against popularity and the champion, "
    "register it in MLflow and publish its HNSW index.",
)
def reco_training(
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
    holdout_days: int = 1,
    epochs: int = 4,
    batch_size: int = 1024,
    lr: float = 0.003,
    sparse_lr: float = 0.03,
    train_seed: int = 0,
    embedding_dim: int = 64,
    id_dim: int = 32,
    hidden_dim: int = 128,
    temperature: float = 0.05,
    logq_correction: bool = True,
    train_device: str = "auto",
    average_epochs: int = 3,
    checkpoints_per_epoch: int = 4,
    lr_decay: str = "cosine",
    model_name: str = MODEL_NAME,
    serving_mode: str = "auto",
    min_lift_over_popularity: float = 1.2,
    max_regression_vs_champion: float = 0.02,
    gate_confidence: float = 0.95,
    bootstrap_resamples: int = 2000,
    index_name: str = "reco-tracks",
    index_backend: str = "hnswlib",
    hnsw_m: int = 16,
    hnsw_ef_construction: int = 200,
    recall_floor: float = 0.95,
    target_recall: float = 0.97,
    gpu_node_selector: dict = GPU_NODE_SELECTOR,
    gpu_toleration: dict = GPU_TOLERATION,
) -> None:
    """The recommender's training pipeline (daily recurring run; `make demo` runs it with kfp.local).

    ``events_uri``/``catalog_uri``: Parquet, CSV or JSON Lines (both empty: synthetic data). Genres and
    contexts come from the data (no closed list). ``serving_mode``: ``auto`` (the evaluation picks
    whether ``recommend`` filters played tracks by default), ``all`` or ``discovery``; it is also the
    gate's protocol. The training settings are those of ``model.train``.

    Args:
        run_context: Who and what started the run (storage root override, submitter, git revision,
            pipeline version, traceparent); filled by `python -m pipelines run/upload/schedule`.
        events_uri: Listening events (Parquet, JSONL or CSV; gs:// or under the storage root). Empty:
            synthetic events (demo and tests only).
        catalog_uri: The track catalog (Parquet, JSONL or CSV). Empty: the synthetic catalog.
        synthetic: Generator settings used only when events_uri is empty (seed, users, tracks, events,
            days, start_date, dirty_rows); ignored when events_uri is set.
        as_of: End of the data interval (ISO 8601, UTC). Empty: the run's scheduled or creation time.
        chunk_rows: Rows per ingest chunk (memory bound of the ETL).
        lookback_days: Days of history the user and track features cover.
        half_life_days: Half-life of the recency weighting of plays in the features, in days.
        feast_project: Feast project the features are registered and materialized in.
        online_store: Feast online store: redis (clusters) or sqlite (one machine).
        psi_threshold: Drift alert threshold on the population stability index of any feature.
        ks_pvalue_threshold: Drift alert threshold on the Kolmogorov-Smirnov p-value of any feature.
        holdout_days: Final days of events held out for the evaluation.
        epochs: Training passes over the training rows.
        batch_size: Rows per training batch (the in-batch negatives).
        lr: Learning rate of the dense parameters (Adam).
        sparse_lr: Learning rate of the id embeddings.
        train_seed: Training seed: same seed and data, same weights.
        embedding_dim: Output embedding size (the index's dimension).
        id_dim: Size of the user and track id embeddings.
        hidden_dim: Hidden layer size of each tower.
        temperature: Softmax temperature of the training loss.
        logq_correction: Correct the in-batch negatives for track popularity.
        train_device: Training device: auto (CUDA when available), cpu or cuda.
        average_epochs: Average the weights of the checkpoints of the last this many epochs.
        checkpoints_per_epoch: Checkpoints averaged per epoch.
        lr_decay: Learning-rate schedule: none, linear or cosine.
        model_name: MLflow registered-model name of the recommender.
        serving_mode: auto (the evaluation picks whether served lists drop played tracks), all or
            discovery; also the gate's evaluation protocol.
        min_lift_over_popularity: Blessing rule: the lower bound of model / popularity recall must reach this.
        max_regression_vs_champion: Blessing rule: the lower bound of model / champion must reach 1 minus this.
        gate_confidence: Two-sided coverage of the gate's paired bootstrap intervals.
        bootstrap_resamples: Paired bootstrap resamples of the gate.
        index_name: Name the ANN index is published under.
        index_backend: HNSW implementation of the index.
        hnsw_m: HNSW graph degree.
        hnsw_ef_construction: HNSW build beam width.
        recall_floor: Refuse to publish an index whose recall@10 against exact search is below this.
        target_recall: The query beam (ef_search) is tuned to reach this recall@10.
        gpu_node_selector: Node selector of the GPU step (training).
        gpu_toleration: Toleration of the GPU step (the taint of the GPU node pool).
    """
    run = PipelineRun(NAME, run_context, gpu_node_selector=gpu_node_selector, gpu_toleration=gpu_toleration)
    summary = steps.SUMMARY(run)

    with dsl.ExitHandler(summary, name="reco-training-run"):
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
        tset = steps.TRAINING_SET(
            run,
            events=data.ingest.outputs["good_events"],
            catalog=data.ingest.outputs["catalog_out"],
            user_features=data.features.outputs["user_features"],
            track_features=data.features.outputs["track_features"],
            project=feast_project,
            online_store=online_store,
            holdout_days=holdout_days,
        ).after(data.materialize)
        train = steps.TRAIN(
            run,
            training_set=tset.outputs["training_set"],
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            sparse_lr=sparse_lr,
            seed=train_seed,
            embedding_dim=embedding_dim,
            id_dim=id_dim,
            hidden_dim=hidden_dim,
            temperature=temperature,
            logq_correction=logq_correction,
            device=train_device,
            average_epochs=average_epochs,
            checkpoints_per_epoch=checkpoints_per_epoch,
            lr_decay=lr_decay,
        )
        evaluation = steps.EVALUATE(
            run,
            model=train.outputs["model"],
            training_set=tset.outputs["training_set"],
            model_name=model_name,
            serving_mode=serving_mode,
            min_lift_over_popularity=min_lift_over_popularity,
            max_regression_vs_champion=max_regression_vs_champion,
            confidence=gate_confidence,
            bootstrap_resamples=bootstrap_resamples,
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
            index = steps.BUILD_INDEX(
                run,
                model=train.outputs["model"],
                training_set=tset.outputs["training_set"],
                backend=index_backend,
                m=hnsw_m,
                ef_construction=hnsw_ef_construction,
                k=10,
                recall_floor=recall_floor,
                target_recall=target_recall,
                sample_queries=1000,
            ).after(promoted)
            steps.PUBLISH_INDEX(
                run,
                index=index.outputs["index"],
                name=index_name,
                model_name=model_name,
                model_version=registered.output,
            )
