"""Every runtime test starts with no recorded task-body calls, whatever ran before it in this process."""

from __future__ import annotations

import pytest

from tests.runtime import _tasks


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    _tasks.CALLS.clear()
