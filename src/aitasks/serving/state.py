"""A user's incremental feature state: bounded daily buckets, folded event by event.

The batch features (:mod:`aitasks.data_processing.features`) compute a snapshot at ``T`` from every
event before ``T``. The updater cannot re-read 28 days of events per listen, so each user keeps one
bucket per UTC day of the lookback window: plays, skips, summed ``ms_played`` and, per genre slot, the
sum of ``2 ** ((ts - day start) / half_life)`` over the day's unskipped plays. The recency weight
``0.5 ** ((T - ts) / half_life)`` of the batch features is then ``0.5 ** ((T - day start) /
half_life)`` times the bucket's sum: exact, whatever ``T``.

The live row is the snapshot at ``T`` = the user's newest event + 1 µs (every known event counts,
``user_days_since_last_play`` is ~0), so it depends on the events only, never on the wall clock or
on the order they arrive in: replays and out-of-order deliveries give the same row. Windows are cut
at day granularity: a bucket counts when its day overlaps ``[T - window, T)`` (the batch cuts at the
microsecond; the two agree whenever the window's oldest day holds no event older than the cut).
Buckets older than the lookback are dropped, so the state stays bounded (≤ lookback + 1 days).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from aitasks.data_processing.contract import GENRE_AFFINITY_COLUMNS, GENRE_SLOTS

US_PER_DAY: Final = 86_400 * 1_000_000
SHORT_WINDOW_DAYS: Final = 7
_SLOTS: Final = GENRE_SLOTS + 1  # the 16 ranked slots, then `other`


@dataclass(frozen=True)
class Play:
    """One valid listening event, as the state needs it.

    Attributes:
        ts_us: Event time, microseconds since the epoch (UTC).
        ms_played: Milliseconds played.
        skipped: Whether it was skipped.
        slot: Genre affinity slot of the track (0-15 ranked genres, 16 the others), None when the
            track has no known genre (adds nothing to the affinity, as in the batch features).
    """

    ts_us: int
    ms_played: int
    skipped: bool
    slot: int | None


@dataclass
class UserState:
    """Daily buckets of one user. ``days[d] = [plays, skips, ms_sum, w_0 .. w_16]``."""

    last_us: int = -1
    days: dict[int, list[float]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {"l": self.last_us, "d": {str(k): v for k, v in sorted(self.days.items())}}, separators=(",", ":")
        )

    @classmethod
    def from_json(cls, text: str | bytes | None) -> UserState:
        if not text:
            return cls()
        doc = json.loads(text)
        return cls(last_us=int(doc["l"]), days={int(k): [float(x) for x in v] for k, v in doc["d"].items()})

    def apply(self, plays: Iterable[Play], *, lookback_days: int, half_life_days: float) -> None:
        """Fold ``plays`` in (any order), then drop buckets that left the lookback window."""
        h_us = half_life_days * US_PER_DAY
        for p in plays:
            day = p.ts_us // US_PER_DAY
            if self.last_us >= 0 and day < (self.last_us // US_PER_DAY) - lookback_days:
                continue  # older than anything the window can still hold: no effect
            b = self.days.get(day)
            if b is None:
                b = self.days[day] = [0.0] * (3 + _SLOTS)
            b[0] += 1
            b[1] += 1 if p.skipped else 0
            b[2] += p.ms_played
            if not p.skipped and p.slot is not None:
                b[3 + p.slot] += 2.0 ** ((p.ts_us - day * US_PER_DAY) / h_us)
            self.last_us = max(self.last_us, p.ts_us)
        if self.last_us >= 0:
            oldest = (self.last_us + 1 - lookback_days * US_PER_DAY) // US_PER_DAY
            for d in [d for d in self.days if d < oldest]:
                del self.days[d]

    @property
    def as_of_us(self) -> int:
        """``T`` of the live row: the newest event + 1 µs."""
        return self.last_us + 1

    def features(self, *, lookback_days: int, half_life_days: float) -> dict[str, float | int] | None:
        """The ``user_features`` row at :attr:`as_of_us` (None: no play in the window)."""
        if self.last_us < 0:
            return None
        t = self.as_of_us
        lb_start, short_start = t - lookback_days * US_PER_DAY, t - SHORT_WINDOW_DAYS * US_PER_DAY
        plays = plays_7d = skips = 0
        ms = 0.0
        active = 0
        weights = [0.0] * _SLOTS
        for day, b in self.days.items():
            day_start = day * US_PER_DAY
            if day_start + US_PER_DAY <= lb_start or day_start >= t:
                continue
            n = int(b[0])
            plays += n
            skips += int(b[1])
            ms += b[2]
            active += 1 if n else 0
            if day_start + US_PER_DAY > short_start:
                plays_7d += n
            decay = 0.5 ** ((t - day_start) / (half_life_days * US_PER_DAY))
            for s in range(_SLOTS):
                weights[s] += b[3 + s] * decay
        if plays == 0:
            return None
        total = math.fsum(weights)
        row: dict[str, float | int] = {
            "user_plays_7d": plays_7d,
            "user_plays_28d": plays,
            "user_skip_rate_28d": skips / plays,
            "user_active_days_28d": active,
            "user_days_since_last_play": (t - self.last_us) / US_PER_DAY,
            "user_avg_ms_played_28d": ms / plays,
        }
        for name, w in zip(GENRE_AFFINITY_COLUMNS, weights, strict=True):
            row[name] = w / total if total > 0 else 0.0
        return row


def genre_slot(genre_id: int | None, other_id: int | None) -> int | None:
    """The affinity slot of a track's ``track_genre_id`` (as :mod:`~aitasks.data_processing.features`)."""
    if genre_id is None:
        return None
    if genre_id >= GENRE_SLOTS or genre_id < 0 or (other_id is not None and genre_id == other_id):
        return GENRE_SLOTS
    return int(genre_id)
