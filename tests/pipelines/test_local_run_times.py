"""kfp.local and the run-time placeholders: resolved as the backend resolves them for a one-off run."""

# No `from __future__ import annotations`: KFP reads the component annotations at definition time.

from datetime import UTC, datetime
from pathlib import Path

from kfp import dsl, local
from kfp.local import placeholder_utils

from pipelines.cli import run_time_placeholders


@dsl.component(base_image="python:3.11")
def _times(scheduled: str, created: str) -> str:
    return f"{scheduled}|{created}"


@dsl.pipeline(name="run-times")
def _run_times() -> str:
    return _times(
        scheduled=dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER, created=dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER
    ).output


def test_schedule_is_empty_and_creation_time_is_the_run_start(tmp_path: Path) -> None:
    original = placeholder_utils.resolve_individual_placeholder
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    with run_time_placeholders(datetime(2026, 12, 1, 3, 0, 7, tzinfo=UTC)):
        out = _run_times()
    assert out.output == "|2026-12-01T03:00:07Z"
    assert placeholder_utils.resolve_individual_placeholder is original, "kfp.local is left as it was"
