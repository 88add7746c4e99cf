"""The step configuration's stand-in for kfp's ``inspect.stack()`` keeps kfp's behaviour, only faster."""

import inspect

import pytest
from kfp import dsl
from kfp.dsl import pipeline_task

from pipelines.k8s import PipelineRun, StepSpec, _FramesWithoutSource, configure


def _names_from(stack_function) -> list[str]:
    return [row[3] for row in stack_function()]


def test_the_stand_in_lists_the_same_frames_as_inspect_stack():
    def caller():
        return _names_from(inspect.stack), _names_from(_FramesWithoutSource.stack)

    # One helper level deeper for the stand-in's call through _names_from is the same for both.
    real, fast = caller()
    assert fast == real
    assert fast[:3] == ["_names_from", "caller", "test_the_stand_in_lists_the_same_frames_as_inspect_stack"]


@dsl.component
def _noop() -> None:
    pass


@dsl.pipeline
def _inner() -> None:
    _noop()


def test_kfp_still_names_the_setter_when_a_step_has_no_container_and_inspect_is_restored():
    spec = StepSpec(component=_inner, task="audio.collect", name="inner")
    with pytest.raises(ValueError, match=r"^set_cpu_request can only be used on single-step components"):

        @dsl.pipeline
        def _outer(run_context: dict = {}) -> None:  # noqa: B006 (a KFP parameter default)
            configure(_inner(), spec, PipelineRun(pipeline="outer", run_context=run_context))

    assert pipeline_task.inspect is inspect


def test_a_configured_step_gets_its_resources():
    spec = StepSpec(component=_noop, task="audio.collect", name="noop", cpu="250m", memory="512Mi")
    tasks = []

    @dsl.pipeline
    def _outer(run_context: dict = {}) -> None:  # noqa: B006
        tasks.append(configure(_noop(), spec, PipelineRun(pipeline="outer", run_context=run_context)))

    resources = tasks[0].container_spec.resources
    assert (resources.cpu_request, resources.memory_request) == ("250m", "512Mi")
    assert pipeline_task.inspect is inspect
