"""KFP components of the audio-analysis family.

Each body: build the step runtime from the run context inputs, make one ``aitasks`` task call,
copy result files to the typed outputs, log metrics. Nothing else.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.images import image_for

IMAGE = image_for("audio_analysis")
GPU_IMAGE = image_for("audio_classification")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def audio_source(
    catalog_root: str,
    labelled_root: str,
    tracks: int,
    seed: int,
    min_seconds: float,
    max_seconds: float,
    labelled_per_class: int,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
) -> NamedTuple("SourceOutputs", [("catalog_root", str), ("labelled_root", str)]):
    """The catalog root to analyse (and the labelled folder): given, or a generated demo catalog."""
    from collections import namedtuple

    from aitasks.audio_analysis.tasks import source_task
    from aitasks.runtime.step import finish_step, step_runtime

    rt = step_runtime(
        storage_root=storage_root,
        run_id=run_id,
        pipeline=pipeline,
        step=step,
        submitter=submitter,
        git_revision=git_revision,
        pipeline_version=pipeline_version,
        traceparent=traceparent,
    )
    res = source_task(
        {
            "catalog_root": catalog_root,
            "labelled_root": labelled_root,
            "tracks": tracks,
            "seed": seed,
            "min_seconds": min_seconds,
            "max_seconds": max_seconds,
            "labelled_per_class": labelled_per_class,
        },
        runtime=rt,
    )
    finish_step(rt, "audio-source")
    return namedtuple("SourceOutputs", ["catalog_root", "labelled_root"])(res.catalog_root, res.labelled_root)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def list_catalog(
    catalog_root: str,
    manifest_uri: str,
    shards: int,
    limit: int,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
    listing: Output[Dataset],
    metrics: Output[Metrics],
) -> list:
    """List the catalog (unsafe paths refused) and split it into shards. Returns the shard indices."""
    from aitasks.audio_analysis.tasks import list_catalog_task
    from aitasks.runtime.step import export_output, finish_step, step_runtime

    rt = step_runtime(
        storage_root=storage_root,
        run_id=run_id,
        pipeline=pipeline,
        step=step,
        submitter=submitter,
        git_revision=git_revision,
        pipeline_version=pipeline_version,
        traceparent=traceparent,
    )
    res = list_catalog_task(
        {"catalog_root": catalog_root, "manifest_uri": manifest_uri, "shards": shards, "limit": limit}, runtime=rt
    )
    export_output(res.listing_uri, listing, tracks=res.tracks)
    metrics.log_metric("tracks", res.tracks)
    metrics.log_metric("refused", res.refused)
    metrics.log_metric("skipped_non_audio", res.skipped_non_audio)
    finish_step(rt, "audio-list")
    return res.shard_indices


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def analyze_shard(
    listing: Input[Dataset],
    shard_index: int,
    sample_rate: int,
    max_channels: int,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
) -> str:
    """Decode, check and analyse one shard (worker processes, per-file timeout). Returns the shard URI."""
    from aitasks.audio_analysis.tasks import analyze_audio_task
    from aitasks.runtime.step import finish_step, input_uri, step_runtime

    rt = step_runtime(
        storage_root=storage_root,
        run_id=run_id,
        pipeline=pipeline,
        step=step,
        submitter=submitter,
        git_revision=git_revision,
        pipeline_version=pipeline_version,
        traceparent=traceparent,
    )
    res = analyze_audio_task(
        {
            "listing_uri": input_uri(listing),
            "shard_index": int(shard_index),
            "sample_rate": sample_rate,
            "max_channels": max_channels,
        },
        runtime=rt,
    )
    finish_step(rt, "audio-analyze")
    return res.shard_uri


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def collect_analysis(
    shard_uris: list,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
    analysis: Output[Dataset],
    metrics: Output[Metrics],
) -> int:
    """Merge the shard analyses into one catalog analysis. Returns the number of analysed tracks."""
    from aitasks.audio_analysis.tasks import collect_task
    from aitasks.runtime.step import export_output, finish_step, step_runtime

    rt = step_runtime(
        storage_root=storage_root,
        run_id=run_id,
        pipeline=pipeline,
        step=step,
        submitter=submitter,
        git_revision=git_revision,
        pipeline_version=pipeline_version,
        traceparent=traceparent,
    )
    res = collect_task({"shard_uris": [str(u) for u in shard_uris]}, runtime=rt)
    export_output(res.analysis_uri, analysis, bundle=True, tracks=res.tracks)
    metrics.log_metric("tracks", res.tracks)
    metrics.log_metric("quarantined", res.quarantined)
    metrics.log_metric("flags", res.flags)
    finish_step(rt, "audio-collect")
    return res.tracks


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def detect_anomalies(
    analysis: Input[Dataset],
    contamination: float,
    duplicate_threshold: float,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
    anomalies: Output[Dataset],
    metrics: Output[Metrics],
) -> int:
    """Feature outliers (explained) and near-duplicates on top of the rule flags. Returns flagged tracks."""
    from aitasks.audio_analysis.tasks import anomalies_task
    from aitasks.runtime.step import export_output, finish_step, input_uri, step_runtime

    rt = step_runtime(
        storage_root=storage_root,
        run_id=run_id,
        pipeline=pipeline,
        step=step,
        submitter=submitter,
        git_revision=git_revision,
        pipeline_version=pipeline_version,
        traceparent=traceparent,
    )
    res = anomalies_task(
        {
            "analysis_uri": input_uri(analysis, bundle=True),
            "contamination": contamination,
            "duplicate_threshold": duplicate_threshold,
        },
        runtime=rt,
    )
    export_output(res.anomalies_uri, anomalies, bundle=True)
    metrics.log_metric("flagged_tracks", res.flagged_tracks)
    metrics.log_metric("outliers", res.outliers)
    metrics.log_metric("duplicate_pairs", res.duplicate_pairs)
    for code, n in res.flags_by_code.items():
        metrics.log_metric(f"flags_{code}", n)
    finish_step(rt, "audio-anomalies")
    return res.flagged_tracks


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_classifier(
    labelled_root: str,
    epochs: int,
    clip_seconds: float,
    seed: int,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
    model: Output[Model],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
) -> float:
    """Train and test the mel-CNN classifier on the labelled folder. Returns the test accuracy."""
    from aitasks.audio_analysis.tasks import train_classifier_task
    from aitasks.runtime.step import export_output, finish_step, step_runtime

    rt = step_runtime(
        storage_root=storage_root,
        run_id=run_id,
        pipeline=pipeline,
        step=step,
        submitter=submitter,
        git_revision=git_revision,
        pipeline_version=pipeline_version,
        traceparent=traceparent,
    )
    res = train_classifier_task(
        {"labelled_root": labelled_root, "epochs": epochs, "clip_seconds": clip_seconds, "seed": seed}, runtime=rt
    )
    export_output(res.model_uri, model, bundle=True, accuracy=res.accuracy)
    metrics.log_metric("accuracy", res.accuracy)
    metrics.log_metric("macro_f1", res.macro_f1)
    metrics.log_metric("chance", res.chance)
    for label, f1 in res.per_class_f1.items():
        metrics.log_metric(f"f1_{label}", f1)
    confusion.log_confusion_matrix(res.labels, res.confusion)
    finish_step(rt, "audio-train-classifier")
    return res.accuracy


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register_classifier(
    model: Input[Model],
    model_name: str,
    min_accuracy: float,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
) -> int:
    """Register the classifier in MLflow; champion when accurate enough. Returns the version."""
    from aitasks.audio_analysis.tasks import register_classifier_task
    from aitasks.runtime.step import finish_step, input_uri, step_runtime

    rt = step_runtime(
        storage_root=storage_root,
        run_id=run_id,
        pipeline=pipeline,
        step=step,
        submitter=submitter,
        git_revision=git_revision,
        pipeline_version=pipeline_version,
        traceparent=traceparent,
    )
    res = register_classifier_task(
        {"model_uri": input_uri(model, bundle=True), "model_name": model_name, "min_accuracy": min_accuracy},
        runtime=rt,
    )
    finish_step(rt, "audio-register-classifier")
    return res.version


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def classify_tracks(
    model: Input[Model],
    analysis: Input[Dataset],
    batch_size: int,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
    predictions: Output[Dataset],
    metrics: Output[Metrics],
) -> int:
    """Batch inference of the classifier over the analysed tracks. Returns the classified count."""
    from aitasks.audio_analysis.tasks import classify_task
    from aitasks.runtime.step import export_output, finish_step, input_uri, step_runtime

    rt = step_runtime(
        storage_root=storage_root,
        run_id=run_id,
        pipeline=pipeline,
        step=step,
        submitter=submitter,
        git_revision=git_revision,
        pipeline_version=pipeline_version,
        traceparent=traceparent,
    )
    res = classify_task(
        {
            "model_uri": input_uri(model, bundle=True),
            "analysis_uri": input_uri(analysis, bundle=True),
            "batch_size": batch_size,
        },
        runtime=rt,
    )
    export_output(res.predictions_uri, predictions, tracks=res.tracks)
    metrics.log_metric("tracks", res.tracks)
    metrics.log_metric("failed", res.failed)
    for label, n in res.class_counts.items():
        metrics.log_metric(f"class_{label}", n)
    finish_step(rt, "audio-classify")
    return res.tracks


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def write_audio_features(
    analysis: Input[Dataset],
    anomalies: Input[Dataset],
    predictions: Input[Dataset],
    project: str,
    online_store: str,
    as_of: str,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
) -> int:
    """Write the track_audio feature view to Feast (offline rows + online). Returns rows written."""
    from aitasks.audio_analysis.tasks import feast_write_task
    from aitasks.runtime.step import finish_step, input_uri, resolve_as_of, step_runtime

    rt = step_runtime(
        storage_root=storage_root,
        run_id=run_id,
        pipeline=pipeline,
        step=step,
        submitter=submitter,
        git_revision=git_revision,
        pipeline_version=pipeline_version,
        traceparent=traceparent,
    )
    res = feast_write_task(
        {
            "analysis_uri": input_uri(analysis, bundle=True),
            "anomalies_uri": input_uri(anomalies, bundle=True),
            "predictions_uri": input_uri(predictions),
            "project": project,
            "online_store": online_store,
            "as_of": resolve_as_of(as_of),
        },
        runtime=rt,
    )
    finish_step(rt, "audio-feast-write")
    return res.rows_written


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def audio_report(
    analysis: Input[Dataset],
    anomalies: Input[Dataset],
    predictions: Input[Dataset],
    title: str,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
    report: Output[HTML],
) -> int:
    """The HTML report: counts, quarantine, outliers, duplicates, distributions, spectrograms."""
    from aitasks.audio_analysis.tasks import report_task
    from aitasks.runtime.step import export_output, finish_step, input_uri, step_runtime

    rt = step_runtime(
        storage_root=storage_root,
        run_id=run_id,
        pipeline=pipeline,
        step=step,
        submitter=submitter,
        git_revision=git_revision,
        pipeline_version=pipeline_version,
        traceparent=traceparent,
    )
    res = report_task(
        {
            "analysis_uri": input_uri(analysis, bundle=True),
            "anomalies_uri": input_uri(anomalies, bundle=True),
            "predictions_uri": input_uri(predictions),
            "title": title,
        },
        runtime=rt,
    )
    export_output(res.report_uri, report)
    finish_step(rt, "audio-report")
    return res.flags
