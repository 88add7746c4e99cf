"""The incremental feature state: the same row whatever the order, chunking or serialisation of the events."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aitasks.data_processing.contract import GENRE_AFFINITY_COLUMNS, GENRE_SLOTS
from aitasks.serving import feast_codec as fc
from aitasks.serving.state import US_PER_DAY, Play, UserState, genre_slot

T0 = 1_780_000_000 * 1_000_000
plays = st.lists(
    st.builds(
        Play,
        ts_us=st.integers(T0 - 40 * US_PER_DAY, T0),
        ms_played=st.integers(0, 10_000_000),
        skipped=st.booleans(),
        slot=st.one_of(st.none(), st.integers(0, GENRE_SLOTS)),
    ),
    min_size=1,
    max_size=60,
)
KW = {"lookback_days": 28, "half_life_days": 14.0}


def row_of(events: list[Play], chunks: int = 1) -> dict[str, float | int] | None:
    state = UserState()
    size = max(1, len(events) // chunks)
    for i in range(0, len(events), size):
        state = UserState.from_json(state.to_json())  # every commit stores and reloads the state
        state.apply(events[i : i + size], **KW)
    return state.features(**KW)


@settings(max_examples=60, deadline=None)
@given(plays, st.randoms(use_true_random=False), st.integers(1, 5))
def test_order_and_chunking_do_not_change_the_row(events: list[Play], rnd, chunks: int) -> None:
    want = row_of(sorted(events, key=lambda p: p.ts_us))
    shuffled = list(events)
    rnd.shuffle(shuffled)
    got = row_of(shuffled, chunks)
    assert want is not None and got is not None
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    shares = [got[c] for c in GENRE_AFFINITY_COLUMNS]
    assert all(0 <= s <= 1 for s in shares) and (sum(shares) == pytest.approx(1) or sum(shares) == 0)


def test_the_state_stays_bounded_and_old_events_have_no_effect() -> None:
    state = UserState()
    state.apply([Play(T0 - d * US_PER_DAY, 1000, False, 1) for d in range(200)], **KW)
    assert len(state.days) <= 29
    before = state.features(**KW)
    state.apply([Play(T0 - 100 * US_PER_DAY, 5000, True, 3)], **KW)
    assert state.features(**KW) == before


def test_genre_slots_follow_the_batch_features() -> None:
    assert genre_slot(None, 5) is None
    assert genre_slot(3, 20) == 3
    assert genre_slot(5, 5) == GENRE_SLOTS, "the vocabulary's own `other` id"
    assert genre_slot(40, 100) == GENRE_SLOTS, "ranks past the slots"


@given(st.integers(-(2**63), 2**63 - 1))
def test_int64_values_round_trip(value: int) -> None:
    assert fc.decode_value(fc.encode_value("Int64", value)) == value


@given(st.integers(0, 2**62))
def test_timestamps_round_trip(ts_us: int) -> None:
    assert fc.decode_ts(fc.encode_ts(ts_us)) == ts_us


def test_serve_commands_refuse_a_directory_source_without_a_directory() -> None:
    import subprocess
    import sys

    for command in ("serve-updates", "serve-api"):
        out = subprocess.run(
            [sys.executable, "-m", "aitasks.cli", command, "--model-source", "dir"],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 2, out.stderr
        assert "--models-dir" in out.stderr
