"""Compiled pipelines: committed, deterministic, and carrying the Kubernetes settings kfp.local ignores."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.cli import COMPILED, compile_pipeline
from pipelines.registry import pipelines


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("compiled")
    return {name: compile_pipeline(name, out).read_text() for name in pipelines()}


@pytest.mark.parametrize("name", sorted(pipelines()))
def test_committed_yaml_is_current(name: str, fresh: dict[str, str]) -> None:
    committed = COMPILED / f"{name}.yaml"
    assert committed.exists(), f"run `make compile`: {committed} is missing"
    assert committed.read_text() == fresh[name], f"{committed} is stale: run `make compile`"


def test_compile_is_deterministic(tmp_path: Path, fresh: dict[str, str]) -> None:
    for name in pipelines():
        assert compile_pipeline(name, tmp_path).read_text() == fresh[name]


def _docs(text: str) -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all(text))
    return docs[0], docs[1]


def test_data_pipeline_kubernetes_settings(fresh: dict[str, str]) -> None:
    spec, platform = _docs(fresh["data-pipeline"])
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 5
    for name, body in executors.items():
        res = body["container"]["resources"]
        assert res.get("cpuRequest") and res.get("memoryRequest"), f"{name} lacks requests"
        assert res.get("cpuLimit") and res.get("memoryLimit"), f"{name} lacks limits"
        assert body["container"]["image"].startswith("europe-docker.pkg.dev/aitasks-prod/aitasks/aitasks-cpu:")
        assert "pip install" not in " ".join(body["container"].get("command", [])), "images are baked"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, body in k8s.items():
        labels = body["podMetadata"]["labels"]
        assert labels["aitasks.io/pipeline"] == "data-pipeline"
        assert {"aitasks.io/step", "aitasks.io/task", "aitasks.io/task-version"} <= set(labels), name
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["source-data"]["cachingOptions"].get("enableCache") is not True
    assert tasks["materialize-features"]["cachingOptions"].get("enableCache") is not True
    assert tasks["materialize-features"]["retryPolicy"]["maxRetryCount"] == 3
    assert tasks["compute-features"]["cachingOptions"]["enableCache"] is True


def test_run_context_reaches_every_step(fresh: dict[str, str]) -> None:
    spec, _ = _docs(fresh["data-pipeline"])
    for name, task in spec["root"]["dag"]["tasks"].items():
        params = task["inputs"]["parameters"]
        assert params["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}", name
        assert params["step"]["runtimeValue"]["constant"] == "{{$.pipeline_task_name}}", name
        for key in ("submitter", "git_revision", "traceparent", "storage_root"):
            assert params[key]["componentInputParameter"] == key, (name, key)
