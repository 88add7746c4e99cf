"""`audio-analysis`: source -> list catalog -> shard -> ParallelFor analyse (decode, features, rules)
-> collect -> outliers + duplicates -> train/register classifier (GPU) -> classify (GPU) -> Feast
``track_audio`` -> HTML report; a run summary on exit."""

from kfp import dsl

from components.audio_analysis import (
    analyze_shard,
    audio_report,
    audio_source,
    classify_tracks,
    collect_analysis,
    detect_anomalies,
    list_catalog,
    register_classifier,
    train_classifier,
    write_audio_features,
)
from components.run_ops import summarize_run
from pipelines.k8s import configure, request_gpu
from pipelines.steps import run_context

NAME = "audio-analysis"
#: At most this many shards are analysed at once (a compile-time constant in KFP v2).
MAX_PARALLEL_SHARDS = 8
#: The classification steps' accelerator, fixed at compile time (see pipelines.reco_training).
GPU_ACCELERATOR = "nvidia.com/gpu"
GPU_COUNT = 1


@dsl.pipeline(
    name=NAME,
    description="Decode and check the audio catalog, extract one-STFT features, flag anomalies and duplicates, "
    "classify tracks with a mel-CNN, publish track_audio features to Feast and an HTML report.",
)
def audio_analysis(
    storage_root: str = "",
    catalog_root: str = "",
    labelled_root: str = "",
    catalog_manifest: str = "",
    demo_tracks: int = 48,
    demo_seed: int = 0,
    demo_min_seconds: float = 20.0,
    demo_max_seconds: float = 40.0,
    demo_labelled_per_class: int = 24,
    shards: int = 4,
    limit: int = 0,
    sample_rate: int = 22050,
    max_channels: int = 2,
    contamination: float = 0.02,
    duplicate_threshold: float = 0.8,
    classifier_name: str = "audio-classifier",
    classifier_epochs: int = 30,
    classifier_clip_seconds: float = 4.0,
    classifier_seed: int = 0,
    min_classifier_accuracy: float = 0.6,
    feast_project: str = "aitasks",
    online_store: str = "sqlite",
    as_of: str = "",
    report_title: str = "Audio analysis",
    gpu_node_selector: dict = {"cloud.google.com/gke-accelerator": "nvidia-l4"},  # noqa: B006 - KFP default
    gpu_toleration: dict = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},  # noqa: B006
    submitter: str = "",
    git_revision: str = "",
    pipeline_version: str = "",
    traceparent: str = "",
) -> None:
    """The catalog's audio analysis (on new uploads or on a schedule; kfp.local runs it in tests)."""
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

    with dsl.ExitHandler(summary, name="audio-analysis-run"):
        source = audio_source(
            catalog_root=catalog_root,
            labelled_root=labelled_root,
            tracks=demo_tracks,
            seed=demo_seed,
            min_seconds=demo_min_seconds,
            max_seconds=demo_max_seconds,
            labelled_per_class=demo_labelled_per_class,
            **run,
        )
        configure(source, pipeline=NAME, step="source", task_name="audio.source", task_version="1.0.0", retries=1)

        listed = list_catalog(
            catalog_root=source.outputs["catalog_root"],
            manifest_uri=catalog_manifest,
            shards=shards,
            limit=limit,
            **run,
        )
        # The listing reflects the catalog's current files: never served from the KFP cache.
        configure(
            listed,
            pipeline=NAME,
            step="list-catalog",
            task_name="audio.list_catalog",
            task_version="1.0.0",
            retries=2,
            cache=False,
        )

        with dsl.ParallelFor(listed.outputs["Output"], parallelism=MAX_PARALLEL_SHARDS, name="shards") as shard:
            analyzed = analyze_shard(
                listing=listed.outputs["listing"],
                shard_index=shard,
                sample_rate=sample_rate,
                max_channels=max_channels,
                **run,
            )
            configure(
                analyzed,
                pipeline=NAME,
                step="analyze-shard",
                task_name="audio.analyze",
                task_version="1.0.0",
                cpu="2",
                memory="4Gi",
                cpu_limit="4",
                memory_limit="8Gi",
                retries=1,
            )

        collected = collect_analysis(shard_uris=dsl.Collected(analyzed.output), **run)
        configure(
            collected,
            pipeline=NAME,
            step="collect",
            task_name="audio.collect",
            task_version="1.0.0",
            memory="2Gi",
            retries=2,
        )

        anomalies = detect_anomalies(
            analysis=collected.outputs["analysis"],
            contamination=contamination,
            duplicate_threshold=duplicate_threshold,
            **run,
        )
        configure(
            anomalies,
            pipeline=NAME,
            step="anomalies",
            task_name="audio.anomalies",
            task_version="1.0.0",
            cpu="1",
            memory="2Gi",
        )

        trained = train_classifier(
            labelled_root=source.outputs["labelled_root"],
            epochs=classifier_epochs,
            clip_seconds=classifier_clip_seconds,
            seed=classifier_seed,
            **run,
        )
        configure(
            trained,
            pipeline=NAME,
            step="train-classifier",
            task_name="audio.train_classifier",
            task_version="1.0.0",
            cpu="4",
            memory="8Gi",
            cpu_limit="8",
            memory_limit="16Gi",
            retries=1,
        )
        request_gpu(
            trained,
            accelerator=GPU_ACCELERATOR,
            count=GPU_COUNT,
            node_selector=gpu_node_selector,
            toleration=gpu_toleration,
        )

        registered = register_classifier(
            model=trained.outputs["model"], model_name=classifier_name, min_accuracy=min_classifier_accuracy, **run
        )
        configure(
            registered,
            pipeline=NAME,
            step="register-classifier",
            task_name="audio.register_classifier",
            task_version="1.0.0",
            retries=3,
            cache=False,
        )

        classified = classify_tracks(
            model=trained.outputs["model"], analysis=collected.outputs["analysis"], batch_size=32, **run
        )
        configure(
            classified,
            pipeline=NAME,
            step="classify",
            task_name="audio.classify",
            task_version="1.0.0",
            cpu="2",
            memory="4Gi",
            memory_limit="8Gi",
            retries=1,
        )
        request_gpu(
            classified,
            accelerator=GPU_ACCELERATOR,
            count=GPU_COUNT,
            node_selector=gpu_node_selector,
            toleration=gpu_toleration,
        )

        written = write_audio_features(
            analysis=collected.outputs["analysis"],
            anomalies=anomalies.outputs["anomalies"],
            predictions=classified.outputs["predictions"],
            project=feast_project,
            online_store=online_store,
            as_of=as_of,
            **run,
        )
        # Writes outside state (the Feast registry and online store): never served from the cache.
        configure(
            written,
            pipeline=NAME,
            step="feast-write",
            task_name="audio.feast_write",
            task_version="1.0.0",
            memory="2Gi",
            retries=3,
            cache=False,
        )

        reported = audio_report(
            analysis=collected.outputs["analysis"],
            anomalies=anomalies.outputs["anomalies"],
            predictions=classified.outputs["predictions"],
            title=report_title,
            **run,
        )
        configure(
            reported,
            pipeline=NAME,
            step="report",
            task_name="audio.report",
            task_version="1.0.0",
            memory="2Gi",
        )
