"""Deterministic synthetic listening data: a track catalog and listening events.

The data follow the contract of :mod:`aitasks.data_processing.contract` and have enough real
structure that a personalised recommender clearly beats popularity:

* **Genres and artists.** Genre shares fall off along ``GENRES`` (pop is the biggest). Every artist
  belongs to one genre; artists have Zipf-like output, and a track takes its artist's genre.
* **Latent space.** Each genre has a random centroid in a 16-dimensional space; a track's vector is its
  genre centroid plus an artist offset plus noise (normalised), so tracks cluster by genre and artist.
* **Popularity.** Within a genre, tracks follow Zipf popularity (``1 / rank``); across genres, the
  genre share. A few tracks take a large share of all plays.
* **Users.** Genre taste ``theta_u ~ Dirichlet(share)`` with total concentration 1, so most users
  love one to three genres; a user vector is the taste-weighted mix of genre centroids plus personal
  noise. Activity is log-normal (a few heavy listeners, many light ones). Tastes never drift, so the
  last day is predictable from the history.
* **Sessions.** A user listens in sessions (mean eight plays) that start at a diurnal time of day on
  a uniform day of the window, with one context from ``CONTEXTS`` and one focus genre drawn from the
  taste. Within a session, plays follow each other back to back (``ms_played`` plus a short gap, now
  and then a pause).
* **Which track.** A play's genre is the session focus (60 %), a fresh draw from the taste (32 %) or
  exploration from the global genre mix (8 %). Six candidates are drawn by popularity within that
  genre and the one with the best ``user . track / 0.15 + Gumbel`` score is played, so the latent
  affinity picks among popular tracks. In ``album``/``artist`` sessions, later plays stay with the
  first track's artist (70 %). Then 30 % of the plays are re-listens of one of the user's earlier
  plays (a Polya urn: favourites come back).
* **Skips.** ``P(skip)`` is a logistic function of taste match (share of the track's genre in the
  taste), latent affinity, re-listen and context, so off-taste plays are skipped far more often.
  A skipped play lasts 1-29 s (always < 30 s), a full play 80-100 % of the track (>= 36 s, since
  tracks last >= 45 s), so ``ms_played`` never exceeds ``duration_ms``.

Everything is vectorised with numpy (one ``default_rng(seed)`` stream, consumed in a fixed order):
the same seed and arguments give byte-identical files. Timestamps are UTC, millisecond precision,
within ``[start, start + days)``; events are written in time order.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from aitasks.data_processing.contract import (
    EVENT_COLUMNS,
    EVENTS_SCHEMA,
    MAX_DURATION_MS,
    MIN_RELEASE_YEAR,
    TRACK_COLUMNS,
    TRACKS_SCHEMA,
)
from aitasks.runtime.errors import FieldIssue, InvalidInputError

__all__ = ["CONTEXTS", "GENRES", "GeneratedDataset", "generate_dataset"]

#: The generator's genres (the contract has none: genres are an open vocabulary). Order matters for
#: the generator only: shares fall off along it, and the per-genre tables below follow it.
GENRES: Final[tuple[str, ...]] = (
    "pop",
    "rock",
    "hip_hop",
    "electronic",
    "jazz",
    "classical",
    "country",
    "rnb",
    "metal",
    "folk",
    "latin",
    "ambient",
)
#: The generator's contexts (open in the contract too).
CONTEXTS: Final[tuple[str, ...]] = ("playlist", "album", "artist", "search", "radio", "library")

_TASK: Final = "data.generate"
_DIM: Final = 16
_CANDIDATES: Final = 6
_TEMPERATURE: Final = 0.15
_ZIPF: Final = 0.9
_MEAN_SESSION: Final = 8
_MAX_SESSION: Final = 50
_P_FOCUS: Final = 0.60
_P_TASTE: Final = 0.32  # the rest (8 %) explores the global genre mix
_P_SAME_ARTIST: Final = 0.70
_P_RELISTEN: Final = 0.30
_MIN_DURATION_MS: Final = 45_000
_MAX_GEN_DURATION_MS: Final = 30 * 60_000
_SKIP_MAX_MS: Final = 29_000
_DAY_MS: Final = 86_400_000
_BLOCK: Final = 65_536  # events per block in the candidate scoring (bounds its memory)

#: Relative session starts per hour of day (UTC): quiet nights, commute and evening peaks.
_HOURLY: Final = (2, 1, 1, 1, 1, 2, 4, 7, 9, 7, 6, 6, 7, 7, 6, 6, 7, 8, 9, 10, 10, 9, 7, 4)
_CONTEXT_P: Final = (0.35, 0.15, 0.10, 0.10, 0.15, 0.15)
#: Duration factor and explicit-lyrics probability per genre, in GENRES order.
_GENRE_DURATION: Final = (1.0, 1.05, 0.95, 1.15, 1.3, 1.8, 0.95, 1.0, 1.1, 1.0, 0.95, 1.5)
_GENRE_EXPLICIT: Final = (0.10, 0.12, 0.45, 0.08, 0.02, 0.0, 0.05, 0.2, 0.25, 0.02, 0.1, 0.0)
_GENRE_AGE: Final = (6.0, 15.0, 8.0, 7.0, 25.0, 30.0, 12.0, 10.0, 14.0, 15.0, 8.0, 10.0)

Format = Literal["parquet", "csv", "jsonl"]
_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class GeneratedDataset:
    """What :func:`generate_dataset` wrote.

    Attributes:
        events_path: The events file (``events.<fmt>``).
        tracks_path: The catalog file (``tracks.<fmt>``).
        events: Number of events written.
        tracks: Number of tracks written.
        users: Number of users the events were drawn for (not all need to appear).
        seed: The random seed.
        fmt: File format of both files.
        start: First instant of the window (UTC).
        days: Length of the window in days.
        events_sha256: sha256 of the events file.
        tracks_sha256: sha256 of the catalog file.
    """

    events_path: Path
    tracks_path: Path
    events: int
    tracks: int
    users: int
    seed: int
    fmt: Format
    start: datetime
    days: int
    events_sha256: str
    tracks_sha256: str

    def __str__(self) -> str:
        return (
            f"{self.events:,} events ({self.events_path}) and {self.tracks:,} tracks ({self.tracks_path}), "
            f"{self.users:,} users, seed {self.seed}"
        )


def generate_dataset(
    out_dir: Path,
    *,
    seed: int,
    users: int,
    tracks: int,
    events: int,
    start: datetime,
    days: int,
    fmt: Format = "parquet",
    dirty_rows: int = 0,
) -> GeneratedDataset:
    """Write a synthetic catalog ``tracks.<fmt>`` and events ``events.<fmt>`` into ``out_dir``.

    Args:
        out_dir: Output directory (created when missing). Existing files of the same names are replaced
            atomically.
        seed: Random seed; the same seed and arguments give byte-identical files.
        users: Number of users (>= 1).
        tracks: Number of tracks in the catalog (>= 1).
        events: Number of listening events (>= 1).
        start: First instant of the window; must be timezone-aware.
        days: Length of the window in days (>= 1); every event lies in ``[start, start + days)``.
        fmt: ``parquet`` (contract schemas exactly), ``csv`` (header in contract column order, ISO-8601
            ``Z`` timestamps) or ``jsonl`` (one object per line).
        dirty_rows: Extra rows that break the contract, appended after the ``events`` good rows and
            shuffled in: copies of good rows with one defect each, cycling through
            :data:`DIRTY_KINDS` (a re-sent event id, an unknown track, a negative play time, a time
            far in the future, a malformed user id, an unknown context). The ETL must quarantine
            exactly these and keep every good row.

    Returns:
        Paths, counts and sha256 of both files.

    Raises:
        InvalidInputError: A count is not positive, ``start`` is naive or ``fmt`` is unknown.
    """
    issues = [FieldIssue(name, "must be >= 1") for name, v in _counts(users, tracks, events, days) if v < 1]
    if not 0 <= dirty_rows <= events:
        issues.append(FieldIssue("dirty_rows", "must be between 0 and the number of events"))
    if start.tzinfo is None or start.utcoffset() is None:
        issues.append(FieldIssue("start", "must be timezone-aware"))
    if fmt not in ("parquet", "csv", "jsonl"):
        issues.append(FieldIssue("fmt", f"must be parquet, csv or jsonl, got {fmt!r}"))
    if issues:
        raise InvalidInputError(_TASK, issues)
    start_utc = start.astimezone(UTC)
    rng = np.random.default_rng(seed)
    catalog = _make_catalog(rng, tracks, year_max=start_utc.year)
    ev = _make_events(rng, catalog, users=users, events=events, days=days)
    id_key = int(rng.integers(0, 2**62))
    start_ms = int(start_utc.timestamp() * 1000)

    out_dir.mkdir(parents=True, exist_ok=True)
    track_ids = _prefixed_numbers("t_", tracks)
    tracks_table = _tracks_table(catalog, track_ids)
    events_table = _events_table(ev, track_ids, users=users, start_ms=start_ms, id_key=id_key)
    if dirty_rows:
        events_table = _with_dirty_rows(events_table, dirty_rows, seed=seed, end_ms=start_ms + days * 86_400_000)
    tracks_path = out_dir / f"tracks.{fmt}"
    events_path = out_dir / f"events.{fmt}"
    _write(tracks_table, tracks_path, fmt, TRACK_COLUMNS)
    _write(events_table, events_path, fmt, EVENT_COLUMNS)
    return GeneratedDataset(
        events_path=events_path,
        tracks_path=tracks_path,
        events=events_table.num_rows,
        tracks=tracks_table.num_rows,
        users=users,
        seed=seed,
        fmt=fmt,
        start=start_utc,
        days=days,
        events_sha256=_sha256(events_path),
        tracks_sha256=_sha256(tracks_path),
    )


def _counts(users: int, tracks: int, events: int, days: int) -> list[tuple[str, int]]:
    return [("users", users), ("tracks", tracks), ("events", events), ("days", days)]


# ------------------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class _Catalog:
    genre: _I64  # per track, index into GENRES
    artist: _I64  # per track
    vec: npt.NDArray[np.float32]  # per track, unit vectors (T, _DIM)
    duration_ms: _I64
    release_year: _I64
    explicit: npt.NDArray[np.bool_]
    n_artists: int
    genre_share: _F64  # share of each genre among plays, zero for genres without tracks
    centroids: npt.NDArray[np.float32]  # (G, _DIM)
    by_genre: _I64  # track indices sorted by (genre, popularity rank)
    pop_cum: _F64  # genre + cumulative within-genre popularity, aligned with by_genre
    artist_start: _I64  # tracks sorted by artist: first position of each artist in by_artist
    artist_count: _I64
    by_artist: _I64


def _unit(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    out: npt.NDArray[np.float32] = (x / np.maximum(norm, 1e-12)).astype(np.float32)
    return out


def _make_catalog(rng: np.random.Generator, n_tracks: int, *, year_max: int) -> _Catalog:
    n_genres = len(GENRES)
    base_share = 1.0 / np.arange(1, n_genres + 1) ** 0.6
    base_share /= base_share.sum()
    n_artists = max(1, n_tracks // 10)
    artist_genre = rng.choice(n_genres, size=n_artists, p=base_share)
    artist_output = 1.0 / np.arange(1, n_artists + 1) ** 0.5
    artist_output = rng.permutation(artist_output)
    track_artist = rng.choice(n_artists, size=n_tracks, p=artist_output / artist_output.sum())
    # The first tracks go one per artist, so every artist has at least one track when possible.
    first = min(n_artists, n_tracks)
    track_artist[:first] = np.arange(first)
    genre = artist_genre[track_artist].astype(np.int64)

    centroids = _unit(rng.standard_normal((n_genres, _DIM)))
    artist_offset = rng.standard_normal((n_artists, _DIM)) / np.sqrt(_DIM)
    noise = rng.standard_normal((n_tracks, _DIM)) / np.sqrt(_DIM)
    vec = _unit(centroids[genre].astype(np.float64) + 0.6 * artist_offset[track_artist] + 0.6 * noise)

    # Zipf popularity within each genre, by a random rank.
    order = np.lexsort((rng.random(n_tracks), genre))  # by genre, then random rank
    counts = np.bincount(genre, minlength=n_genres)
    genre_first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(n_tracks) - genre_first[genre[order]]
    weight = 1.0 / (rank + 1.0) ** _ZIPF
    cum = np.cumsum(weight)
    # Normalise per genre: cumulative share in (0, 1] within the genre, offset by the genre index.
    genre_total = np.bincount(genre[order], weights=weight, minlength=n_genres)
    start_cum = np.concatenate(([0.0], np.cumsum(genre_total)[:-1]))
    g_sorted = genre[order]
    within = (cum - start_cum[g_sorted]) / genre_total[g_sorted]
    within[(genre_first + counts - 1)[counts > 0]] = 1.0  # exact genre ends, whatever the rounding
    pop_cum = g_sorted + within  # draw with searchsorted(pop_cum, genre + u, side="right")

    present = counts > 0
    share = np.where(present, base_share, 0.0)
    share /= share.sum()

    factor = np.asarray(_GENRE_DURATION)[genre]
    duration = np.exp(rng.normal(np.log(215_000.0), 0.3, n_tracks)) * factor
    duration_ms = np.clip(np.round(duration), _MIN_DURATION_MS, min(_MAX_GEN_DURATION_MS, MAX_DURATION_MS))
    age = np.floor(rng.exponential(np.asarray(_GENRE_AGE)[genre]))
    release_year = np.clip(year_max - age, max(MIN_RELEASE_YEAR, 1920), year_max)
    explicit = rng.random(n_tracks) < np.asarray(_GENRE_EXPLICIT)[genre]

    by_artist = np.argsort(track_artist, kind="stable")
    artist_count = np.bincount(track_artist, minlength=n_artists)
    artist_start = np.concatenate(([0], np.cumsum(artist_count)[:-1]))
    return _Catalog(
        genre=genre,
        artist=track_artist.astype(np.int64),
        vec=vec,
        duration_ms=duration_ms.astype(np.int64),
        release_year=release_year.astype(np.int64),
        explicit=explicit,
        n_artists=n_artists,
        genre_share=share,
        centroids=centroids,
        by_genre=order.astype(np.int64),
        pop_cum=pop_cum,
        artist_start=artist_start.astype(np.int64),
        artist_count=artist_count.astype(np.int64),
        by_artist=by_artist.astype(np.int64),
    )


# -------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class _Events:
    user: _I64
    track: _I64
    ts_ms: _I64  # offset from the window start
    ms_played: _I64
    context: _I64
    skipped: npt.NDArray[np.bool_]


def _draw_rows(rng: np.random.Generator, cum_flat: _F64, rows: _I64, width: int) -> _I64:
    """Draw one category per entry from row-wise distributions stored as ``row + cumulative share``."""
    u = rng.random(rows.shape[0])
    pos = np.searchsorted(cum_flat, rows + u, side="right")
    pos = np.minimum(pos, rows * width + width - 1)  # guard against rounding at a row's end
    return (pos - rows * width).astype(np.int64)


def _make_events(rng: np.random.Generator, cat: _Catalog, *, users: int, events: int, days: int) -> _Events:
    n_genres = len(GENRES)
    # Users: sparse genre tastes restricted to the genres that have tracks, latent vectors, activity.
    alpha = np.maximum(cat.genre_share, 1e-12)
    theta = rng.dirichlet(alpha, size=users) * (cat.genre_share > 0)
    theta /= theta.sum(axis=1, keepdims=True)
    theta_max = theta.max(axis=1)
    user_vec = _unit(
        theta @ cat.centroids.astype(np.float64) + 0.7 * rng.standard_normal((users, _DIM)) / np.sqrt(_DIM)
    )
    activity = np.exp(rng.normal(0.0, 0.8, users))
    theta_cum = (np.cumsum(theta, axis=1) + np.arange(users)[:, None]).ravel()
    theta_cum[n_genres - 1 :: n_genres] = np.arange(users) + 1.0

    # Sessions: lengths until the event budget is met, then users, days, times, contexts, focus genre.
    n_sess = events // _MEAN_SESSION + 16
    lengths = np.minimum(1 + rng.poisson(_MEAN_SESSION - 1, n_sess), _MAX_SESSION)
    while lengths.sum() < events:
        lengths = np.concatenate((lengths, np.minimum(1 + rng.poisson(_MEAN_SESSION - 1, n_sess), _MAX_SESSION)))
    ends = np.cumsum(lengths)
    n_sess = int(np.searchsorted(ends, events)) + 1
    lengths = lengths[:n_sess]
    lengths[-1] -= int(ends[n_sess - 1]) - events
    sess_user = rng.choice(users, size=n_sess, p=activity / activity.sum())
    hourly = np.asarray(_HOURLY, dtype=np.float64)
    hour = rng.choice(24, size=n_sess, p=hourly / hourly.sum())
    sess_start = rng.integers(0, days, n_sess) * _DAY_MS + hour * 3_600_000 + rng.integers(0, 3_600_000, n_sess)
    sess_ctx = rng.choice(len(CONTEXTS), size=n_sess, p=np.asarray(_CONTEXT_P))
    order = np.lexsort((sess_start, sess_user))  # events of a user are contiguous and in time order
    sess_user, sess_start, sess_ctx, lengths = sess_user[order], sess_start[order], sess_ctx[order], lengths[order]
    sess_focus = _draw_rows(rng, theta_cum, sess_user.astype(np.int64), n_genres)

    sess_of = np.repeat(np.arange(n_sess), lengths)
    sess_first = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    pos = np.arange(events) - sess_first[sess_of]
    user = sess_user[sess_of].astype(np.int64)

    # Genre of each play: session focus, a fresh draw from the taste, or exploration.
    mode = rng.random(events)
    genre = sess_focus[sess_of].copy()
    fresh = (mode >= _P_FOCUS) & (mode < _P_FOCUS + _P_TASTE)
    genre[fresh] = _draw_rows(rng, theta_cum, user[fresh], n_genres)
    explore = mode >= _P_FOCUS + _P_TASTE
    genre[explore] = rng.choice(n_genres, size=int(explore.sum()), p=cat.genre_share)

    # Track: best of a few popularity-drawn candidates in that genre by latent affinity + Gumbel noise.
    track = np.empty(events, dtype=np.int64)
    for lo in range(0, events, _BLOCK):
        hi = min(events, lo + _BLOCK)
        g = genre[lo:hi, None] + rng.random((hi - lo, _CANDIDATES))
        cand = cat.by_genre[np.minimum(np.searchsorted(cat.pop_cum, g, side="right"), len(cat.by_genre) - 1)]
        score = np.einsum("nd,nkd->nk", user_vec[user[lo:hi]], cat.vec[cand]) / _TEMPERATURE
        score += rng.gumbel(size=score.shape)
        track[lo:hi] = cand[np.arange(hi - lo), np.argmax(score, axis=1)]

    # Album / artist sessions stay with the first track's artist.
    anchor_artist = cat.artist[track[sess_first]][sess_of]
    ctx = sess_ctx[sess_of]
    stay = np.isin(ctx, [CONTEXTS.index("album"), CONTEXTS.index("artist")]) & (pos > 0)
    stay &= rng.random(events) < _P_SAME_ARTIST
    a = anchor_artist[stay]
    pick = cat.artist_start[a] + np.floor(rng.random(a.shape[0]) * cat.artist_count[a]).astype(np.int64)
    track[stay] = cat.by_artist[pick]

    # Re-listens: copy the track of a uniformly chosen earlier play of the same user (Polya urn).
    user_first = np.searchsorted(user, user, side="left")
    k = np.arange(events) - user_first
    relisten = (rng.random(events) < _P_RELISTEN) & (k > 0)
    src = np.arange(events)
    src[relisten] = user_first[relisten] + np.floor(rng.random(int(relisten.sum())) * k[relisten]).astype(np.int64)
    while True:  # pointer jumping resolves chains of re-listens in O(log n) rounds
        nxt = src[src]
        if np.array_equal(nxt, src):
            break
        src = nxt
    track = track[src]

    # Skips: off-taste and low-affinity plays are skipped far more often.
    g_t = cat.genre[track]
    taste = theta[user, g_t] / theta_max[user]
    affinity = np.einsum("nd,nd->n", user_vec[user], cat.vec[track])
    ctx_bias = np.asarray([0.0, -0.3, -0.3, -0.8, 0.3, -0.4])[ctx]
    logit = 1.0 - 2.6 * taste - 1.5 * affinity - 0.5 * relisten + ctx_bias
    skipped = rng.random(events) < 1.0 / (1.0 + np.exp(-logit))
    duration = cat.duration_ms[track]
    ms_played = np.where(
        skipped,
        np.minimum(1_000 + np.floor(rng.random(events) * (_SKIP_MAX_MS - 1_000)), duration - 1),
        np.floor(duration * rng.uniform(0.8, 1.0, events)),
    ).astype(np.int64)

    # Timestamps: back to back within a session, with short gaps and the odd pause.
    gap = 200 + np.floor(rng.exponential(1_500.0, events)).astype(np.int64)
    pause = rng.random(events) < 0.05
    gap[pause] += np.floor(rng.exponential(60_000.0, int(pause.sum()))).astype(np.int64)
    step = ms_played + gap
    csum = np.cumsum(step) - step  # exclusive
    offset = csum - csum[sess_first][sess_of]
    sess_len_ms = offset[sess_first + lengths - 1] + step[sess_first + lengths - 1]
    window = days * _DAY_MS
    sess_start = np.clip(np.minimum(sess_start, window - sess_len_ms - 1), 0, window - 1)
    ts_ms = np.minimum(sess_start[sess_of] + offset, window - 1)

    order_t = np.argsort(ts_ms, kind="stable")
    return _Events(
        user=user[order_t],
        track=track[order_t],
        ts_ms=ts_ms[order_t],
        ms_played=ms_played[order_t],
        context=ctx[order_t].astype(np.int64),
        skipped=skipped[order_t],
    )


# ------------------------------------------------------------------------------------- writing


def _fixed_strings(chars: npt.NDArray[np.uint8]) -> pa.StringArray:
    """Build a string array from an ``(n, width)`` matrix of ASCII bytes without a Python loop."""
    n, width = chars.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars)))


def _prefixed_numbers(prefix: str, n: int) -> pa.StringArray:
    """``prefix`` + zero-padded decimal numbers ``0 .. n-1``, e.g. ``u_000042``."""
    digits = max(6, len(str(max(n - 1, 0))))
    values = np.arange(n, dtype=np.int64)
    powers = 10 ** np.arange(digits - 1, -1, -1, dtype=np.int64)
    num = ((values[:, None] // powers) % 10 + ord("0")).astype(np.uint8)
    head = np.broadcast_to(np.frombuffer(prefix.encode(), dtype=np.uint8), (n, len(prefix)))
    return _fixed_strings(np.hstack((head, num)))


def _event_ids(rng_key: int, n: int) -> pa.StringArray:
    """Unique, random-looking ids ``ev_<16 hex>``: a bijective mix of the row number, keyed by the seed."""
    with np.errstate(over="ignore"):
        x = (np.arange(n, dtype=np.uint64) + np.uint64(rng_key)) * np.uint64(0x9E3779B97F4A7C15)
        x ^= x >> np.uint64(29)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(32)
    shifts = np.arange(60, -1, -4, dtype=np.uint64)
    nibbles = ((x[:, None] >> shifts) & np.uint64(0xF)).astype(np.uint8)
    lut = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    head = np.broadcast_to(np.frombuffer(b"ev_", dtype=np.uint8), (n, 3))
    return _fixed_strings(np.hstack((head, lut[nibbles])))


def _tracks_table(cat: _Catalog, track_ids: pa.StringArray) -> pa.Table:
    artist_ids = _prefixed_numbers("ar_", cat.n_artists)
    return pa.Table.from_arrays(
        [
            track_ids,
            artist_ids.take(pa.array(cat.artist)),
            pa.array(GENRES, pa.string()).take(pa.array(cat.genre)),
            pa.array(cat.duration_ms, pa.int64()),
            pa.array(cat.release_year.astype(np.int32), pa.int32()),
            pa.array(cat.explicit, pa.bool_()),
        ],
        schema=TRACKS_SCHEMA,
    )


def _events_table(ev: _Events, track_ids: pa.StringArray, *, users: int, start_ms: int, id_key: int) -> pa.Table:
    return pa.Table.from_arrays(
        [
            _event_ids(id_key, ev.user.shape[0]),
            _prefixed_numbers("u_", users).take(pa.array(ev.user)),
            track_ids.take(pa.array(ev.track)),
            pa.array((ev.ts_ms + start_ms) * 1000, pa.timestamp("us", tz="UTC")),
            pa.array(ev.ms_played, pa.int64()),
            pa.array(CONTEXTS, pa.string()).take(pa.array(ev.context)),
            pa.array(ev.skipped, pa.bool_()),
        ],
        schema=EVENTS_SCHEMA,
    )


#: Defects of the dirty rows, in the order they cycle, with the quarantine reason each must get.
DIRTY_KINDS: Final[tuple[tuple[str, str], ...]] = (
    ("resent_event_id", "duplicate_event_id"),
    ("unknown_track", "unknown_track_id"),
    ("negative_ms_played", "out_of_range:ms_played"),
    ("future_timestamp", "future_timestamp"),
    ("malformed_user_id", "bad_id:user_id"),
    ("bad_context", "bad_context"),
)


def _with_dirty_rows(good: pa.Table, n: int, *, seed: int, end_ms: int) -> pa.Table:
    """``good`` plus ``n`` defective copies of its rows, shuffled in (the good rows keep their order)."""
    rng = np.random.default_rng([seed, 0xD1127])
    src = rng.choice(good.num_rows, size=n, replace=False)
    bad = good.take(pa.array(src)).to_pydict()
    for i in range(n):
        kind = DIRTY_KINDS[i % len(DIRTY_KINDS)][0]
        if kind != "resent_event_id":  # a re-sent event keeps its id; every other copy gets a fresh one
            bad["event_id"][i] = f"dirty-{seed}-{i}"
        if kind == "unknown_track":
            bad["track_id"][i] = f"t_unknown_{i}"
        elif kind == "negative_ms_played":
            bad["ms_played"][i] = -1 - i
        elif kind == "future_timestamp":
            bad["ts"][i] = datetime.fromtimestamp(end_ms / 1000 + 30 * 86_400 + i, tz=UTC)
        elif kind == "malformed_user_id":
            bad["user_id"][i] = f"user {i}!"
        elif kind == "bad_context":
            bad["context"][i] = "--"  # no letter or digit: contexts are open, but not shapeless
    dirty = pa.Table.from_pydict(bad, schema=EVENTS_SCHEMA)
    # Bad rows land after the good row they copy, so a re-sent id always comes second.
    order = np.argsort(np.concatenate([np.arange(good.num_rows) * 2, src * 2 + 1]), kind="stable")
    return pa.concat_tables([good, dirty]).take(pa.array(order))


def _iso_utc(column: pa.ChunkedArray) -> pa.Array:
    """ISO-8601 text with milliseconds and a ``Z`` suffix, e.g. ``2026-10-01T08:15:03.123Z``."""
    ms = column.cast(pa.int64()).to_numpy() // 1000
    text = np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms", timezone="UTC")
    return pa.array(text, pa.string())


def _as_text_table(table: pa.Table) -> pa.Table:
    cols = [
        _iso_utc(table.column(i)) if pa.types.is_timestamp(f.type) else table.column(i)
        for i, f in enumerate(table.schema)
    ]
    return pa.Table.from_arrays(cols, names=table.column_names)


def _write(table: pa.Table, path: Path, fmt: Format, columns: tuple[str, ...]) -> None:
    from aitasks.platform.files import atomic_path

    with atomic_path(path) as tmp:
        if fmt == "parquet":
            pq.write_table(table, tmp, compression="zstd", row_group_size=1 << 20)
        elif fmt == "csv":
            with open(tmp, "wb") as fh:
                fh.write((",".join(columns) + "\n").encode())
                if table.num_rows:
                    buf = io.BytesIO()
                    pacsv.write_csv(
                        _as_text_table(table),
                        buf,
                        write_options=pacsv.WriteOptions(include_header=False, quoting_style="none"),
                    )
                    fh.write(buf.getvalue())
        else:
            frame = pl.from_arrow(_as_text_table(table))
            assert isinstance(frame, pl.DataFrame)
            frame.write_ndjson(tmp)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
