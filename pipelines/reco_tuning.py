"""`reco-tuning`: events -> features -> Feast -> training set -> suggest (Optuna ask) -> ParallelFor trials
(train + validate with pruning, tell) -> select the best -> train with its settings (GPU) -> evaluate ->
register -> model card + explanations -> (blessed) promote champion; a run summary on exit."""

from kfp import dsl

from aitasks.run_forms import GROUPS
from pipelines import steps
from pipelines.k8s import GPU_NODE_SELECTOR, GPU_TOLERATION, RUN_CONTEXT_DEFAULT, PipelineRun

NAME = "reco-tuning"
MODEL_NAME = "reco-two-tower"
#: Trials trained at once (each is one pod on the GPU pool).
MAX_PARALLEL_TRIALS = 4
#: Held-out listeners the explanation report explains, and recommendations explained per listener.
EXPLAIN_USERS = 5
EXPLAIN_K = 5
#: Defaults of the group parameters: every key shown in the KFP UI form (``aitasks.run_forms``).
DATA_DEFAULT = GROUPS["data"].default()
FEAST_DEFAULT = GROUPS["feast"].default()
TRAINING_DEFAULT = GROUPS["training"].default()
TUNING_DEFAULT = GROUPS["tuning"].default()
GATE_DEFAULT = GROUPS["gate"].default()


@dsl.pipeline(
    name=NAME,
    description="Tune the two-tower recommender with an Optuna study (trials in parallel, pruning), train the best "
    "settings, gate and register the model in MLflow with its model card and explanations.",
)
def reco_tuning(
    run_context: dict = RUN_CONTEXT_DEFAULT,
    events_uri: str = "",
    catalog_uri: str = "",
    as_of: str = "",
    data: dict = DATA_DEFAULT,
    feast: dict = FEAST_DEFAULT,
    training: dict = TRAINING_DEFAULT,
    tuning: dict = TUNING_DEFAULT,
    model_name: str = MODEL_NAME,
    serving_mode: str = "auto",
    gate: dict = GATE_DEFAULT,
    gpu_node_selector: dict = GPU_NODE_SELECTOR,
    gpu_toleration: dict = GPU_TOLERATION,
    synthetic: dict = steps.SYNTHETIC_DEFAULT,
) -> None:
    """Hyperparameter tuning of the recommender (docs/en/tuning.md), then the usual gate and registration.

    The study lives in the tuning storage (``AITASKS_TUNING_STORAGE``, PostgreSQL in a cluster): a run with
    the same study name continues it, and the TPE sampler learns from every earlier trial. The dict
    parameters group related settings (``aitasks.run_forms``): a key left out keeps its default.

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
        training: Training settings of every trial that the search space does not vary, and of the final
            model where the best trial does not set them: epochs, batch_size, lr, sparse_lr, seed (of every
            trial and the final model), embedding_dim, id_dim, hidden_dim, temperature, logq_correction,
            device (auto, cpu, cuda), average_epochs, checkpoints_per_epoch, lr_decay, precision, workers,
            checkpoint_every_steps; and holdout_days (final days held out for the evaluation, never seen
            by tuning).
        tuning: The Optuna study: study_name (empty: derived from the data snapshot and the configuration),
            n_trials (trained in parallel; trial 0 of a new study trains the defaults), seed (of the TPE
            sampler), pruner (median, successive_halving, none), metric (recall_at_10, ndcg_at_10),
            protocol (all, discovery), validation_days (last training days held out for validation),
            search_space ({setting: range}, e.g. {"lr": {"kind": "float", "low": 0.001, "high": 0.03,
            "log": true}}; empty: the default space of docs/en/tuning.md).
        model_name: MLflow registered-model name of the recommender.
        serving_mode: auto (the evaluation picks whether served lists drop played tracks), all or
            discovery; also the gate's evaluation protocol.
        gate: Blessing rule: min_lift_over_popularity, max_regression_vs_champion, confidence,
            bootstrap_resamples (see reco-training).
        gpu_node_selector: Node selector of the GPU steps (trials and the final training).
        gpu_toleration: Toleration of the GPU steps (the taint of the GPU node pool).
        synthetic: Demo and tests only: generator settings used when events_uri is empty (seed, users,
            tracks, events, days, start_date, dirty_rows); ignored when events_uri is set.
    """
    run = PipelineRun(NAME, run_context, gpu_node_selector=gpu_node_selector, gpu_toleration=gpu_toleration)
    summary = steps.SUMMARY(run)

    with dsl.ExitHandler(summary, name="reco-tuning-run"):
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
        suggested = steps.SUGGEST_TRIALS(
            run, training_set=tset.outputs["training_set"], tuning=tuning, training=training, model_name=model_name
        )
        with dsl.ParallelFor(suggested.outputs["Output"], parallelism=MAX_PARALLEL_TRIALS, name="trials") as number:
            trial = steps.RUN_TRIAL(
                run,
                study=suggested.outputs["study"],
                validation_set=suggested.outputs["validation_set"],
                trial_number=number,
                training=training,
            )
        best = steps.SELECT_TRIAL(
            run,
            study=suggested.outputs["study"],
            trial_values=dsl.Collected(trial.outputs["Output"]),
            training=training,
        )
        train = steps.TRAIN(run, training_set=tset.outputs["training_set"], training=best.outputs["Output"])
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
            users=EXPLAIN_USERS,
            k=EXPLAIN_K,
            model_name=model_name,
            version=registered.output,
        )
        with dsl.If(evaluation.outputs["Output"] == True, name="blessed"):  # noqa: E712 - a KFP condition
            steps.PROMOTE(run, model_name=model_name, version=registered.output, blessed=evaluation.outputs["Output"])
