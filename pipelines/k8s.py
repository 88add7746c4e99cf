"""Steps declared once: task, display name, resources, retries, caching and GPU, applied at compile time.

A :class:`StepSpec` names a component and the registered task it runs; calling it inside a pipeline
body adds the step with the run context inputs (the ``run_context`` pipeline parameter, the pipeline
name and the two KFP placeholders) and applies every Kubernetes setting. The task version on the pod
labels is read from the task registry, never typed twice. kfp.local ignores all of these settings;
tests read them back from the compiled YAML.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kfp import dsl, kubernetes
from kfp.dsl import PipelineTask
from kfp.dsl import pipeline_task as _kfp_pipeline_task

from aitasks.runtime.settings import STEP_SECRET_ENV, Settings
from aitasks.runtime.step import RUN_CONTEXT_KEYS

LABEL_PREFIX = "aitasks.io"
#: The accelerator of GPU steps, fixed at compile time: kfp.local (2.17) cannot resolve a pipeline
#: parameter used as an accelerator inside an ExitHandler/condition DAG. Node selector and toleration
#: stay run-time parameters, so a run still picks its GPU pool.
GPU_ACCELERATOR = "nvidia.com/gpu"
GPU_COUNT = 1
#: Defaults of the GPU pool parameters every pipeline with GPU steps exposes.
GPU_NODE_SELECTOR = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


#: The ConfigMap every step pod reads its non-secret settings from (in the namespace where runs execute).
SETTINGS_CONFIG_MAP = "aitasks-settings"
#: The Secret every step pod reads its secret settings from: Secret key -> environment variable.
STEP_SECRETS = "aitasks-step-secrets"
SECRET_ENV: dict[str, str] = dict(STEP_SECRET_ENV)


def settings_env() -> dict[str, str]:
    """ConfigMap key -> environment variable for every non-secret setting (``AITASKS_<FIELD>``)."""
    secret = set(SECRET_ENV.values())
    names = (f"AITASKS_{name.upper()}" for name in Settings.model_fields)
    return {n: n for n in sorted(names) if n not in secret}


#: The ``run_context`` pipeline parameter's default: every key, empty (the KFP UI form shows them all).
RUN_CONTEXT_DEFAULT: dict[str, str] = dict.fromkeys(RUN_CONTEXT_KEYS, "")


@dataclass(frozen=True)
class PipelineRun:
    """What every step of one pipeline shares at compile time: its name, the run context, the GPU pool."""

    pipeline: str
    run_context: Any
    gpu_node_selector: Any = None
    gpu_toleration: Any = None


@dataclass(frozen=True)
class StepSpec:
    """One pipeline step, declared once.

    Attributes:
        component: The ``@dsl.component`` that runs the step.
        task: The registered task the component calls (its version labels the pod).
        name: Display name in the KFP UI and the ``aitasks.io/step`` pod label.
        cache: False for steps whose result depends on state the KFP cache cannot see (an external
            store, a registry alias, a URI whose content may change under the same name).
        gpu: Schedule on the GPU pool (accelerator, node selector, toleration).
        logical_time: The step's task takes an ``as_of`` logical time: it also receives the run's
            scheduled and creation times (KFP placeholders, whole string inputs), so an empty ``as_of``
            resolves to the same time in every retry of the run.
    """

    component: Any
    task: str
    name: str
    cpu: str = "500m"
    memory: str = "1Gi"
    cpu_limit: str = "2"
    memory_limit: str = "4Gi"
    retries: int = 0
    cache: bool = True
    gpu: bool = False
    logical_time: bool = False

    def __call__(self, run: PipelineRun, **inputs: Any) -> PipelineTask:
        """Add this step to the pipeline being defined, with ``inputs`` plus the run context."""
        if self.logical_time:
            inputs = {
                **inputs,
                "scheduled_time": dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER,
                "run_created_time": dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER,
            }
        task = self.component(
            **inputs,
            run_context=run.run_context,
            pipeline=run.pipeline,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            step=dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
        )
        return configure(task, self, run)

    @property
    def task_version(self) -> str:
        """The task's version, from the task registry."""
        from aitasks.runtime.task import get_task

        return get_task(self.task).version


