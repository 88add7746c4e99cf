"""KFP components of the data-processing family: source, ingest/validate, features, materialize, drift.

Each body makes one :func:`aitasks.runtime.step.run_step` call: the adapter builds the step's runtime
from the run context inputs, runs the task, exports its files into the typed outputs and logs its
metrics. Nothing else.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from components.images import image_for

IMAGE = image_for("data_processing")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def source_data(
    events_uri: str,
    catalog_uri: str,
    synthetic: dict,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    events_out: Output[Dataset],
    tracks_out: Output[Dataset],
):
    """The run's input snapshot: external events + catalog (URIs), or synthetic data when both are empty."""
    from aitasks.runtime.step import run_step

    run_step(
        "data.source",
        {"events_uri": events_uri, "catalog_uri": catalog_uri, "synthetic": synthetic},
        (run_context, pipeline, run_id, step),
        outputs={"events_uri": events_out, "tracks_uri": tracks_out},
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest_events(
    events: Input[Dataset],
    catalog: Input[Dataset],
    as_of: str,
    data: dict,
    scheduled_time: str,
    run_created_time: str,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    good_events: Output[Dataset],
    quarantine: Output[Dataset],
    catalog_out: Output[Dataset],
    metrics: Output[Metrics],
) -> NamedTuple("IngestOutputs", [("good_rows", int), ("quarantined_rows", int)]):
    """Validate listening events chunk by chunk; good rows, a quarantine file with a reason per row, and
    the validated catalog as Parquet (whatever format it came in)."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "data.ingest",
        {
            "events_uri": events,
            "catalog_uri": catalog,
            "as_of": as_of,
            "scheduled_time": scheduled_time,
            "run_created_time": run_created_time,
        },
        (run_context, pipeline, run_id, step),
        groups={"data": data},
        outputs={"good_uri": good_events, "quarantine_uri": quarantine, "catalog_uri": catalog_out},
        metrics=metrics,
    )
    return res.good_rows, res.quarantined_rows


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def compute_features(
    events: Input[Dataset],
    catalog: Input[Dataset],
    data: dict,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    user_features: Output[Dataset],
    track_features: Output[Dataset],
    vocabulary: Output[Dataset],
    metrics: Output[Metrics],
) -> str:
    """Point-in-time daily user and track feature snapshots and the run's genre/context vocabulary
    (JSON, also in both files' metadata). Returns the last snapshot time (ISO)."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "data.features",
        {"events_uri": events, "catalog_uri": catalog},
        (run_context, pipeline, run_id, step),
        groups={"data": data},
        outputs={
            "user_features_uri": user_features,
            "track_features_uri": track_features,
            "vocabulary_uri": vocabulary,
        },
        metrics=metrics,
    )
    return res.last_snapshot


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def materialize_features(
    user_features: Input[Dataset],
    track_features: Input[Dataset],
    end: str,
    feast: dict,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    metrics: Output[Metrics],
) -> str:
    """Apply the Feast repo and materialize incrementally into the online store. Returns the repo URI."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "feast.materialize",
        {"user_features_uri": user_features, "track_features_uri": track_features, "end": end},
        (run_context, pipeline, run_id, step),
        groups={"feast": feast},
        metrics=metrics,
    )
    return res.repo_uri


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def check_drift(
    features: Input[Dataset],
    split_at: str,
    data: dict,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    report: Output[Markdown],
    metrics: Output[Metrics],
) -> bool:
    """Compare the newest feature snapshot with the training window (PSI and KS per feature)."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "data.drift",
        {"features_uri": features, "split_at": split_at},
        (run_context, pipeline, run_id, step),
        groups={"data": data},
        outputs={"report_markdown_uri": report},
        metrics=metrics,
    )
    return res.any_drift
