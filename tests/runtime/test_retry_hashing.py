from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aitasks.runtime.errors import FatalError, InvalidInputError, RetryableError, ServiceUnavailableError
from aitasks.runtime.hashing import canonical_json, sha256_json
from aitasks.runtime.retry import RetryPolicy, is_retryable

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_canonical_json_is_stable_and_roundtrips(value: object) -> None:
    text = canonical_json(value)
    assert canonical_json(json.loads(text)) == text


@given(st.dictionaries(st.text(max_size=8), st.integers(), min_size=2, max_size=8))
def test_key_order_does_not_matter(d: dict[str, int]) -> None:
    assert sha256_json(d) == sha256_json(dict(reversed(list(d.items()))))


def test_int_and_float_hash_apart_and_nan_is_refused() -> None:
    assert sha256_json({"a": 1}) != sha256_json({"a": 1.0})
    with pytest.raises(ValueError, match="non-finite"):
        canonical_json({"a": float("nan")})


@given(
    attempt=st.integers(min_value=1, max_value=30),
    initial=st.floats(min_value=0, max_value=5),
    cap=st.floats(min_value=5, max_value=60),
    seed=st.integers(0, 2**32 - 1),
)
def test_backoff_is_bounded(attempt: int, initial: float, cap: float, seed: int) -> None:
    policy = RetryPolicy(initial_backoff_s=initial, max_backoff_s=cap)
    delay = policy.backoff(attempt, random.Random(seed))
    assert 0 <= delay <= min(cap, initial * 2 ** (attempt - 1)) + 1e-9


def test_backoff_without_jitter_grows_exponentially() -> None:
    p = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=4, jitter=False)
    assert [p.backoff(a) for a in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_policy_rejects_inverted_bounds() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(initial_backoff_s=10, max_backoff_s=1)


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (ServiceUnavailableError("x"), True),
        (RetryableError("x"), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (FatalError("x"), False),
        (InvalidInputError("t", []), False),
        (ValueError("x"), False),
        (KeyError("x"), False),
    ],
)
def test_only_marked_errors_retry(exc: BaseException, retry: bool) -> None:
    assert is_retryable(exc) is retry
