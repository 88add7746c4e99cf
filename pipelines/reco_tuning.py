"""`reco-tuning`: events -> features -> Feast -> training set -> suggest (Optuna ask) -> ParallelFor trials
(train + validate with pruning, tell) -> select the best -> train with its settings (GPU) -> evaluate ->
register -> model card + explanations -> (blessed) promote champion; a run summary on exit."""

from kfp import dsl

from pipelines import steps
from pipelines.k8s import GPU_NODE_SELECTOR, GPU_TOLERATION, RUN_CONTEXT_DEFAULT, PipelineRun

NAME = "reco-tuning"
MODEL_NAME = "reco-two-tower"
#: Trials trained at once (each is one pod on the GPU pool).
MAX_PARALLEL_TRIALS = 4


@dsl.pipeline(
    name=NAME,
    description="Tune the two-tower recommender with an Optuna study (trials in parallel, pruning), train the best "
    "settings, gate and register the model in MLflow with its model card and explanations.",
)
def reco_tuning(
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
    study_name: str = "",
    n_trials: int = 8,
    tuning_seed: int = 0,
    train_seed: int = 0,
    pruner: str = "median",
    tuning_metric: str = "recall_at_10",
    tuning_protocol: str = "all",
    validation_days: int = 1,
    search_space: dict = {},  # noqa: B006 - a KFP parameter default, never mutated
    base_settings: dict = {},  # noqa: B006 - a KFP parameter default, never mutated
    train_device: str = "auto",
    model_name: str = MODEL_NAME,
    serving_mode: str = "auto",
    min_lift_over_popularity: float = 1.2,
    max_regression_vs_champion: float = 0.02,
    gate_confidence: float = 0.95,
    bootstrap_resamples: int = 2000,
    explain_users: int = 5,
    explain_k: int = 5,
    gpu_node_selector: dict = GPU_NODE_SELECTOR,
    gpu_toleration: dict = GPU_TOLERATION,
) -> None:
    """Hyperparameter tuning of the recommender (docs/en/tuning.md), then the usual gate and registration.

    The study lives in the tuning storage (``AITASKS_TUNING_STORAGE``, PostgreSQL in a cluster): a run with
    the same study name continues it, and the TPE sampler learns from every earlier trial.

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
        holdout_days: Final days of events held out for the evaluation (never seen by tuning).
        study_name: Optuna study name; empty: derived from the data snapshot and the study configuration.
        n_trials: Trials of this run, trained in parallel (trial 0 of a new study: the default settings).
        tuning_seed: Seed of the TPE sampler: same seed and data, same proposals.
        train_seed: Training seed of every trial and of the final model.
        pruner: Trial pruner: median, successive_halving or none.
        tuning_metric: Validation metric maximised: recall_at_10 or ndcg_at_10.
        tuning_protocol: Validation protocol: all (every next play) or discovery (unplayed tracks only).
        validation_days: Last days of the training window held out as the tuning validation split.
        search_space: {setting: range} of the study, e.g. {"lr": {"kind": "float", "low": 0.001, "high": 0.03,
            "log": true}}; empty: the default space (docs/en/tuning.md).
        base_settings: Training settings of every trial that the space does not vary, e.g. {"batch_size": 512}.
        train_device: Training device of the trials and the final model: auto (CUDA when available), cpu or cuda.
        model_name: MLflow registered-model name of the recommender.
        serving_mode: auto (the evaluation picks whether served lists drop played tracks), all or
            discovery; also the gate's evaluation protocol.
        min_lift_over_popularity: Blessing rule: the lower bound of model / popularity recall must reach this.
        max_regression_vs_champion: Blessing rule: the lower bound of model / champion must reach 1 minus this.
        gate_confidence: Two-sided coverage of the gate's paired bootstrap intervals.
        bootstrap_resamples: Paired bootstrap resamples of the gate.
        explain_users: Held-out listeners whose recommendations the explanation report explains.
        explain_k: Recommendations explained per listener.
        gpu_node_selector: Node selector of the GPU steps (trials and the final training).
        gpu_toleration: Toleration of the GPU steps (the taint of the GPU node pool).
    """
    run = PipelineRun(NAME, run_context, gpu_node_selector=gpu_node_selector, gpu_toleration=gpu_toleration)
    summary = steps.SUMMARY(run)

    with dsl.ExitHandler(summary, name="reco-tuning-run"):
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
        suggested = steps.SUGGEST_TRIALS(
            run,
            training_set=tset.outputs["training_set"],
            study_name=study_name,
            n_trials=n_trials,
            seed=tuning_seed,
            train_seed=train_seed,
            pruner=pruner,
            metric=tuning_metric,
            protocol=tuning_protocol,
            validation_days=validation_days,
            search_space=search_space,
            base=base_settings,
            model_name=model_name,
        )
        with dsl.ParallelFor(suggested.outputs["Output"], parallelism=MAX_PARALLEL_TRIALS, name="trials") as number:
            trial = steps.RUN_TRIAL(
                run,
                study=suggested.outputs["study"],
                validation_set=suggested.outputs["validation_set"],
                trial_number=number,
                device=train_device,
            )
        best = steps.SELECT_TRIAL(
            run, study=suggested.outputs["study"], trial_values=dsl.Collected(trial.outputs["Output"])
        )
        train = steps.TRAIN(
            run,
            training_set=tset.outputs["training_set"],
            epochs=best.outputs["epochs"],
            batch_size=best.outputs["batch_size"],
            lr=best.outputs["lr"],
            sparse_lr=best.outputs["sparse_lr"],
            seed=train_seed,
            embedding_dim=best.outputs["embedding_dim"],
            id_dim=best.outputs["id_dim"],
            hidden_dim=best.outputs["hidden_dim"],
            temperature=best.outputs["temperature"],
            logq_correction=best.outputs["logq_correction"],
            device=train_device,
            average_epochs=best.outputs["average_epochs"],
            checkpoints_per_epoch=best.outputs["checkpoints_per_epoch"],
            lr_decay=best.outputs["lr_decay"],
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
        steps.MODEL_CARD(
            run,
            model=train.outputs["model"],
            evaluation=evaluation.outputs["evaluation"],
            training_set=tset.outputs["training_set"],
            model_name=model_name,
            version=registered.output,
        )
        steps.EXPLAIN(
            run,
            model=train.outputs["model"],
            training_set=tset.outputs["training_set"],
            users=explain_users,
            k=explain_k,
            model_name=model_name,
            version=registered.output,
        )
        with dsl.If(evaluation.outputs["Output"] == True, name="blessed"):  # noqa: E712 - a KFP condition
            steps.PROMOTE(run, model_name=model_name, version=registered.output, blessed=evaluation.outputs["Output"])
