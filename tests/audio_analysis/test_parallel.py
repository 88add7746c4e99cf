"""The process pool's pipelined dispatch: a held item is charged only its own time, and a killed worker's
unstarted items are run by the next one. The pool's basics (hard timeout, crash, error, order) are in
``test_decode.py``."""

from __future__ import annotations

import functools
import os
import time

import pytest

from aitasks.audio_analysis.parallel import run_pool


def _sleep_then(seconds: float, x: int) -> tuple[int, int]:
    if x < 0:
        time.sleep(60)  # hangs
    time.sleep(seconds)
    return x, os.getpid()


def _timeout(x: int) -> str:
    return f"timeout:{x}"


def _crash(x: int, why: str) -> str:
    return f"crash:{x}:{why}"


def test_each_held_item_gets_its_own_timeout() -> None:
    """Three 1.2 s items held by one worker at once, 2 s each: none times out (a clock that started when the
    item was sent would have killed the second)."""
    out = run_pool(
        functools.partial(_sleep_then, 1.2),
        [1, 2, 3],
        workers=1,
        timeout_s=2.0,
        on_timeout=_timeout,
        on_crash=_crash,
        prefetch=3,
    )
    assert [r[0] for r in out] == [1, 2, 3]  # type: ignore[index]
    assert len({r[1] for r in out}) == 1  # type: ignore[index]  # one worker, never replaced


def test_items_held_behind_a_hung_item_run_on_the_replacement() -> None:
    out = run_pool(
        functools.partial(_sleep_then, 0.0),
        [-1, 2, 3, 4],
        workers=1,
        timeout_s=2.0,
        on_timeout=_timeout,
        on_crash=_crash,
        prefetch=3,
    )
    assert out[0] == "timeout:-1"
    assert [r[0] for r in out[1:]] == [2, 3, 4]  # type: ignore[index]


@pytest.mark.parametrize("prefetch", [1, 2, 5])
def test_results_keep_input_order_at_any_prefetch(prefetch: int) -> None:
    items = list(range(12))
    out = run_pool(
        functools.partial(_sleep_then, 0.01),
        items,
        workers=2,
        timeout_s=30.0,
        on_timeout=_timeout,
        on_crash=_crash,
        prefetch=prefetch,
    )
    assert [r[0] for r in out] == items  # type: ignore[index]


def test_prefetch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="prefetch"):
        run_pool(abs, [1], workers=1, timeout_s=1.0, on_timeout=_timeout, on_crash=_crash, prefetch=0)
