"""`reco-training`: events -> features -> Feast -> training set -> train (GPU) -> evaluate -> register
-> (blessed) promote champion -> build + check ANN index -> publish; a run summary on exit."""

from kfp import dsl

from components.model_training import build_training_set, evaluate_model, promote_model, register_model, train_model
from components.recommendation_update import build_index, publish_index
from components.run_ops import summarize_run
from pipelines.k8s import configure, request_gpu
from pipelines.steps import data_steps, run_context

NAME = "reco-training"
MODEL_NAME = "reco-two-tower"
#: The training step's accelerator, fixed at compile time: kfp.local (2.17) cannot resolve a pipeline
#: parameter used as an accelerator inside an ExitHandler/condition DAG. Node selector and toleration
#: stay run-time parameters, so a run still picks its GPU pool.
GPU_ACCELERATOR = "nvidia.com/gpu"
GPU_COUNT = 1


@dsl.pipeline(
    name=NAME,
    description="Train the two-tower recommender on Feast features, gate it against popularity and the champion, "
    "register it in MLflow and publish its HNSW index.",
)
def reco_training(
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
    holdout_days: int = 1,
    epochs: int = 4,
    batch_size: int = 1024,
    lr: float = 0.003,
    sparse_lr: float = 0.03,
    train_seed: int = 0,
    embedding_dim: int = 64,
    temperature: float = 0.05,
    model_name: str = MODEL_NAME,
    exclude_seen: bool = True,
    min_lift_over_popularity: float = 1.2,
    max_regression_vs_champion: float = 0.02,
    index_name: str = "reco-tracks",
    index_backend: str = "hnswlib",
    hnsw_m: int = 16,
    hnsw_ef_construction: int = 200,
    recall_floor: float = 0.95,
    target_recall: float = 0.97,
    gpu_node_selector: dict = {"cloud.google.com/gke-accelerator": "nvidia-l4"},  # noqa: B006 - KFP default
    gpu_toleration: dict = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},  # noqa: B006
    submitter: str = "",
    git_revision: str = "",
    pipeline_version: str = "",
    traceparent: str = "",
) -> None:
    """The recommender's training pipeline (daily recurring run; `make demo` runs it with kfp.local)."""
    run = run_context(
        NAME,
        storage_root=storage_root,
        submitter=submitter,
        git_revision=git_revision,
        traceparent=traceparent,
        pipeline_version=pipeline_version,
    )
    summary = summarize_run(**run)
    configure(summary, pipeline=NAME, step="summary", task_name="run.summary", task_version="1.0.0", cache=False)

    with dsl.ExitHandler(summary, name="reco-training-run"):
        data = data_steps(
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

        tset = build_training_set(
            events=data.ingest.outputs["good_events"],
            catalog=data.source.outputs["tracks_out"],
            user_features=data.features.outputs["user_features"],
            track_features=data.features.outputs["track_features"],
            project=feast_project,
            online_store=online_store,
            holdout_days=holdout_days,
            **run,
        ).after(data.materialize)
        configure(
            tset,
            pipeline=NAME,
            step="training-set",
            task_name="reco.training_set",
            task_version="1.0.0",
            cpu="1",
            memory="4Gi",
            memory_limit="8Gi",
            retries=2,
        )

        train = train_model(
            training_set=tset.outputs["training_set"],
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            sparse_lr=sparse_lr,
            seed=train_seed,
            embedding_dim=embedding_dim,
            temperature=temperature,
            **run,
        )
        configure(
            train,
            pipeline=NAME,
            step="train",
            task_name="model.train",
            task_version="1.0.0",
            cpu="4",
            memory="8Gi",
            cpu_limit="8",
            memory_limit="16Gi",
            retries=1,
        )
        request_gpu(
            train,
            accelerator=GPU_ACCELERATOR,
            count=GPU_COUNT,
            node_selector=gpu_node_selector,
            toleration=gpu_toleration,
        )

        evaluation = evaluate_model(
            model=train.outputs["model"],
            training_set=tset.outputs["training_set"],
            model_name=model_name,
            exclude_seen=exclude_seen,
            min_lift_over_popularity=min_lift_over_popularity,
            max_regression_vs_champion=max_regression_vs_champion,
            **run,
        )
        # Compares with the registry's current champion: state the KFP cache cannot see.
        configure(
            evaluation,
            pipeline=NAME,
            step="evaluate",
            task_name="model.evaluate",
            task_version="1.0.0",
            cpu="1",
            memory="4Gi",
            memory_limit="8Gi",
            retries=2,
            cache=False,
        )

        registered = register_model(
            model=train.outputs["model"],
            evaluation=evaluation.outputs["evaluation"],
            model_name=model_name,
            feature_service="reco_training",
            **run,
        )
        configure(
            registered,
            pipeline=NAME,
            step="register",
            task_name="model.register",
            task_version="1.0.0",
            retries=3,
            cache=False,
        )

        with dsl.If(evaluation.outputs["Output"] == True, name="blessed"):  # noqa: E712 - a KFP condition
            promoted = promote_model(
                model_name=model_name,
                version=registered.output,
                blessed=evaluation.outputs["Output"],
                **run,
            )
            configure(
                promoted,
                pipeline=NAME,
                step="promote",
                task_name="model.promote",
                task_version="1.0.0",
                retries=3,
                cache=False,
            )

            index = build_index(
                model=train.outputs["model"],
                training_set=tset.outputs["training_set"],
                backend=index_backend,
                m=hnsw_m,
                ef_construction=hnsw_ef_construction,
                k=10,
                recall_floor=recall_floor,
                target_recall=target_recall,
                sample_queries=1000,
                **run,
            ).after(promoted)
            configure(
                index,
                pipeline=NAME,
                step="build-index",
                task_name="index.build",
                task_version="1.0.0",
                cpu="2",
                memory="4Gi",
                memory_limit="8Gi",
            )

            published = publish_index(
                index=index.outputs["index"],
                name=index_name,
                model_name=model_name,
                model_version=registered.output,
                **run,
            )
            configure(
                published,
                pipeline=NAME,
                step="publish-index",
                task_name="index.publish",
                task_version="1.0.0",
                retries=3,
                cache=False,
            )
