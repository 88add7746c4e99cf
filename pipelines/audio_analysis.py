"""`audio-analysis`: source -> list catalog -> shard -> ParallelFor analyse (decode, features, rules)
-> collect -> outliers + duplicates -> train/register/explain classifier (GPU) -> classify (GPU) -> Feast
``track_audio`` -> HTML report; a run summary on exit."""

from kfp import dsl

from aitasks.run_forms import GROUPS
from pipelines import steps
from pipelines.k8s import GPU_NODE_SELECTOR, GPU_TOLERATION, RUN_CONTEXT_DEFAULT, PipelineRun

NAME = "audio-analysis"
#: At most this many shards are analysed at once (a compile-time constant in KFP v2).
MAX_PARALLEL_SHARDS = 8
#: Defaults of the group parameters: every key shown in the KFP UI form (``aitasks.run_forms``).
ANALYSIS_DEFAULT = GROUPS["analysis"].default()
ANOMALIES_DEFAULT = GROUPS["anomalies"].default()
CLASSIFIER_DEFAULT = GROUPS["classifier"].default()
FEAST_DEFAULT = GROUPS["feast"].default()
#: Defaults of the ``synthetic`` parameter: the generated catalog used when no catalog root is given.
SYNTHETIC_DEFAULT = {
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
    catalog_manifest: str = "",
    labelled_root: str = "",
    as_of: str = "",
    analysis: dict = ANALYSIS_DEFAULT,
    anomalies: dict = ANOMALIES_DEFAULT,
    classifier: dict = CLASSIFIER_DEFAULT,
    feast: dict = FEAST_DEFAULT,
    report_title: str = "Audio analysis",
    gpu_node_selector: dict = GPU_NODE_SELECTOR,
    gpu_toleration: dict = GPU_TOLERATION,
    synthetic: dict = SYNTHETIC_DEFAULT,
) -> None:
    """The catalog's audio analysis (on new uploads or on a schedule; kfp.local runs it in tests).

    The dict parameters group related settings (``aitasks.run_forms``): a key left out keeps its
    default, an unknown key fails the step that reads the group, naming it.

    Args:
        run_context: Who and what started the run (storage root override, submitter, git revision,
            pipeline version, traceparent); filled by `python -m pipelines run/upload/schedule`.
        catalog_root: The audio catalog: a gs:// prefix or a directory. Empty: a generated demo catalog
            (demo and tests only).
        catalog_manifest: Optional list of the files to analyse: plain text (one path per line),
            .csv/.tsv (columns path, optional track_id) or .jsonl. Empty: every audio file under the root.
        labelled_root: Labelled clips for the classifier: labels.csv (path,label) or <label>/<files>.
            Empty: the generated labelled set.
        as_of: Event time of the features written (ISO 8601, UTC). Empty: the run's scheduled or
            creation time.
        analysis: Listing and decoding: shards (split the catalog into at most this many shards,
            analysed in parallel, up to 8 at once), limit (only the first N files by path; 0: all),
            track_ids (ids of files without a manifest track_id: stem or key), sample_rate (Hz every file
            is resampled to), max_channels (files with more are quarantined).
        anomalies: Catalog anomalies: contamination (expected share of feature outliers), duplicate_threshold
            (fingerprint similarity, 0-1, above which two tracks are duplicates).
        classifier: The genre classifier: name (MLflow registered model), backend (torch or keras),
            epochs (maximum; early stopping on validation), clip_seconds (audio crop the model sees), seed
            (splits, initialisation, augmentation), min_accuracy (test accuracy needed to become
            champion), explain_per_class and explain_steps (held-out clips explained per class by
            integrated gradients, and the integral's steps).
        feast: Feast project and online store the track_audio features are written to: project,
            online_store (redis on clusters, sqlite on one machine).
        report_title: Title of the HTML report shown in the run's artifacts.
        gpu_node_selector: Node selector of the GPU steps (classifier training and inference).
        gpu_toleration: Toleration of the GPU steps (the taint of the GPU node pool).
        synthetic: Demo and tests only: the generated catalog used when catalog_root is empty (tracks,
            seed, min_seconds, max_seconds, labelled_per_class); ignored when catalog_root is set.
    """
    run = PipelineRun(NAME, run_context, gpu_node_selector=gpu_node_selector, gpu_toleration=gpu_toleration)
    summary = steps.SUMMARY(run)

    with dsl.ExitHandler(summary, name="audio-analysis-run"):
        source = steps.AUDIO_SOURCE(run, catalog_root=catalog_root, labelled_root=labelled_root, demo=synthetic)
        listed = steps.LIST_CATALOG(
            run, catalog_root=source.outputs["catalog_root"], manifest_uri=catalog_manifest, analysis=analysis
        )
        with dsl.ParallelFor(listed.outputs["Output"], parallelism=MAX_PARALLEL_SHARDS, name="shards") as shard:
            analyzed = steps.ANALYZE_SHARD(
                run,
                listing=listed.outputs["listing"],
                shard_index=shard,
                analysis=analysis,
            )
        collected = steps.COLLECT(run, shard_uris=dsl.Collected(analyzed.output))
        found = steps.ANOMALIES(run, analysis=collected.outputs["analysis"], thresholds=anomalies)
        trained = steps.TRAIN_CLASSIFIER(run, labelled_root=source.outputs["labelled_root"], classifier=classifier)
        registered = steps.REGISTER_CLASSIFIER(run, model=trained.outputs["model"], classifier=classifier)
        steps.EXPLAIN_CLASSIFIER(
            run,
            model=trained.outputs["model"],
            labelled_root=source.outputs["labelled_root"],
            registered_version=registered.output,
            classifier=classifier,
        )
        classified = steps.CLASSIFY(
            run, model=trained.outputs["model"], analysis=collected.outputs["analysis"], batch_size=32
        )
        steps.FEAST_WRITE(
            run,
            analysis=collected.outputs["analysis"],
            anomalies=found.outputs["anomalies"],
            predictions=classified.outputs["predictions"],
            feast=feast,
            as_of=as_of,
        )
        steps.AUDIO_REPORT(
            run,
            analysis=collected.outputs["analysis"],
            anomalies=found.outputs["anomalies"],
            predictions=classified.outputs["predictions"],
            title=report_title,
        )