class _FramesWithoutSource:
    """What ``kfp.dsl.pipeline_task`` sees as ``inspect`` while a step is configured.

    kfp 2.17's ``PipelineTask._ensure_container_spec_exists`` (called by every ``set_cpu_*``,
    ``set_memory_*`` and ``set_accelerator_*``) runs ``inspect.stack()`` only to name its caller in an
    error message. ``inspect.stack()`` looks up the source file and module of every frame on the stack,
    which scans ``sys.modules`` for frames without a file: 90 % of the time it takes to define the
    platform's pipelines in a plain process (2.1 of 2.3 s), and ~20 s in a test process that has torch
    and TensorFlow loaded. This returns the same rows (frame, file, line, function) without the source
    lookup, so kfp's message still names the method.
    """

    @staticmethod
    def stack(context: int = 1) -> list[inspect.FrameInfo]:
        rows = []
        frame = sys._getframe(1)
        while frame is not None:
            code = frame.f_code
            rows.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name, None, None))
            frame = frame.f_back
        return rows


@contextlib.contextmanager
def _kfp_frames_without_source() -> Iterator[None]:
    """Swap :class:`_FramesWithoutSource` in for kfp's ``inspect`` while setters run (compile is single-threaded)."""
    if getattr(_kfp_pipeline_task, "inspect", None) is not inspect:  # a kfp that no longer does this
        yield
        return
    _kfp_pipeline_task.inspect = _FramesWithoutSource  # type: ignore[assignment]
    try:
        yield
    finally:
        _kfp_pipeline_task.inspect = inspect


def configure(task: PipelineTask, spec: StepSpec, run: PipelineRun) -> PipelineTask:
    """Requests/limits, pod labels and annotations for kubectl, settings env, retries, caching, GPU: from ``spec``."""
    with _kfp_frames_without_source():
        return _configure(task, spec, run)


def _configure(task: PipelineTask, spec: StepSpec, run: PipelineRun) -> PipelineTask:
    task.set_display_name(spec.name)
    task.set_cpu_request(spec.cpu).set_cpu_limit(spec.cpu_limit)
    task.set_memory_request(spec.memory).set_memory_limit(spec.memory_limit)
    if spec.retries:
        task.set_retry(
            num_retries=spec.retries, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="600s"
        )
    task.set_caching_options(spec.cache)
    for key, value in (
        ("pipeline", run.pipeline),
        ("step", spec.name),
        ("task", spec.task.replace(".", "-")),
        ("task-version", spec.task_version),
    ):
        kubernetes.add_pod_label(task, f"{LABEL_PREFIX}/{key}", value)
    kubernetes.add_pod_annotation(task, f"{LABEL_PREFIX}/task-name", spec.task)
    # Settings reach every pod from the step declaration. Optional refs: a key the ConfigMap lacks stays
    # unset (the embedded default), which a production deployment (AITASKS_ENV=production) refuses.
    kubernetes.use_config_map_as_env(task, SETTINGS_CONFIG_MAP, settings_env(), optional=True)
    kubernetes.use_secret_as_env(task, STEP_SECRETS, SECRET_ENV, optional=True)
    if spec.gpu:
        if run.gpu_node_selector is None or run.gpu_toleration is None:
            raise ValueError(f"step {spec.name!r} needs a GPU: give the pipeline's GPU node selector and toleration")
        request_gpu(task, node_selector=run.gpu_node_selector, toleration=run.gpu_toleration)
    return task


def request_gpu(task: PipelineTask, *, node_selector: Any, toleration: Any) -> PipelineTask:
    """Schedule ``task`` on a GPU node: accelerator type and count, node selector and toleration.

    Node selector and toleration may be pipeline parameters, so one compiled pipeline serves clusters
    with different GPU pools (``{"cloud.google.com/gke-accelerator": "nvidia-l4"}`` and the taint of
    that pool, for instance).
    """
    task.set_accelerator_type(GPU_ACCELERATOR).set_accelerator_limit(GPU_COUNT)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, toleration)
    return task
