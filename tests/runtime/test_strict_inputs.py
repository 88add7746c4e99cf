"""Strict task inputs (issue 14, finding 8): JSON types are taken as they are, every problem names its field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aitasks.runtime.errors import InvalidInputError
from aitasks.runtime.inputs import OversizedInt, loads_json
from tests.conftest import CapturedRuntime
from tests.runtime import _tasks
from tests.runtime._tasks import scale_task


def _source(tmp_path: Path) -> str:
    p = tmp_path / "numbers.txt"
    p.write_text("1 2 3")
    return str(p)


@pytest.mark.parametrize(
    ("extra", "fields"),
    [
        ({"fail_times": "5"}, ["fail_times"]),
        ({"fail_times": True}, ["fail_times"]),
        ({"factor": "2"}, ["factor"]),
        ({"factor": True}, ["factor"]),
        ({"fatal": 1}, ["fatal"]),
        ({"fatal": "true"}, ["fatal"]),
        ({"label": 5}, ["label"]),
        ({"fail_times": "5", "factor": -1.0}, ["fail_times", "factor"]),
    ],
)
def test_coerced_scalars_are_refused_naming_the_field(
    captured: CapturedRuntime, tmp_path: Path, extra: dict, fields: list[str]
) -> None:
    params = {"source": _source(tmp_path), "factor": 1.0, **extra}
    with pytest.raises(InvalidInputError) as ei:
        scale_task(params, runtime=captured.rt)
    assert sorted(ei.value.fields) == sorted(fields)
    assert _tasks.CALLS == {}, "the body never ran"


def test_json_numbers_are_numbers(captured: CapturedRuntime, tmp_path: Path) -> None:
    """KFP hands every number over as a double: 2.0 is the integer 2, 1 is the float 1.0."""
    r = scale_task({"source": _source(tmp_path), "factor": 1, "fail_times": 0.0}, runtime=captured.rt)
    assert r.total == 6.0


def test_huge_integers_name_their_field(captured: CapturedRuntime, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError) as ei:
        scale_task({"source": _source(tmp_path), "factor": 1.0, "fail_times": 10**5000}, runtime=captured.rt)
    assert ei.value.fields == ("fail_times",) and "out of range" in str(ei.value)
    payload = loads_json('{"source": "x", "factor": 1, "fail_times": ' + "9" * 5000 + "}")
    assert isinstance(payload["fail_times"], OversizedInt)
    with pytest.raises(InvalidInputError) as ei:
        scale_task(payload, runtime=captured.rt)
    assert ei.value.fields == ("fail_times",) and "5000 digits" in str(ei.value)
    assert json.loads('{"a": 5}') == loads_json('{"a": 5}')
