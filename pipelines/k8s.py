"""Kubernetes settings applied to pipeline tasks: resources, labels, retries, caching.

kfp.local ignores all of these; tests read them back from the compiled YAML.
"""

from __future__ import annotations

from typing import Any

from kfp import kubernetes
from kfp.dsl import PipelineTask

LABEL_PREFIX = "aitasks.io"


def configure(
    task: PipelineTask,
    *,
    pipeline: str,
    step: str,
    task_name: str,
    task_version: str,
    cpu: str = "500m",
    memory: str = "1Gi",
    cpu_limit: str = "2",
    memory_limit: str = "4Gi",
    retries: int = 0,
    cache: bool = True,
) -> PipelineTask:
    """Requests/limits on every step, pod labels and annotations for kubectl, retries, caching."""
    task.set_display_name(step)
    task.set_cpu_request(cpu).set_cpu_limit(cpu_limit)
    task.set_memory_request(memory).set_memory_limit(memory_limit)
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="600s")
    task.set_caching_options(cache)
    for key, value in (
        ("pipeline", pipeline),
        ("step", step),
        ("task", task_name.replace(".", "-")),
        ("task-version", task_version),
    ):
        kubernetes.add_pod_label(task, f"{LABEL_PREFIX}/{key}", value)
    kubernetes.add_pod_annotation(task, f"{LABEL_PREFIX}/task-name", task_name)
    return task


def request_gpu(
    task: PipelineTask, *, accelerator: Any, count: Any, node_selector: Any, toleration: Any
) -> PipelineTask:
    """Schedule ``task`` on a GPU node: accelerator type and count, node selector and toleration.

    Every argument may be a pipeline parameter, so one compiled pipeline serves clusters with
    different GPU pools (``{"cloud.google.com/gke-accelerator": "nvidia-l4"}`` and the taint of
    that pool, for instance).
    """
    task.set_accelerator_type(accelerator).set_accelerator_limit(count)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, toleration)
    return task
