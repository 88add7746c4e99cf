"""Every pipeline step, declared once (component, task, display name, resources, retries, caching, GPU).

Pipelines add a step by calling its spec with the run and the step's own inputs:
``ingest = INGEST(run, events=..., catalog=..., as_of=as_of, chunk_rows=chunk_rows)``. Step groups
shared by pipelines are plain functions here: kfp.local cannot pass artifacts into nested pipelines,
and the compiled YAML is the same flat DAG either way.
"""

from typing import Any, NamedTuple

from components.audio_analysis import (
    analyze_shard,
    audio_report,
    audio_source,
    classify_tracks,
    collect_analysis,
    detect_anomalies,
    explain_classifier,
    list_catalog,
    register_classifier,
    train_classifier,
    write_audio_features,
)
from components.data_processing import check_drift, compute_features, ingest_events, materialize_features, source_data
from components.model_training import (
    build_training_set,
    evaluate_model,
    promote_model,
    register_model,
    train_model,
    train_model_pytorchjob,
)
from components.recommendation_update import build_index, publish_index, refresh_index
from components.run_ops import summarize_run
from pipelines.k8s import PipelineRun, StepSpec

# Run --------------------------------------------------------------------------------------------
# The exit handler reads the audit trail of this run: never served from cache.
SUMMARY = StepSpec(summarize_run, "run.summary", "summary", cache=False)

# Data processing ----------------------------------------------------------------------------------
# The source step reads URIs whose content may change under the same name: never served from cache
# (the task's own idempotency key covers content hashes).
SOURCE = StepSpec(source_data, "data.source", "source", retries=2, cache=False)
INGEST = StepSpec(
    ingest_events, "data.ingest", "ingest", memory="2Gi", memory_limit="4Gi", retries=2, logical_time=True
)
FEATURES = StepSpec(compute_features, "data.features", "features", cpu="1", memory="4Gi", memory_limit="8Gi")
# Materializing writes to an external online store: state the cache cannot see.
MATERIALIZE = StepSpec(materialize_features, "feast.materialize", "materialize", retries=3, cache=False)
DRIFT = StepSpec(check_drift, "data.drift", "drift")

# Model training -----------------------------------------------------------------------------------
TRAINING_SET = StepSpec(
    build_training_set, "reco.training_set", "training-set", cpu="1", memory="4Gi", memory_limit="8Gi", retries=2
)
TRAIN = StepSpec(
    train_model, "model.train", "train", cpu="4", memory="8Gi", cpu_limit="8", memory_limit="16Gi", retries=1, gpu=True
)
# Launches a Kubeflow PyTorchJob and waits: the launcher pod needs no GPU (the job's replicas request them) and
# its service account needs the pytorchjobs Role rule (manifests/runs/base/serviceaccount.yaml).
TRAIN_PYTORCHJOB = StepSpec(train_model_pytorchjob, "model.train_pytorchjob", "train-pytorchjob", retries=1)
# Compares with the registry's current champion: state the KFP cache cannot see.
EVALUATE = StepSpec(
    evaluate_model,
    "model.evaluate",
    "evaluate",
    cpu="1",
    memory="4Gi",
    memory_limit="8Gi",
    retries=2,
    cache=False,
)
REGISTER = StepSpec(register_model, "model.register", "register", retries=3, cache=False)
PROMOTE = StepSpec(promote_model, "model.promote", "promote", retries=3, cache=False)

# Recommendation update ----------------------------------------------------------------------------
BUILD_INDEX = StepSpec(build_index, "index.build", "build-index", cpu="2", memory="4Gi", memory_limit="8Gi")
PUBLISH_INDEX = StepSpec(publish_index, "index.publish", "publish-index", retries=3, cache=False)
# Reads the champion alias and the live index's CURRENT pointer: state the KFP cache cannot see (the
# task's own key covers both). Sized like a build: a refresh may have to rebuild.
REFRESH_INDEX = StepSpec(
    refresh_index,
    "index.refresh",
    "refresh-index",
    cpu="2",
    memory="4Gi",
    memory_limit="8Gi",
    retries=1,
    cache=False,
    logical_time=True,
)

# Audio analysis -----------------------------------------------------------------------------------
AUDIO_SOURCE = StepSpec(audio_source, "audio.source", "source", retries=1)
# A catalog listing changes under the same root: never served from cache.
LIST_CATALOG = StepSpec(list_catalog, "audio.list_catalog", "list-catalog", retries=2, cache=False)
ANALYZE_SHARD = StepSpec(
    analyze_shard,
    "audio.analyze",
    "analyze-shard",
    cpu="2",
    memory="4Gi",
    cpu_limit="4",
    memory_limit="8Gi",
    retries=1,
)
COLLECT = StepSpec(collect_analysis, "audio.collect", "collect", memory="2Gi", retries=2)
ANOMALIES = StepSpec(detect_anomalies, "audio.anomalies", "anomalies", cpu="1", memory="2Gi")
TRAIN_CLASSIFIER = StepSpec(
    train_classifier,
    "audio.train_classifier",
    "train-classifier",
    cpu="4",
    memory="8Gi",
    cpu_limit="8",
    memory_limit="16Gi",
    retries=1,
    gpu=True,
)
REGISTER_CLASSIFIER = StepSpec(
    register_classifier, "audio.register_classifier", "register-classifier", retries=3, cache=False
)
# Writes into the registered version's MLflow run: state the KFP cache cannot see.
EXPLAIN_CLASSIFIER = StepSpec(
    explain_classifier,
    "audio.explain_classifier",
    "explain-classifier",
    cpu="2",
    memory="4Gi",
    memory_limit="8Gi",
    retries=1,
    cache=False,
)
CLASSIFY = StepSpec(
    classify_tracks, "audio.classify", "classify", cpu="2", memory="4Gi", memory_limit="8Gi", retries=1, gpu=True
)
# Writes to the Feast stores: state the cache cannot see.
FEAST_WRITE = StepSpec(
    write_audio_features, "audio.feast_write", "feast-write", memory="2Gi", retries=3, cache=False, logical_time=True
)
AUDIO_REPORT = StepSpec(audio_report, "audio.report", "report", memory="2Gi")

