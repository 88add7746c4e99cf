"""`audio-analysis`: source -> list catalog -> shard -> ParallelFor analyse (decode, features, rules)
-> collect -> outliers + duplicates -> train/register classifier (GPU) -> classify (GPU) -> Feast
``track_audio`` -> HTML report; a run summary on exit."""

from kfp import dsl

from pipelines import steps
from pipelines.k8s import GPU_NODE_SELECTOR, GPU_TOLERATION, RUN_CONTEXT_DEFAULT, PipelineRun

NAME = "audio-analysis"
#: At most this many shards are analysed at once (a compile-time constant in KFP v2).
MAX_PARALLEL_SHARDS = 8
#: Defaults of the ``demo`` parameter: the generated catalog used when no catalog root is given.
DEMO_DEFAULT = {
    "tracks": 48,
    "seed": 0,
    "min_seconds": 20.0,
    "max_seconds": 40.0,
    "labelled_per_class": 24,
}


@dsl.pipeline(
    name=NAME,
    description="Decode and check the audio catalog, extract one-STFT features, flag anomalies and duplicates, "
    "classify tracks with a mel-CNN, publish track_audio features to Feast and an HTML report.",
)
def audio_analysis(
    run_context: dict = RUN_CONTEXT_DEFAULT,
    catalog_root: str = "",
    labelled_root: str = "",
    catalog_manifest: str = "",
    track_ids: str = "stem",
    demo: dict = DEMO_DEFAULT,
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
    gpu_node_selector: dict = GPU_NODE_SELECTOR,
    gpu_toleration: dict = GPU_TOLERATION,
) -> None:
    """The catalog's audio analysis (on new uploads or on a schedule; kfp.local runs it in tests).

    Args:
        run_context: Who and what started the run (storage root override, submitter, git revision,
            pipeline version, traceparent); filled by `python -m pipelines run/upload/schedule`.
        catalog_root: The audio catalog: a gs:// prefix or a directory. Empty: a generated demo catalog.
        labelled_root: Labelled clips for the classifier: labels.csv (path,label) or <label>/<files>.
            Empty: the generated labelled set.
        catalog_manifest: Optional list of the files to analyse: plain text (one path per line),
            .csv/.tsv (columns path, optional track_id) or .jsonl. Empty: every audio file under the root.
        track_ids: Track ids of files without a manifest track_id: stem (the file stem when it is a
            valid id, else a normalised id) or key (always a slug plus a hash of the path).
        demo: Settings of the generated catalog, used only when catalog_root is empty (tracks, seed,
            min_seconds, max_seconds, labelled_per_class).
        shards: Split the catalog into at most this many shards, analysed in parallel (up to 8 at once).
        limit: Analyse only the first N files, by path (0: all).
        sample_rate: Sample rate in Hz every file is resampled to before feature extraction.
        max_channels: Files with more channels are quarantined.
        contamination: Expected share of feature outliers (the anomaly detector's threshold).
        duplicate_threshold: Fingerprint similarity (0-1) above which two tracks are duplicates.
        classifier_name: MLflow registered-model name of the genre classifier.
        classifier_epochs: Maximum training epochs of the classifier (early stopping on validation).
        classifier_clip_seconds: Length in seconds of the audio crop the classifier sees.
        classifier_seed: Seed of the classifier's splits, initialisation and augmentation.
        min_classifier_accuracy: Test accuracy a new classifier needs to become champion.
        feast_project: Feast project the track_audio features are written to.
        online_store: Feast online store: redis (clusters) or sqlite (one machine).
        as_of: Event time of the features written (ISO 8601, UTC). Empty: the run's scheduled or
            creation time.
        report_title: Title of the HTML report shown in the run's artifacts.
        gpu_node_selector: Node selector of the GPU steps (classifier training and inference).
        gpu_toleration: Toleration of the GPU steps (the taint of the GPU node pool).
    """
    run = PipelineRun(NAME, run_context, gpu_node_selector=gpu_node_selector, gpu_toleration=gpu_toleration)
    summary = steps.SUMMARY(run)

    with dsl.ExitHandler(summary, name="audio-analysis-run"):
        source = steps.AUDIO_SOURCE(run, catalog_root=catalog_root, labelled_root=labelled_root, demo=demo)
        listed = steps.LIST_CATALOG(
            run,
            catalog_root=source.outputs["catalog_root"],
            manifest_uri=catalog_manifest,
            shards=shards,
            limit=limit,
            track_ids=track_ids,
        )
        with dsl.ParallelFor(listed.outputs["Output"], parallelism=MAX_PARALLEL_SHARDS, name="shards") as shard:
            analyzed = steps.ANALYZE_SHARD(
                run,
                listing=listed.outputs["listing"],
                shard_index=shard,
                sample_rate=sample_rate,
                max_channels=max_channels,
            )
        collected = steps.COLLECT(run, shard_uris=dsl.Collected(analyzed.output))
        anomalies = steps.ANOMALIES(
            run,
            analysis=collected.outputs["analysis"],
            contamination=contamination,
            duplicate_threshold=duplicate_threshold,
        )
        trained = steps.TRAIN_CLASSIFIER(
            run,
            labelled_root=source.outputs["labelled_root"],
            epochs=classifier_epochs,
            clip_seconds=classifier_clip_seconds,
            seed=classifier_seed,
        )
        steps.REGISTER_CLASSIFIER(
            run, model=trained.outputs["model"], model_name=classifier_name, min_accuracy=min_classifier_accuracy
        )
        classified = steps.CLASSIFY(
            run, model=trained.outputs["model"], analysis=collected.outputs["analysis"], batch_size=32
        )
        steps.FEAST_WRITE(
            run,
            analysis=collected.outputs["analysis"],
            anomalies=anomalies.outputs["anomalies"],
            predictions=classified.outputs["predictions"],
            project=feast_project,
            online_store=online_store,
            as_of=as_of,
        )
        steps.AUDIO_REPORT(
            run,
            analysis=collected.outputs["analysis"],
            anomalies=anomalies.outputs["anomalies"],
            predictions=classified.outputs["predictions"],
            title=report_title,
        )
