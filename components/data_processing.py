"""KFP components of the data-processing family: generate, ingest/validate, features, materialize, drift.

Each body: build the step runtime from the run context inputs, make one ``aitasks`` task call,
copy result files to the typed outputs, log metrics. Nothing else.
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
    seed: int,
    users: int,
    tracks: int,
    events: int,
    days: int,
    start_date: str,
    dirty_rows: int,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
    events_out: Output[Dataset],
    tracks_out: Output[Dataset],
):
    """The run's input snapshot: external events + catalog (URIs), or synthetic data when both are empty."""
    from aitasks.data_processing.tasks import source_data_task
    from aitasks.runtime.step import copy_to_output, finish_step, step_runtime

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
    res = source_data_task(
        {
            "events_uri": events_uri or None,
            "catalog_uri": catalog_uri or None,
            "synthetic": {
                "seed": seed,
                "users": users,
                "tracks": tracks,
                "events": events,
                "days": days,
                "start_date": start_date,
                "dirty_rows": dirty_rows,
            },
        },
        runtime=rt,
    )
    copy_to_output(res.events_uri, events_out.path)
    copy_to_output(res.tracks_uri, tracks_out.path)
    events_out.metadata.update({"sha256": res.events_sha256, "synthetic": res.synthetic})
    tracks_out.metadata.update({"sha256": res.tracks_sha256, "synthetic": res.synthetic})
    finish_step(rt, "data-source")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest_events(
    events: Input[Dataset],
    catalog: Input[Dataset],
    as_of: str,
    chunk_rows: int,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
    good_events: Output[Dataset],
    quarantine: Output[Dataset],
    metrics: Output[Metrics],
) -> NamedTuple("IngestOutputs", [("good_rows", int), ("quarantined_rows", int)]):
    """Validate listening events chunk by chunk; good rows and a quarantine file with a reason per row."""
    from collections import namedtuple

    from aitasks.data_processing.tasks import ingest_events_task
    from aitasks.runtime.step import copy_to_output, finish_step, resolve_as_of, step_runtime

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
    res = ingest_events_task(
        {
            "events_uri": events.path,
            "catalog_uri": catalog.path,
            "as_of": resolve_as_of(as_of),
            "chunk_rows": chunk_rows,
        },
        runtime=rt,
    )
    copy_to_output(res.good_uri, good_events.path)
    copy_to_output(res.quarantine_uri, quarantine.path)
    good_events.metadata.update({"rows": res.good_rows})
    quarantine.metadata.update({"rows": res.quarantined_rows, "reasons": res.reasons})
    metrics.log_metric("input_rows", res.input_rows)
    metrics.log_metric("good_rows", res.good_rows)
    metrics.log_metric("quarantined_rows", res.quarantined_rows)
    for reason, n in sorted(res.reasons.items()):
        metrics.log_metric(f"quarantined.{reason}", n)
    finish_step(rt, "data-ingest")
    return namedtuple("IngestOutputs", ["good_rows", "quarantined_rows"])(res.good_rows, res.quarantined_rows)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def compute_features(
    events: Input[Dataset],
    catalog: Input[Dataset],
    lookback_days: int,
    half_life_days: float,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
    user_features: Output[Dataset],
    track_features: Output[Dataset],
    metrics: Output[Metrics],
) -> str:
    """Point-in-time daily user and track feature snapshots. Returns the last snapshot time (ISO)."""
    from aitasks.data_processing.tasks import compute_features_task
    from aitasks.runtime.step import copy_to_output, finish_step, step_runtime

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
    res = compute_features_task(
        {
            "events_uri": events.path,
            "catalog_uri": catalog.path,
            "lookback_days": lookback_days,
            "half_life_days": half_life_days,
        },
        runtime=rt,
    )
    copy_to_output(res.user_features_uri, user_features.path)
    copy_to_output(res.track_features_uri, track_features.path)
    user_features.metadata.update({"rows": res.user_rows, "stable_uri": res.user_features_uri})
    track_features.metadata.update({"rows": res.track_rows, "stable_uri": res.track_features_uri})
    metrics.log_metric("user_feature_rows", res.user_rows)
    metrics.log_metric("track_feature_rows", res.track_rows)
    metrics.log_metric("snapshots", len(res.snapshots))
    finish_step(rt, "data-features")
    return res.snapshots[-1]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def materialize_features(
    user_features: Input[Dataset],
    track_features: Input[Dataset],
    end: str,
    project: str,
    online_store: str,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
    metrics: Output[Metrics],
) -> str:
    """Apply the Feast repo and materialize incrementally into the online store. Returns the repo URI."""
    from aitasks.data_processing.tasks import materialize_features_task
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
    res = materialize_features_task(
        {
            "user_features_uri": user_features.metadata.get("stable_uri", user_features.path),
            "track_features_uri": track_features.metadata.get("stable_uri", track_features.path),
            "end": end,
            "project": project,
            "online_store": online_store,
        },
        runtime=rt,
    )
    metrics.log_metric("feature_views", len(res.feature_views))
    metrics.log_metric("materialized_until_epoch_s", res.materialized_until_epoch_s)
    finish_step(rt, "data-materialize")
    return res.repo_uri


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def check_drift(
    features: Input[Dataset],
    split_at: str,
    warmup_days: int,
    psi_threshold: float,
    ks_pvalue_threshold: float,
    storage_root: str,
    run_id: str,
    pipeline: str,
    step: str,
    submitter: str,
    git_revision: str,
    pipeline_version: str,
    traceparent: str,
    report: Output[Markdown],
    metrics: Output[Metrics],
) -> bool:
    """Compare the newest feature snapshot with the training window (PSI and KS per feature)."""
    from aitasks.data_processing.tasks import drift_check_task
    from aitasks.runtime.step import copy_to_output, finish_step, step_runtime

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
    res = drift_check_task(
        {
            "features_uri": features.metadata.get("stable_uri", features.path),
            "split_at": split_at or None,
            "warmup_days": warmup_days,
            "psi_threshold": psi_threshold,
            "ks_pvalue_threshold": ks_pvalue_threshold,
        },
        runtime=rt,
    )
    copy_to_output(res.report_markdown_uri, report.path)
    metrics.log_metric("drifted_features", len(res.drifted_features))
    metrics.log_metric("max_psi", res.max_psi)
    finish_step(rt, "data-drift")
    return res.any_drift