#: Every declared step (tests check each against its component and the task registry).
ALL_STEPS: tuple[StepSpec, ...] = tuple(v for v in list(globals().values()) if isinstance(v, StepSpec))


#: Defaults of the ``synthetic`` parameter: the generated data used when no events/catalog URIs are given.
SYNTHETIC_DEFAULT = {
    "seed": 7,
    "users": 2_000,
    "tracks": 5_000,
    "events": 200_000,
    "days": 30,
    "start_date": "2026-10-01",
    "dirty_rows": 0,
}


class DataSteps(NamedTuple):
    source: Any
    ingest: Any
    features: Any
    materialize: Any
    drift: Any


def data_steps(
    run: PipelineRun,
    *,
    events_uri: Any,
    catalog_uri: Any,
    synthetic: Any,
    as_of: Any,
    data: Any,
    feast: Any,
) -> DataSteps:
    """source -> ingest/validate/quarantine -> features -> Feast materialize, and the drift check.

    ``data`` and ``feast`` are the run form's groups of the same names (``aitasks.run_forms``).
    """
    src = SOURCE(run, events_uri=events_uri, catalog_uri=catalog_uri, synthetic=synthetic)
    ingest = INGEST(
        run,
        events=src.outputs["events_out"],
        catalog=src.outputs["tracks_out"],
        as_of=as_of,
        data=data,
    )
    feats = FEATURES(
        run,
        events=ingest.outputs["good_events"],
        # The validated catalog, normalised to Parquet by ingest (the source may be CSV or JSON Lines).
        catalog=ingest.outputs["catalog_out"],
        data=data,
    )
    mat = MATERIALIZE(
        run,
        user_features=feats.outputs["user_features"],
        track_features=feats.outputs["track_features"],
        end=feats.outputs["Output"],
        feast=feast,
    )
    drift = DRIFT(
        run,
        features=feats.outputs["user_features"],
        split_at="",
        data=data,
    )
    return DataSteps(src, ingest, feats, mat, drift)


# Content generation -------------------------------------------------------------------------------
# (Appended after ALL_STEPS: added to it below.)
from components.content_generation import (  # noqa: E402
    check_content,
    content_report,
    generate_content,
    publish_content,
    validate_prompts,
)

# The prompt file may change under the same URI: never served from the KFP cache (the task's own key
# covers its content hash).
VALIDATE_PROMPTS = StepSpec(validate_prompts, "content.validate_prompts", "validate-prompts", retries=1, cache=False)
# The model directories may change under the same URIs: never served from the KFP cache (the task's key
# holds the models' fingerprints, so a rerun with unchanged models is still an idempotent hit).
GENERATE_CONTENT = StepSpec(
    generate_content,
    "content.generate",
    "generate",
    cpu="4",
    memory="16Gi",
    cpu_limit="8",
    memory_limit="32Gi",
    retries=1,
    cache=False,
    gpu=True,
)
CHECK_CONTENT = StepSpec(check_content, "content.check", "check", cpu="1", memory="2Gi", retries=1)
# Writes the published release and moves LATEST.json: state the cache cannot see.
PUBLISH_CONTENT = StepSpec(publish_content, "content.publish", "publish", retries=3, cache=False)
CONTENT_REPORT = StepSpec(content_report, "content.report", "report", memory="2Gi")
ALL_STEPS = (*ALL_STEPS, VALIDATE_PROMPTS, GENERATE_CONTENT, CHECK_CONTENT, PUBLISH_CONTENT, CONTENT_REPORT)

# Tuning and model documentation -------------------------------------------------------------------
# (Appended after ALL_STEPS: added to it below.)
from components.model_tuning import explain_model, model_card, run_trial, select_trial, suggest_trials  # noqa: E402

# Asks the Optuna study for new trials (state in the tuning storage the KFP cache cannot see).
SUGGEST_TRIALS = StepSpec(
    suggest_trials, "tune.suggest", "suggest", memory="2Gi", memory_limit="4Gi", retries=2, cache=False
)
# Trains like model.train (GPU pool) and tells the study: never served from cache (a cached step would not tell).
RUN_TRIAL = StepSpec(
    run_trial,
    "tune.trial",
    "trial",
    cpu="2",
    memory="4Gi",
    cpu_limit="4",
    memory_limit="8Gi",
    retries=1,
    cache=False,
    gpu=True,
)
# Reads the study's finished trials and ends its MLflow run.
SELECT_TRIAL = StepSpec(select_trial, "tune.select", "select", retries=2, cache=False)
# Writes to the registry (artifacts and tags of the version).
MODEL_CARD = StepSpec(model_card, "model.card", "model-card", retries=3, cache=False)
EXPLAIN = StepSpec(
    explain_model, "model.explain", "explain", cpu="1", memory="2Gi", memory_limit="4Gi", retries=1, cache=False
)
ALL_STEPS = (*ALL_STEPS, SUGGEST_TRIALS, RUN_TRIAL, SELECT_TRIAL, MODEL_CARD, EXPLAIN)
