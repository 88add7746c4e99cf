"""Strict inputs meet KFP: ``kfp.local`` hands the numbers inside dict and list parameters over as doubles
(a protobuf ``Struct``): ``{"users": 20}`` arrives as ``{"users": 20.0}``, still a valid integer input.

No ``from __future__ import annotations``: KFP reads the component annotations at definition time.
"""

import os
from pathlib import Path

import pytest
from kfp import dsl, local

REPO = Path(__file__).resolve().parents[2]


@dsl.component(base_image="python:3.11")
def _scale_step(source: str, factor: float, fail_times: int, fatal: bool, storage_root: str) -> float:
    import tests.runtime._tasks  # noqa: F401 - registers test.scale
    from aitasks.runtime.step import run_step

    params = {"source": source, "factor": factor, "fail_times": fail_times, "fatal": fatal}
    return run_step("test.scale", params, ({"storage_root": storage_root}, "strict", "run-strict", "scale")).total


@dsl.component(base_image="python:3.11")
def _nested_step(sizes: dict, counts: list, storage_root: str) -> int:
    import tests.runtime._strict  # noqa: F401 - registers test.nested
    from aitasks.runtime.step import run_step

    params = {"sizes": sizes, "counts": counts}
    return run_step("test.nested", params, ({"storage_root": storage_root}, "strict", "run-strict", "nested")).total


def test_kfp_local_numbers_pass_strict_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "src"), str(REPO)]))
    monkeypatch.setenv("AITASKS_INPUT_ROOTS", str(tmp_path))  # the source file lies beside the store
    source = tmp_path / "numbers.txt"
    source.write_text("1 2 3")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    task = _scale_step(source=str(source), factor=2.0, fail_times=0, fatal=False, storage_root=str(tmp_path / "store"))
    assert task.output == 12.0
    nested = _nested_step(sizes={"users": 20, "ratio": 1, "enabled": True}, counts=[1, 2], storage_root=str(tmp_path))
    assert nested.output == 23
