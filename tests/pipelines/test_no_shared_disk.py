"""The pipelines as a cluster runs them: kfp.local steps that share no disk, on real services.

kfp.local runs every step in one environment on one disk, so a step that silently falls back to a
local default (a relative storage root, a sqlite MLflow, a file under HOME) passes there and fails
in a pod. Here (see :mod:`pipelines.cluster_demo`):

* the storage root is ``gs://`` on a local GCS emulator (it ignores generation preconditions: race
  semantics stay covered by the in-process fake of ``tests/fakes/gcs.py``);
* the model registry is an MLflow server over HTTP on PostgreSQL, artifacts proxied into the bucket;
* Feast's registry is a SQL registry on PostgreSQL, its online store Redis;
* every step process starts in its own empty working directory with its own HOME and TMPDIR.

reco-training runs twice (the second run must make no new model or index version), then
audio-analysis once. Afterwards nothing may have been written to a local storage root.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from pipelines import cluster_demo as cd
from tests.conftest import skip_or_fail
from tests.fixtures.services import PG_ADMIN
from tests.pipelines.test_audio_analysis_local import SMALL as AUDIO_SMALL

# Full pipeline runs against services: `make test-slow` and CI run them (services required there).
# Three runs happen in the first test's setup (about 7 minutes on a loaded 2-core machine): past the
# suite's 600 s default timeout.
pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(2400)]

REDIS_URL = os.environ.get("AITASKS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RECO = cd.reco_params(events=20_000, users=300, tracks=800, epochs=2)
AUDIO = {k: v for k, v in AUDIO_SMALL.items() if k != "run_context"} | {"as_of": "2026-11-25T00:00:00+00:00"}
#: Answered from their committed results in a second run: the data, Feast and training work. (Tasks
#: keyed by registry state, like the evaluation against the champion that the first run moved, may
#: run again; what they must not do is make a new model or index version.)
NOT_REDONE = {"data.source", "data.ingest", "data.features", "feast.materialize", "reco.training_set", "model.train"}
#: Top-level entries of the work directory: kfp.local's pipeline root, the step sandboxes, the
#: launcher's temp files and the two services' own directories.
WORKDIR_ENTRIES = {"kfp", "steps", "tmp", "gcs-emulator", "mlflow-server", "logs"}  # logs: kfp.local raw output


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cd.LocalCluster]:
    work = tmp_path_factory.mktemp("cluster")
    with contextlib.ExitStack() as stack:
        try:
            found = stack.enter_context(
                cd.local_cluster(work, postgres_url=PG_ADMIN, redis_url=REDIS_URL, console=Console(stderr=True))
            )
        except cd.ServiceStartTimeout as exc:  # started but too slow: a failure naming the slow phase
            pytest.fail(str(exc), pytrace=False)
        except cd.ServiceUnavailable as exc:  # only starting: a failure inside a test stays a failure
            skip_or_fail(str(exc))
        yield found


@pytest.fixture(scope="module")
def runs(cluster: cd.LocalCluster, pytestconfig: pytest.Config) -> dict[str, dict[str, Any]]:
    """reco-training twice, then audio-analysis, one after the other (timings on the terminal)."""
    con = Console(stderr=True)
    out = {
        "reco": cd.run_pipeline(cluster, "reco-training", dict(RECO), con),
        "reco_again": cd.run_pipeline(cluster, "reco-training", dict(RECO), con),
        "audio": cd.run_pipeline(cluster, "audio-analysis", dict(AUDIO), con),
    }
    timings = ", ".join(f"{name} {run['elapsed_s']:.0f} s" for name, run in out.items())
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(
                f"\nno-shared-disk runs: {timings} (MLflow server healthy after {cluster.mlflow_start_s:.0f} s)"
            )
    return out


def statuses(run: dict[str, Any]) -> dict[str, str]:
    return {t: r["status"] for t, r in run["results"].items()}


def local_paths(value: Any) -> list[str]:
    """Every string in a committed result that names a local file (a storage URI must be gs://)."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in local_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in local_paths(v)]
    return [value] if isinstance(value, str) and value.startswith(("/", "file:", ".aitasks")) else []


def test_reco_training_succeeds_with_every_step_on_services(runs: dict[str, dict[str, Any]]) -> None:
    first = runs["reco"]
    assert first["run"]["failed"] == []
    assert set(statuses(first).values()) == {"succeeded"}, statuses(first)
    assert {"feast.materialize", "reco.training_set", "model.register", "model.promote", "index.publish"} <= set(
        statuses(first)
    )
    assert first["audit_ok"], first["audit_problems"]
    assert first["results"]["model.evaluate"]["blessed"] is True


def test_audio_analysis_succeeds_with_every_step_on_services(
    runs: dict[str, dict[str, Any]], cluster: cd.LocalCluster
) -> None:
    from aitasks.audio_analysis.feature_store import offline_uri, read_track_audio, track_audio_config
    from aitasks.runtime.settings import Settings

    audio = runs["audio"]
    assert audio["run"]["failed"] == []
    assert set(statuses(audio).values()) == {"succeeded"}, statuses(audio)
    assert len([t for t in statuses(audio) if t.startswith("audio.")]) >= 9
    settings = Settings(
        storage_root=cluster.storage_root,
        feast_online_store="redis",
        redis_url=cluster.redis_url,
        feast_registry=cluster.feast_registry,
    )
    cfg = track_audio_config(settings, project=cluster.feast_project)
    assert offline_uri(cfg).startswith(cluster.storage_root + "/feast/"), "Feast's offline rows live in the bucket"
    from aitasks.runtime.storage import storage_for

    assert storage_for(offline_uri(cfg)).exists(offline_uri(cfg))
    got = read_track_audio(cfg, ["t_000001"], ["audio_class"])
    assert got["audio_class"][0] in {"drums", "tonal", "noise", "speech"}


def test_every_output_is_in_the_bucket_not_on_a_local_disk(runs: dict[str, dict[str, Any]]) -> None:
    for name, run in runs.items():
        for task, result in run["results"].items():
            assert local_paths(result) == [], f"{name}: {task} returned local paths"
        uris = [v for r in run["results"].values() for k, v in r.items() if k.endswith("_uri") and v]
        assert uris and all(str(u).startswith("gs://") for u in uris), uris


def test_the_model_registry_is_the_mlflow_server(runs: dict[str, dict[str, Any]], cluster: cd.LocalCluster) -> None:
    from pipelines.reco_training import MODEL_NAME

    assert cd.registered_versions(cluster.mlflow_url, MODEL_NAME) == [1]
    assert cd.registered_versions(cluster.mlflow_url, "audio-classifier") == [1]
    from aitasks.runtime.storage import storage_for

    bucket = cluster.storage_root.split("/")[2]
    artifacts = storage_for(cluster.storage_root).list(f"gs://{bucket}/mlflow-artifacts/")
    assert any(a.endswith(".safetensors") for a in artifacts), "model files went through the server into the bucket"


def test_second_reco_run_is_idempotent(runs: dict[str, dict[str, Any]], cluster: cd.LocalCluster) -> None:
    from aitasks.runtime.storage import storage_for

    first, second = runs["reco"]["results"], runs["reco_again"]["results"]
    assert runs["reco_again"]["run"]["failed"] == []
    hits = {t for t, s in statuses(runs["reco_again"]).items() if s == "idempotent_hit"}
    assert hits >= NOT_REDONE, statuses(runs["reco_again"])
    assert second["model.register"]["version"] == first["model.register"]["version"] == 1
    assert first["model.register"]["created"] and not (
        second["model.register"]["created"] and second["model.register"]["status"] == "succeeded"
    ), "no new model version"
    assert second["index.publish"]["version"] == first["index.publish"]["version"] == 1
    assert first["index.publish"]["created"] and not (
        second["index.publish"]["created"] and second["index.publish"]["status"] == "succeeded"
    ), "no new index version"
    index = first["index.publish"]["name"]
    manifests = storage_for(cluster.storage_root).list(f"{cluster.storage_root}/indexes/{index}/")
    versions = {m.split("/v")[-1].split("/")[0] for m in manifests if "/v" in m}
    assert versions == {"1"}, manifests


def test_feast_registry_is_postgres_and_online_store_is_redis(
    runs: dict[str, dict[str, Any]], cluster: cd.LocalCluster
) -> None:
    import psycopg
    import redis

    with psycopg.connect(cluster.feast_registry) as conn:
        views = conn.execute(
            "SELECT feature_view_name FROM feature_views WHERE project_id = %s", (cluster.feast_project,)
        ).fetchall()
    assert {v[0] for v in views} == {"user_features", "track_features", "track_audio"}
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        keys = list(client.scan_iter(match=f"*{cluster.feast_project}", count=1000))
    finally:
        client.close()
    assert len(keys) >= 300, "users, tracks and analysed tracks were materialized into Redis"


def test_no_step_wrote_to_a_local_storage_root(runs: dict[str, dict[str, Any]], cluster: cd.LocalCluster) -> None:
    work = cluster.workdir
    assert {p.name for p in work.iterdir()} <= WORKDIR_ENTRIES
    sandboxes = sorted(cluster.sandboxes.glob("step-*"))
    steps = [json.loads((s / "step.json").read_text()) for s in sandboxes]
    functions = {s["function"] for s in steps}
    assert {"source_data", "materialize_features", "train_model", "publish_index", "write_audio_features"} <= functions
    assert all(s["cwd_before"] != s["work"] for s in steps)
    assert cd.local_storage_roots(cluster) == []
    leftovers = {
        str(p.relative_to(s))
        for s in sandboxes
        for sub in ("work", "home")
        for p in (s / sub).rglob("*")
        if p.is_file()
    }
    # MLflow's client keeps an installation id for its usage telemetry under HOME: per user, not storage.
    assert leftovers <= {"home/.config/mlflow/telemetry.json"}, "a step left files in its working dir or HOME"
    # The launcher's temp files: one directory per step with kfp's ephemeral component module.
    assert {p.name for p in cluster.tmp.rglob("*") if p.is_file()} <= {"ephemeral_component.py"}
