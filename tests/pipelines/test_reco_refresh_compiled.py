"""reco-refresh compiled: CPU only, sized steps, never cached where state lives outside the inputs, the run's
logical time on the refresh, the champion's version handed from the refresh to the publish."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.cli import compile_pipeline


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    text = compile_pipeline("reco-refresh", tmp_path_factory.mktemp("compiled")).read_text()
    spec, platform = list(yaml.safe_load_all(text))
    return spec, platform


def _tasks(spec: dict) -> dict[str, dict]:
    out = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        out.update(comp.get("dag", {}).get("tasks", {}))
    return out


def test_steps_resources_and_no_gpu(docs: tuple[dict, dict]) -> None:
    spec, platform = docs
    executors = spec["deploymentSpec"]["executors"]
    assert set(executors) == {
        "exec-source-data",
        "exec-ingest-events",
        "exec-compute-features",
        "exec-materialize-features",
        "exec-check-drift",
        "exec-refresh-index",
        "exec-publish-index",
        "exec-summarize-run",
    }
    for name, body in executors.items():
        res = body["container"]["resources"]
        assert res.get("cpuRequest") and res.get("memoryRequest") and res.get("cpuLimit"), name
        assert "accelerator" not in res, f"{name}: the refresh needs no GPU"
        assert body["container"]["image"].startswith("europe-docker.pkg.dev/aitasks-prod/aitasks/aitasks-cpu:")
        assert "pip install" not in " ".join(body["container"].get("command", [])), "images are baked"
    refresh = executors["exec-refresh-index"]["container"]["resources"]
    assert refresh["cpuRequest"] == 2 and refresh["memoryLimit"] == pytest.approx(8.589934592)  # sized for a rebuild
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(k8s) == set(executors)
    assert not [n for n, b in k8s.items() if "nodeSelector" in b or "tolerations" in b], "CPU pool only"
    labels = k8s["exec-refresh-index"]["podMetadata"]["labels"]
    assert labels["aitasks.io/pipeline"] == "reco-refresh" and labels["aitasks.io/task"] == "index-refresh"


def test_caching_retries_logical_time_and_wiring(docs: tuple[dict, dict]) -> None:
    spec, _ = docs
    tasks = _tasks(spec)
    # The refresh reads the champion alias and CURRENT; the publish moves CURRENT: never from the KFP cache.
    for name in ("refresh-index", "publish-index", "materialize-features", "source-data"):
        assert tasks[name]["cachingOptions"].get("enableCache") is not True, name
    assert tasks["publish-index"]["retryPolicy"]["maxRetryCount"] >= 2
    params = tasks["refresh-index"]["inputs"]["parameters"]
    assert params["scheduled_time"]["runtimeValue"]["constant"] == "{{$.pipeline_job_schedule_time_utc}}"
    assert params["run_created_time"]["runtimeValue"]["constant"] == "{{$.pipeline_job_create_time_utc}}"
    # The thresholds travel in the run form's groups (aitasks.run_forms), handed over whole.
    for field in ("refresh", "index_settings", "feast", "as_of"):
        assert "componentInputParameter" in params[field], field
    assert tasks["refresh-index"]["dependentTasks"] == sorted(
        {"ingest-events", "compute-features", "materialize-features"}
    )
    publish = tasks["publish-index"]["inputs"]
    assert publish["parameters"]["model_version"]["taskOutputParameter"] == {
        "outputParameterKey": "model_version",
        "producerTask": "refresh-index",
    }
    assert publish["artifacts"]["index"]["taskOutputArtifact"]["producerTask"] == "refresh-index"


def test_registered_and_every_parameter_described(docs: tuple[dict, dict]) -> None:
    from pipelines.registry import pipelines

    assert "reco-refresh" in pipelines()
    spec, _ = docs
    params = spec["root"]["inputDefinitions"]["parameters"]
    missing = sorted(k for k, v in params.items() if len(v.get("description", "").strip()) < 10)
    assert not missing
    assert params["refresh"]["defaultValue"]["max_deleted_fraction"] == 0.2
    assert params["refresh"]["defaultValue"]["max_recall_drift"] == 0.02


def test_compiling_twice_gives_the_same_yaml(tmp_path: Path, docs: tuple[dict, dict]) -> None:
    a = compile_pipeline("reco-refresh", tmp_path / "a").read_text()
    b = compile_pipeline("reco-refresh", tmp_path / "b").read_text()
    assert a == b
