"""KFP components of the audio-analysis family.

Each body makes one :func:`aitasks.runtime.step.run_step` call: the adapter builds the step's runtime
from the run context inputs, runs the task, exports its files into the typed outputs and logs its
metrics. Nothing else.
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
    demo: dict,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
) -> NamedTuple("SourceOutputs", [("catalog_root", str), ("labelled_root", str)]):
    """The catalog root to analyse (and the labelled folder): given, or a generated demo catalog."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "audio.source",
        {"catalog_root": catalog_root, "labelled_root": labelled_root, **demo},
        (run_context, pipeline, run_id, step),
    )
    return res.catalog_root, res.labelled_root


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def list_catalog(
    catalog_root: str,
    manifest_uri: str,
    analysis: dict,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    listing: Output[Dataset],
    metrics: Output[Metrics],
) -> list:
    """List the catalog (unsafe paths refused) and split it into shards. Returns the shard indices."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "audio.list_catalog",
        {"catalog_root": catalog_root, "manifest_uri": manifest_uri},
        (run_context, pipeline, run_id, step),
        groups={"analysis": analysis},
        outputs={"listing_uri": listing},
        metrics=metrics,
    )
    return res.shard_indices


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def analyze_shard(
    listing: Input[Dataset],
    shard_index: int,
    analysis: dict,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
) -> str:
    """Decode, check and analyse one shard (worker processes, per-file timeout). Returns the shard URI."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "audio.analyze",
        {"listing_uri": listing, "shard_index": shard_index},
        (run_context, pipeline, run_id, step),
        groups={"analysis": analysis},
    )
    return res.shard_uri


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def collect_analysis(
    shard_uris: list,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    analysis: Output[Dataset],
    metrics: Output[Metrics],
) -> int:
    """Merge the shard analyses into one catalog analysis. Returns the number of analysed tracks."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "audio.collect",
        {"shard_uris": shard_uris},
        (run_context, pipeline, run_id, step),
        outputs={"analysis_uri": analysis},
        metrics=metrics,
    )
    return res.tracks


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def detect_anomalies(
    analysis: Input[Dataset],
    thresholds: dict,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    anomalies: Output[Dataset],
    metrics: Output[Metrics],
) -> int:
    """Feature outliers (explained) and near-duplicates on top of the rule flags. Returns flagged tracks."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "audio.anomalies",
        {"analysis_uri": analysis},
        (run_context, pipeline, run_id, step),
        groups={"anomalies": thresholds},
        outputs={"anomalies_uri": anomalies},
        metrics=metrics,
    )
    return res.flagged_tracks


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_classifier(
    labelled_root: str,
    classifier: dict,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    model: Output[Model],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
) -> float:
    """Train and test the mel-CNN classifier (torch or keras) on the labelled folder. Returns the test accuracy."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "audio.train_classifier",
        {"labelled_root": labelled_root},
        (run_context, pipeline, run_id, step),
        groups={"classifier": classifier},
        outputs={"model_uri": model},
        metrics=metrics,
        classification=confusion,
    )
    return res.accuracy


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register_classifier(
    model: Input[Model],
    classifier: dict,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
) -> int:
    """Register the classifier in MLflow; champion when accurate enough. Returns the version."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "audio.register_classifier",
        {"model_uri": model},
        (run_context, pipeline, run_id, step),
        groups={"classifier": classifier},
    )
    return res.version


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def explain_classifier(
    model: Input[Model],
    labelled_root: str,
    registered_version: int,
    classifier: dict,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    report: Output[HTML],
    metrics: Output[Metrics],
) -> int:
    """Integrated-gradients heat maps over held-out clips' spectrograms (HTML; MLflow artifact). Returns the count."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "audio.explain_classifier",
        {
            "model_uri": model,
            "labelled_root": labelled_root,
            "registered_version": registered_version,
        },
        (run_context, pipeline, run_id, step),
        groups={"classifier": classifier},
        outputs={"report_uri": report},
        metrics=metrics,
    )
    return res.explained


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def classify_tracks(
    model: Input[Model],
    analysis: Input[Dataset],
    batch_size: int,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    predictions: Output[Dataset],
    metrics: Output[Metrics],
) -> int:
    """Batch inference of the classifier over the analysed tracks. Returns the classified count."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "audio.classify",
        {"model_uri": model, "analysis_uri": analysis, "batch_size": batch_size},
        (run_context, pipeline, run_id, step),
        outputs={"predictions_uri": predictions},
        metrics=metrics,
    )
    return res.tracks


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def write_audio_features(
    analysis: Input[Dataset],
    anomalies: Input[Dataset],
    predictions: Input[Dataset],
    feast: dict,
    as_of: str,
    scheduled_time: str,
    run_created_time: str,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
) -> int:
    """Write the track_audio feature view to Feast (offline rows + online). Returns rows written."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "audio.feast_write",
        {
            "analysis_uri": analysis,
            "anomalies_uri": anomalies,
            "predictions_uri": predictions,
            "as_of": as_of,
            "scheduled_time": scheduled_time,
            "run_created_time": run_created_time,
        },
        (run_context, pipeline, run_id, step),
        groups={"feast": feast},
    )
    return res.rows_written


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def audio_report(
    analysis: Input[Dataset],
    anomalies: Input[Dataset],
    predictions: Input[Dataset],
    title: str,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    report: Output[HTML],
) -> int:
    """The HTML report: counts, quarantine, outliers, duplicates, distributions, spectrograms."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "audio.report",
        {"analysis_uri": analysis, "anomalies_uri": anomalies, "predictions_uri": predictions, "title": title},
        (run_context, pipeline, run_id, step),
        outputs={"report_uri": report},
    )
    return res.flags
