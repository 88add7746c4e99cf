"""The compiled content-generation pipeline: GPU only where it generates, bounded fan-out, caching, docs."""

from __future__ import annotations

import pytest
import yaml


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    from pipelines.cli import compile_pipeline

    text = compile_pipeline("content-generation", tmp_path_factory.mktemp("compiled")).read_text()
    docs = list(yaml.safe_load_all(text))
    return docs[0], docs[1]


def _tasks(spec: dict) -> dict[str, dict]:
    out = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        out.update(comp.get("dag", {}).get("tasks", {}))
    return out


def test_only_generation_asks_for_a_gpu_on_the_gpu_pool(compiled: tuple[dict, dict]) -> None:
    spec, platform = compiled
    executors = spec["deploymentSpec"]["executors"]
    gpu = [n for n, b in executors.items() if "accelerator" in b["container"]["resources"]]
    assert gpu == ["exec-generate-content"]
    assert executors["exec-generate-content"]["container"]["image"].split(":")[0].endswith("/aitasks-gpu")
    assert all(
        b["container"]["image"].split(":")[0].endswith("/aitasks-cpu") for n, b in executors.items() if n not in gpu
    )
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert [n for n, b in k8s.items() if "nodeSelector" in b or "tolerations" in b] == ["exec-generate-content"]
    assert k8s["exec-generate-content"]["podMetadata"]["labels"]["aitasks.io/task"] == "content-generate"


def test_fan_out_is_bounded_and_stateful_steps_skip_the_cache(compiled: tuple[dict, dict]) -> None:
    spec, _ = compiled
    loops = [c for c in spec["components"].values() if "iteratorPolicy" in str(c)]
    assert loops, "the generation runs in a ParallelFor"
    tasks = _tasks(spec)
    assert tasks["for-loop-2"]["iteratorPolicy"]["parallelismLimit"] == 4
    for name in ("validate-prompts", "generate-content", "publish-content"):
        assert tasks[name]["cachingOptions"].get("enableCache") is not True, name
    assert tasks["check-content"]["cachingOptions"]["enableCache"] is True
    assert tasks["summarize-run"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"


def test_every_pipeline_parameter_is_documented(compiled: tuple[dict, dict]) -> None:
    spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert "defaultValue" not in params["prompts_uri"], "the prompt file is required"
    missing = [n for n, p in params.items() if not p.get("description")]
    assert missing == []
