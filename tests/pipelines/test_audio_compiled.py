"""The compiled `audio-analysis` pipeline: sharded ParallelFor, GPU classification, Kubernetes settings."""

from __future__ import annotations

import pytest
import yaml

from pipelines.cli import compile_pipeline


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    text = compile_pipeline("audio-analysis", tmp_path_factory.mktemp("audio")).read_text()
    spec, platform = list(yaml.safe_load_all(text))
    return spec, platform


def _tasks(spec: dict) -> dict[str, dict]:
    out = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        out.update(comp.get("dag", {}).get("tasks", {}))
    return out


def test_shards_fan_out_with_bounded_parallelism_and_fan_in(docs: tuple[dict, dict]) -> None:
    spec, _ = docs
    tasks = _tasks(spec)
    [loop_name] = [n for n, t in tasks.items() if "iteratorPolicy" in t]
    loop = tasks[loop_name]
    assert loop["iteratorPolicy"]["parallelismLimit"] == 8
    # The loop iterates the listing step's shard indices (a run-time list, not a constant).
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("list-catalog-Output")
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert set(body) == {"analyze-shard"}
    collect = tasks["collect-analysis"]["inputs"]["parameters"]["shard_uris"]
    assert collect["taskOutputParameter"]["producerTask"] == loop_name


def test_classification_requests_a_gpu_and_nothing_else_does(docs: tuple[dict, dict]) -> None:
    spec, platform = docs
    executors = spec["deploymentSpec"]["executors"]
    gpu = sorted(n for n, b in executors.items() if "accelerator" in b["container"]["resources"])
    assert gpu == ["exec-classify-tracks", "exec-train-classifier"]
    for name in gpu:
        c = executors[name]["container"]
        assert c["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert c["resources"]["accelerator"]["resourceCount"] == "1"
        assert c["image"].startswith("europe-docker.pkg.dev/aitasks-prod/aitasks/aitasks-gpu:")
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    placed = sorted(n for n, b in k8s.items() if "nodeSelector" in b or "tolerations" in b)
    assert placed == gpu
    for name in gpu:
        assert k8s[name]["nodeSelector"] == {
            "nodeSelectorJson": {"componentInputParameter": "pipelinechannel--gpu_node_selector"}
        }
        assert k8s[name]["tolerations"] == [
            {"tolerationJson": {"componentInputParameter": "pipelinechannel--gpu_toleration"}}
        ]


def test_every_step_has_resources_labels_and_run_context(docs: tuple[dict, dict]) -> None:
    spec, platform = docs
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 12  # ... and explain-classifier (integrated gradients)
    for name, body in executors.items():
        res = body["container"]["resources"]
        assert res.get("cpuRequest") and res.get("memoryRequest") and res.get("cpuLimit") and res.get("memoryLimit"), (
            name
        )
        assert "pip install" not in " ".join(body["container"].get("command", [])), "images are baked"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(k8s) == set(executors)
    for name, body in k8s.items():
        labels = body["podMetadata"]["labels"]
        assert labels["aitasks.io/pipeline"] == "audio-analysis", name
        assert labels["aitasks.io/task"].startswith(("audio-", "run-")), name
    for name, task in _tasks(spec).items():
        if name.startswith(("exit-handler", "for-loop")):
            continue
        params = task["inputs"]["parameters"]
        assert params["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}", name
        assert params["step"]["runtimeValue"]["constant"] == "{{$.pipeline_task_name}}", name
        assert {"run_context", "pipeline"} <= set(params), name


def test_outside_state_steps_skip_the_cache_and_transient_ones_retry(docs: tuple[dict, dict]) -> None:
    spec, _ = docs
    tasks = _tasks(spec)
    for name in ("list-catalog", "register-classifier", "write-audio-features"):
        assert tasks[name]["cachingOptions"].get("enableCache") is not True, name
    assert tasks["analyze-shard"]["cachingOptions"]["enableCache"] is True
    for name in ("list-catalog", "register-classifier", "write-audio-features", "collect-analysis"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] >= 2, name
    assert tasks["summarize-run"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"


def test_the_confusion_matrix_is_a_classification_metrics_artifact(docs: tuple[dict, dict]) -> None:
    spec, _ = docs
    outputs = spec["components"]["comp-train-classifier"]["outputDefinitions"]["artifacts"]
    assert outputs["confusion"]["artifactType"]["schemaTitle"] == "system.ClassificationMetrics"
    assert (
        spec["components"]["comp-audio-report"]["outputDefinitions"]["artifacts"]["report"]["artifactType"][
            "schemaTitle"
        ]
        == "system.HTML"
    )
