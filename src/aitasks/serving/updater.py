"""``aitasks serve-updates``: listening events from Redis Streams -> fresh features, history and embedding.

Delivery is at-least-once (a consumer group; entries stay pending until acknowledged); the **effect**
is exactly once:

1. ``XREADGROUP`` takes a batch (first this consumer's own pending entries after a restart, then new
   ones); every ``claim_interval_s`` ``XAUTOCLAIM`` takes over entries left pending longer than
   ``claim_idle_ms`` by a consumer that died.
2. One pipelined read per batch: each user's state and version, the tracks' genre ids (Feast
   ``track_features``), which event ids were already applied (``seen:<id>``), which unknown track ids
   were announced live.
3. The batch is judged by the data contract's own rules (``validate_event_table``, the ETL's
   validation); a breaking entry goes to the dead-letter stream with the rule it broke.
4. Per user, the new events are folded into the state (:mod:`.state`), giving the Feast
   ``user_features`` row; the index's model embeds the users (one torch call per batch).
5. **One Lua script per batch** commits everything atomically: for each user whose version and
   event ids are unchanged since step 2 (else the user is re-read and retried), it writes the state
   (version + 1), the Feast row, the history, the embedding, the ``seen`` markers (with a TTL), and
   ``XACK``\\ s that user's entries; it ``XADD``\\ s dead letters (once per entry: ``dlq-seen``) and acks
   duplicates. A crash before the script leaves every entry pending and nothing applied; after it,
   everything applied and acknowledged. Redelivered entries find their ``seen`` marker and are only
   acknowledged.

New tracks (second stream): each entry is checked by the catalog contract, embedded by the item tower,
and written in one ``MULTI``: its vector into ``items:<model>:v<N>`` (the service merges these into
its answers; the hourly ``reco-refresh`` folds them into the next index version), its Feast
``track_features`` row (catalog attributes, genre id), the live track set, and the ack. Every write
is an overwrite, so a redelivery changes nothing.

Operations: ``/healthz`` (the loop turned within ``stall_s``), ``/readyz`` (Redis answers, the
groups exist), ``/metrics`` (Prometheus); SIGTERM finishes the batch in hand and exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from aitasks.data_processing.contract import EVENT_COLUMNS, FUTURE_TOLERANCE_S, TRACK_COLUMNS
from aitasks.platform.feature_store.schema import TRACK_FEATURE_VIEW, USER_FEATURE_VIEW
from aitasks.serving import feast_codec as fc
from aitasks.serving.model import ModelSource, ServingModel, load_serving_model
from aitasks.serving.online import TRACK_DTYPES, TRACK_GENRE_FIELD, USER_DTYPES, Keys
from aitasks.serving.state import Play, UserState, genre_slot

_MAX_CONFLICT_ROUNDS: Final = 5

# One atomic commit per batch. ARGV layout (names are passed as arguments: standalone Redis, where the
# Feast rows' binary keys cannot be hash-tagged anyway):
#   stream, group, dlq, ttl, history_max, n_users,
#   per user: state_key, expected_version, state_json, feast_key, n_fields, (field, value)*,
#             hist_key, n_hist, (score, member)*, emb_key ('' = none), emb, n_events, (seen_key, entry_id)*
#   n_acks, entry_id*, n_dead, (entry_id, dlq_seen_key, reason, payload)*
# Returns the state keys whose version or events changed since they were read (not applied, not acked).
_COMMIT_LUA: Final = """
local stream, group, dlq = ARGV[1], ARGV[2], ARGV[3]
local ttl, hmax = tonumber(ARGV[4]), tonumber(ARGV[5])
local i = 7
local conflicts = {}
for _ = 1, tonumber(ARGV[6]) do
  local skey, expect, blob, fkey = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local nf = tonumber(ARGV[i + 4]); i = i + 5
  local fstart = i; i = i + 2 * nf
  local hkey, nh = ARGV[i], tonumber(ARGV[i + 1]); i = i + 2
  local hstart = i; i = i + 2 * nh
  local ekey, emb = ARGV[i], ARGV[i + 1]; i = i + 2
  local ne = tonumber(ARGV[i]); i = i + 1
  local estart = i; i = i + 2 * ne
  local cur = redis.call('HGET', skey, 'v') or '0'
  local ok = cur == expect
  if ok then
    for e = 0, ne - 1 do
      if redis.call('EXISTS', ARGV[estart + 2 * e]) == 1 then ok = false; break end
    end
  end
  if not ok then
    conflicts[#conflicts + 1] = skey
  else
    redis.call('HSET', skey, 'v', tostring(tonumber(cur) + 1), 's', blob)
    if nf > 0 then
      local args = {}
      for f = fstart, fstart + 2 * nf - 1 do args[#args + 1] = ARGV[f] end
      redis.call('HSET', fkey, unpack(args))
    end
    for h = 0, nh - 1 do redis.call('ZADD', hkey, 'GT', ARGV[hstart + 2 * h], ARGV[hstart + 2 * h + 1]) end
    if nh > 0 then redis.call('ZREMRANGEBYRANK', hkey, 0, -(hmax + 1)) end
    if ekey ~= '' then redis.call('SET', ekey, emb) end
    for e = 0, ne - 1 do
      redis.call('SET', ARGV[estart + 2 * e], '1', 'EX', ttl)
      redis.call('XACK', stream, group, ARGV[estart + 2 * e + 1])
    end
  end
end
local na = tonumber(ARGV[i]); i = i + 1
for a = i, i + na - 1 do redis.call('XACK', stream, group, ARGV[a]) end
i = i + na
local nd = tonumber(ARGV[i]); i = i + 1
for _ = 1, nd do
  if redis.call('SET', ARGV[i + 1], '1', 'NX', 'EX', ttl) then
    redis.call('XADD', dlq, '*', 'entry_id', ARGV[i], 'stream', stream, 'reason', ARGV[i + 2], 'payload', ARGV[i + 3])
  end
  redis.call('XACK', stream, group, ARGV[i])
  i = i + 4
end
return conflicts
"""


class UpdaterConfig(BaseModel):
    """What the updater reads and how (every field has a flag of ``aitasks serve-updates``).

    Attributes:
        project: Feast project whose online store is written.
        events_stream: Stream of listening events (fields: the contract's event columns).
        tracks_stream: Stream of new tracks (fields: the contract's track columns).
        dead_letter_stream: Where invalid entries go, with ``reason``.
        group: Consumer group name (created at start when missing, from the stream's start).
        consumer: This consumer's name (stable across restarts: its pending entries are re-read).
        prefix: Key prefix of the updater's own keys (default ``aitasks:rt:<project>:``).
        index_name: The published index whose model embeds users and new tracks.
        batch_size: Entries per read.
        block_ms: How long a read waits for new entries.
        claim_idle_ms: Entries pending longer than this with another consumer are taken over.
        claim_interval_s: How often to look for such entries.
        dedupe_ttl_s: How long an applied event id is remembered (longer than any redelivery).
        history_len: Recently played tracks kept per user.
        lookback_days: Window of the ``*_28d`` features (as the batch features).
        half_life_days: Half-life of the genre affinity's recency weight (as the batch features).
        model_poll_s: How often the index pointer is checked for a new model.
        stall_s: ``/healthz`` fails when the loop has not turned for this long.
        http_port: Port of ``/healthz``, ``/readyz`` and ``/metrics`` (0: none).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str = Field(default="aitasks", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
    events_stream: str = Field(default="aitasks:events", min_length=1, max_length=200)
    tracks_stream: str = Field(default="aitasks:tracks", min_length=1, max_length=200)
    dead_letter_stream: str = Field(default="aitasks:events:dead", min_length=1, max_length=200)
    group: str = Field(default="aitasks-updater", pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    consumer: str = Field(default_factory=lambda: f"{socket.gethostname()}", pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    prefix: str = Field(default="", max_length=200)
    index_name: str = Field(default="reco-tracks", pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    batch_size: int = Field(default=500, ge=1, le=10_000)
    block_ms: int = Field(default=200, ge=1, le=60_000)
    claim_idle_ms: int = Field(default=30_000, ge=100)
    claim_interval_s: float = Field(default=5.0, gt=0)
    dedupe_ttl_s: int = Field(default=7 * 86_400, ge=60)
    history_len: int = Field(default=200, ge=1, le=10_000)
    lookback_days: int = Field(default=28, ge=7, le=365)
    half_life_days: float = Field(default=14.0, gt=0)
    model_poll_s: float = Field(default=30.0, gt=0)
    stall_s: float = Field(default=60.0, gt=0)
    http_port: int = Field(default=0, ge=0, le=65535)


@dataclass
class BatchReport:
    """What one batch did."""

    applied: int = 0
    duplicates: int = 0
    dead: int = 0
    retried_users: int = 0
    pending_left: int = 0
    tracks_added: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class UpdaterMetrics:
    """The updater's Prometheus metrics, on ``registry``."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.events = Counter(
            "aitasks_updater_events", "Stream entries handled, by outcome.", ["stream", "outcome"], registry=registry
        )
        self.errors = Counter(
            "aitasks_updater_errors",
            "Invalid entries (dead-lettered) and batch failures, by reason.",
            ["reason"],
            registry=registry,
        )
        self.lag = Gauge(
            "aitasks_updater_consumer_lag",
            "Entries of the stream not yet delivered to the group.",
            ["stream"],
            registry=registry,
        )
        self.pending = Gauge(
            "aitasks_updater_pending",
            "Entries delivered to the group and not yet acknowledged.",
            ["stream"],
            registry=registry,
        )
        self.freshness = Histogram(
            "aitasks_updater_freshness_seconds",
            "Event written to the stream -> its features committed to the online store.",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.batch = Histogram(
            "aitasks_updater_batch_seconds",
            "Wall time of one batch.",
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.last_batch = Gauge(
            "aitasks_updater_last_batch_timestamp_seconds", "Unix time of the last loop turn.", registry=registry
        )
        self.model = Gauge(
            "aitasks_updater_model_version", "Model version embedding users (0: none).", ["model"], registry=registry
        )


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value


def _entry_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


class Updater:
    """The consumer. ``run()`` loops until :meth:`stop`; :meth:`step` handles one batch (tests, bench)."""

    def __init__(
        self,
        client: Any,
        config: UpdaterConfig,
        *,
        model_loader: Callable[[], ServingModel | None] | None = None,
        known_tracks: Callable[[], frozenset[str]] | None = None,
        telemetry: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from aitasks.runtime.telemetry import Telemetry

        self.client = client
        self.cfg = config
        self.keys = Keys(config.project, config.prefix)
        self.telemetry = telemetry or Telemetry()
        self.metrics = UpdaterMetrics(self.telemetry.registry)
        self._model_loader = model_loader or (lambda: None)
        self._known_tracks = known_tracks or frozenset
        self.model: ServingModel | None = None
        self.catalog: frozenset[str] = frozenset()
        self._clock = clock
        self._stop = threading.Event()
        self._commit = client.register_script(_COMMIT_LUA)
        self._last_turn = time.monotonic()
        self._last_claim = 0.0
        self._last_model_poll = 0.0
        self._own_pending = {config.events_stream: True, config.tracks_stream: True}
        self._ready = False
        #: Freshness of the latest applied events, seconds (for the bench; the histogram is the metric).
        self.freshness_samples: deque[float] = deque(maxlen=200_000)

    # ------------------------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def setup(self) -> None:
        """Create the consumer groups (idempotent), load the model and the catalog."""
        import redis

        for stream in (self.cfg.events_stream, self.cfg.tracks_stream):
            try:
                self.client.xgroup_create(stream, self.cfg.group, id="0", mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self.refresh_model(force=True)
        self._ready = True

    def refresh_model(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_model_poll < self.cfg.model_poll_s:
            return
        self._last_model_poll = now
        model = self._model_loader()
        if model is not None and (self.model is None or model.key != self.model.key):
            self.model = model
            self.metrics.model.labels(model.name).set(model.version)
        self.catalog = self._known_tracks()

    def healthy(self) -> bool:
        return time.monotonic() - self._last_turn < self.cfg.stall_s

    def ready(self) -> bool:
        try:
            return self._ready and bool(self.client.ping())
        except Exception:
            return False

    def run(self) -> None:
        """Loop until stopped: batches of events and tracks, stuck-entry claims, lag gauges."""
        self.setup()
        while not self._stop.is_set():
            self.step()

    def step(self) -> BatchReport:
        """One turn: new tracks first (so events for them validate), then events."""
        self._last_turn = time.monotonic()
        self.metrics.last_batch.set(self._clock())
        self.refresh_model()
        report = BatchReport()
        if self.model is not None:
            entries = self._read(self.cfg.tracks_stream, block=False)
            if entries:
                report.tracks_added += self.handle_tracks(entries)
        entries = self._read(self.cfg.events_stream, block=True)
        if time.monotonic() - self._last_claim >= self.cfg.claim_interval_s:
            self._last_claim = time.monotonic()
            entries += self._claim(self.cfg.events_stream)
            self._update_lag()
        if entries:
            with self.metrics.batch.time():
                sub = self.handle_events(entries)
            for k, v in vars(sub).items():
                if isinstance(v, int):
                    setattr(report, k, getattr(report, k) + v)
            report.reasons = sub.reasons
        return report

    # ------------------------------------------------------------------------------------- reading

    def _read(self, stream: str, *, block: bool) -> list[tuple[str, dict[bytes, bytes]]]:
        # After a (re)start, this consumer's own pending entries first (id 0), until none are left.
        own = self._own_pending.get(stream, False)
        reply = self.client.xreadgroup(
            self.cfg.group,
            self.cfg.consumer,
            {stream: "0" if own else ">"},
            count=self.cfg.batch_size,
            block=None if own or not block else self.cfg.block_ms,
        )
        entries = [(_text(i) or "", f) for _, msgs in (reply or []) for i, f in msgs if f is not None]
        deleted = [(_text(i) or "") for _, msgs in (reply or []) for i, f in msgs if f is None]
        if deleted:
            self.client.xack(stream, self.cfg.group, *deleted)
        if own and not entries and not deleted:
            self._own_pending[stream] = False
        return entries

    def _claim(self, stream: str) -> list[tuple[str, dict[bytes, bytes]]]:
        reply = self.client.xautoclaim(
            stream, self.cfg.group, self.cfg.consumer, self.cfg.claim_idle_ms, start_id="0-0", count=self.cfg.batch_size
        )
        msgs = reply[1] if len(reply) > 1 else []
        deleted = reply[2] if len(reply) > 2 else []
        if deleted:
            self.client.xack(stream, self.cfg.group, *deleted)
        return [(_text(i) or "", f) for i, f in msgs if f]

    def _update_lag(self) -> None:
        for stream in (self.cfg.events_stream, self.cfg.tracks_stream):
            for g in self.client.xinfo_groups(stream):
                name = _text(g.get("name"))
                if name == self.cfg.group:
                    self.metrics.lag.labels(stream).set(float(g.get("lag") or 0))
                    self.metrics.pending.labels(stream).set(float(g.get("pending") or 0))

    # -------------------------------------------------------------------------------------- events

    def handle_events(self, entries: Sequence[tuple[str, dict[bytes, bytes]]]) -> BatchReport:
        """Validate, fold and commit one batch of event entries (see the module docstring)."""
        with self.telemetry.tracer.start_as_current_span("updater.batch") as span:
            span.set_attribute("aitasks.entries", len(entries))
            report = self._handle_events(entries)
            span.set_attribute("aitasks.applied", report.applied)
            span.set_attribute("aitasks.duplicates", report.duplicates)
            span.set_attribute("aitasks.dead_letters", report.dead)
            return report

    def _handle_events(self, entries: Sequence[tuple[str, dict[bytes, bytes]]]) -> BatchReport:
        import polars as pl
        import pyarrow as pa

        from aitasks.data_processing.etl.validate import validate_event_table

        stream = self.cfg.events_stream
        report = BatchReport()
        rows: list[dict[str, str | None]] = []
        for _, fields in entries:
            decoded = {(_text(k) or ""): _text(v) for k, v in fields.items()}
            rows.append({c: decoded.get(c) for c in EVENT_COLUMNS})
        table = pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in EVENT_COLUMNS})
        tracks = {r["track_id"] for r in rows if r["track_id"]}
        unknown = sorted(t for t in tracks if t not in self.catalog)
        event_ids = [r["event_id"] or "" for r in rows]

        pipe = self.client.pipeline(transaction=False)
        if unknown:
            pipe.smismember(self.keys.tracks, unknown)
        track_list = sorted(tracks)
        for t in track_list:
            pipe.hget(self.keys.track_row(t), TRACK_GENRE_FIELD)
        if event_ids:
            pipe.mget([self.keys.seen(e) for e in event_ids])
        replies = pipe.execute()
        pos = 0
        live: set[str] = set()
        if unknown:
            live = {t for t, m in zip(unknown, replies[0], strict=True) if m}
            pos = 1
        genre = {t: fc.decode_value(r) for t, r in zip(track_list, replies[pos : pos + len(track_list)], strict=True)}
        seen_reply = replies[pos + len(track_list)] if event_ids else []
        known = pl.Series("track_id", sorted((tracks - set(unknown)) | live), dtype=pl.String)

        limit = datetime.fromtimestamp(self._clock(), tz=UTC) + timedelta(seconds=FUTURE_TOLERANCE_S)
        good, bad = validate_event_table(table, known, limit)
        dead: list[tuple[str, str, str]] = []
        for row, reason in zip(bad.column("_source_row").to_pylist(), bad.column("_reason").to_pylist(), strict=True):
            dead.append((entries[row][0], reason, json.dumps(rows[row], sort_keys=True)))
            report.reasons[reason] = report.reasons.get(reason, 0) + 1
        acks: list[str] = []
        per_user: dict[str, list[tuple[str, str, Play, str]]] = defaultdict(list)
        batch_ids: set[str] = set()
        other = None if self.model is None else self.model.other_genre_id
        ts_us = good.column("ts").cast(pa.int64()).to_pylist()
        for i, src in enumerate(good.column("_source_row").to_pylist()):
            entry_id, r = entries[src][0], rows[src]
            eid = r["event_id"] or ""
            if seen_reply[src] is not None or eid in batch_ids:
                acks.append(entry_id)
                report.duplicates += 1
                continue
            batch_ids.add(eid)
            gid = genre.get(r["track_id"] or "")
            play = Play(
                ts_us=int(ts_us[i]),
                ms_played=int(good.column("ms_played")[i].as_py()),
                skipped=bool(good.column("skipped")[i].as_py()),
                slot=genre_slot(None if gid is None else int(gid), other),
            )
            per_user[r["user_id"] or ""].append((entry_id, eid, play, r["track_id"] or ""))

        todo = dict(per_user)
        rounds = 0
        while True:
            applied, conflicts = self._commit_users(todo, acks, dead)
            report.applied += applied
            acks, dead = [], []
            if not conflicts:
                break
            rounds += 1
            report.retried_users += len(conflicts)
            todo = {u: todo[u] for u in conflicts}
            if rounds >= _MAX_CONFLICT_ROUNDS:
                # Left pending: XAUTOCLAIM hands them to a consumer again later.
                report.pending_left = sum(len(v) for v in todo.values())
                break
            # Another consumer changed these users: events it applied meanwhile are duplicates now.
            flat = [(u, item) for u, items in todo.items() for item in items]
            marks = self.client.mget([self.keys.seen(item[1]) for _, item in flat])
            todo = defaultdict(list)
            for (u, item), mark in zip(flat, marks, strict=True):
                if mark is None:
                    todo[u].append(item)
                else:
                    acks.append(item[0])
                    report.duplicates += 1
        for reason, n in report.reasons.items():
            self.metrics.errors.labels(_reason_label(reason)).inc(n)
        report.dead = sum(report.reasons.values())
        self.metrics.events.labels(stream, "applied").inc(report.applied)
        self.metrics.events.labels(stream, "duplicate").inc(report.duplicates)
        self.metrics.events.labels(stream, "dead_letter").inc(report.dead)
        return report

    def _commit_users(
        self,
        todo: dict[str, list[tuple[str, str, Play, str]]],
        acks: list[str],
        dead: list[tuple[str, str, str]],
    ) -> tuple[int, list[str]]:
        """Read the users' states, fold, embed, commit in one script; returns (applied events, conflicted users)."""
        cfg = self.cfg
        users = sorted(todo)
        states: dict[str, tuple[str, UserState]] = {}
        if users:
            pipe = self.client.pipeline(transaction=False)
            for u in users:
                pipe.hmget(self.keys.state(u), ["v", "s"])
            for u, (v, s) in zip(users, pipe.execute(), strict=True):
                states[u] = (_text(v) or "0", UserState.from_json(s))
        rows: dict[str, dict[str, float | int] | None] = {}
        for u in users:
            st = states[u][1]
            st.apply((p for _, _, p, _ in todo[u]), lookback_days=cfg.lookback_days, half_life_days=cfg.half_life_days)
            rows[u] = st.features(lookback_days=cfg.lookback_days, half_life_days=cfg.half_life_days)
        vectors: dict[str, bytes] = {}
        model = self.model
        if model is not None and users:
            import struct

            vecs = model.embed_users(users, [rows[u] for u in users])
            for u, vec in zip(users, vecs, strict=True):
                vectors[u] = struct.pack("<q", states[u][1].as_of_us) + vec.astype("<f4").tobytes()
        args: list[Any] = [cfg.events_stream, cfg.group, cfg.dead_letter_stream, cfg.dedupe_ttl_s, cfg.history_len]
        args.append(len(users))
        for u in users:
            version, st = states[u]
            row = rows[u]
            fields = fc.encode_row(USER_FEATURE_VIEW, USER_DTYPES, row, st.as_of_us) if row is not None else {}
            args += [self.keys.state(u), version, st.to_json(), self.keys.user_row(u), len(fields)]
            for k, v in fields.items():
                args += [k, v]
            hist: dict[str, int] = {}
            for _, _, p, track in todo[u]:
                hist[track] = max(hist.get(track, 0), p.ts_us)
            args += [self.keys.hist(u), len(hist)]
            for track, t in sorted(hist.items()):
                args += [f"{t / 1e6:.6f}", track]
            if u in vectors and model is not None:
                args += [self.keys.emb(model.key, u), vectors[u]]
            else:
                args += ["", ""]
            args.append(len(todo[u]))
            for entry_id, eid, _, _ in todo[u]:
                args += [self.keys.seen(eid), entry_id]
        args.append(len(acks))
        args += acks
        args.append(len(dead))
        for entry_id, reason, payload in dead:
            args += [entry_id, self.keys.dlq_seen(f"{cfg.events_stream}:{entry_id}"), reason, payload]
        conflicted = {(_text(k) or "") for k in self._commit(keys=[], args=args)}
        now_ms = self._clock() * 1000
        applied = 0
        lost = []
        for u in users:
            if self.keys.state(u) in conflicted:
                lost.append(u)
                continue
            applied += len(todo[u])
            for entry_id, _, _, _ in todo[u]:
                age = max(0.0, (now_ms - _entry_ms(entry_id)) / 1000)
                self.metrics.freshness.observe(age)
                self.freshness_samples.append(age)
        return applied, lost

    # -------------------------------------------------------------------------------------- tracks

    def handle_tracks(self, entries: Sequence[tuple[str, dict[bytes, bytes]]]) -> int:
        """Embed announced tracks and make them live (see the module docstring); returns tracks added."""
        import pyarrow as pa

        from aitasks.data_processing.etl.catalog import _validate_catalog_chunk
        from aitasks.data_processing.etl.read import _Chunk
        from aitasks.runtime.errors import DataFormatError

        model = self.model
        assert model is not None
        stream = self.cfg.tracks_stream
        good: list[tuple[str, dict[str, Any]]] = []
        pipe = self.client.pipeline(transaction=True)
        now = datetime.fromtimestamp(self._clock(), tz=UTC)
        import numpy as np

        for entry_id, fields in entries:
            decoded = {(_text(k) or ""): _text(v) for k, v in fields.items()}
            row = {c: decoded.get(c) for c in TRACK_COLUMNS}
            table = pa.table({c: pa.array([row[c]], pa.string()) for c in TRACK_COLUMNS})
            try:
                checked = _validate_catalog_chunk(_Chunk(table, np.zeros(1, dtype=np.int64)), now, stream)
            except DataFormatError as exc:
                reason = exc.problem.split(": ", 1)[-1] if hasattr(exc, "problem") else str(exc)
                pipe.xadd(
                    self.cfg.dead_letter_stream,
                    {
                        "entry_id": entry_id,
                        "stream": stream,
                        "reason": f"catalog: {reason}",
                        "payload": json.dumps(row),
                    },
                )
                pipe.xack(stream, self.cfg.group, entry_id)
                self.metrics.errors.labels("catalog").inc()
                self.metrics.events.labels(stream, "dead_letter").inc()
                continue
            rec = checked.to_pylist()[0]
            gid = model.genre_id(rec["genre"])
            good.append(
                (
                    entry_id,
                    {
                        "track_id": rec["track_id"],
                        "track_genre_id": gid,
                        "track_duration_ms": rec["duration_ms"],
                        "track_release_year": rec["release_year"],
                        "track_explicit": int(rec["explicit"]),
                        "track_plays_28d": 0,
                        "track_listeners_28d": 0,
                        "track_skip_rate_28d": 0.0,
                        "track_popularity": 0.0,
                    },
                )
            )
        if good:
            vecs = model.embed_tracks([r for _, r in good])
            ts_us = int(self._clock() * 1e6)
            for (entry_id, r), vec in zip(good, vecs, strict=True):
                tid = r["track_id"]
                pipe.hset(self.keys.items(model.key), tid, vec.astype("<f4").tobytes())
                pipe.sadd(self.keys.tracks, tid)
                pipe.hset(self.keys.track_row(tid), mapping=fc.encode_row(TRACK_FEATURE_VIEW, TRACK_DTYPES, r, ts_us))
                pipe.xack(stream, self.cfg.group, entry_id)
            pipe.incr(self.keys.items_seq(model.key), len(good))
        pipe.execute()
        self.metrics.events.labels(stream, "applied").inc(len(good))
        return len(good)


def _reason_label(reason: str) -> str:
    """A bounded label: the contract's reason code (``bad_id:user_id`` ...), never a value."""
    return reason.split(" ", 1)[0][:64]


# ------------------------------------------------------------------------------------------- wiring


def index_model_loader(settings: Any, source: ModelSource, index_name: str) -> Callable[[], ServingModel | None]:
    """Loads the model of the index ``CURRENT`` points at, once per model version (None: nothing published)."""
    cache: dict[tuple[str, int], ServingModel] = {}

    def load() -> ServingModel | None:
        from aitasks.recommendation_update.publish import NoPublishedIndexError, read_current

        try:
            manifest = read_current(settings.storage_root, index_name)
        except NoPublishedIndexError:
            return None
        key = (manifest.model_name, manifest.model_version)
        if key not in cache:
            cache.clear()
            cache[key] = load_serving_model(settings, source, *key)
        return cache[key]

    return load


def index_catalog(settings: Any, index_name: str) -> Callable[[], frozenset[str]]:
    """The track ids of the current index (the catalog the contract checks events against)."""
    memo: dict[int, frozenset[str]] = {}

    def load() -> frozenset[str]:
        from aitasks.recommendation_update.index import read_id_map
        from aitasks.recommendation_update.publish import NoPublishedIndexError, load_current, read_current

        try:
            manifest = read_current(settings.storage_root, index_name)
        except NoPublishedIndexError:
            return frozenset()
        if manifest.version not in memo:
            memo.clear()
            _, _, directory = load_current(settings.storage_root, index_name)
            memo[manifest.version] = frozenset(read_id_map(directory)[2])
        return memo[manifest.version]

    return load


class _Health(BaseHTTPRequestHandler):
    updater: Updater

    def do_GET(self) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, status, ctype = generate_latest(self.updater.telemetry.registry), 200, CONTENT_TYPE_LATEST
        elif path == "/healthz":
            ok = self.updater.healthy()
            body, status, ctype = (b"ok\n" if ok else b"stalled\n"), (200 if ok else 503), "text/plain"
        elif path == "/readyz":
            ok = self.updater.ready()
            body, status, ctype = (b"ready\n" if ok else b"not ready\n"), (200 if ok else 503), "text/plain"
        else:
            body, status, ctype = b"not found\n", 404, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return  # probes every few seconds: not worth a log line each


def serve_http(updater: Updater, port: int) -> ThreadingHTTPServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` of ``updater`` on ``port`` (a daemon thread)."""
    handler = type("Handler", (_Health,), {"updater": updater})
    server = ThreadingHTTPServer(("0.0.0.0", port), handler)  # noqa: S104 - a pod's probe port
    threading.Thread(target=server.serve_forever, name="updater-http", daemon=True).start()
    return server


def run_updater(settings: Any, config: UpdaterConfig, source: ModelSource) -> None:
    """The ``serve-updates`` process: Redis from settings, SIGTERM/SIGINT stop it after the batch in hand."""
    from aitasks.platform.feature_store.config import RedisOnline
    from aitasks.platform.feature_store.store import redis_client
    from aitasks.runtime.telemetry import default_telemetry

    store = RedisOnline(
        connection_string=settings.redis_url,
        connect_timeout_s=settings.redis_connect_timeout_s,
        socket_timeout_s=max(settings.redis_socket_timeout_s, config.block_ms / 1000 + 5),
    )
    client = redis_client(store)
    updater = Updater(
        client,
        config,
        model_loader=index_model_loader(settings, source, config.index_name),
        known_tracks=index_catalog(settings, config.index_name),
        telemetry=default_telemetry(settings.trace_exporter, settings.otlp_endpoint),
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: updater.stop())
    server = serve_http(updater, config.http_port) if config.http_port else None
    try:
        updater.run()
    finally:
        if server is not None:
            server.shutdown()
        client.close()


def default_consumer() -> str:
    """Pod name (stable across a container restart in the same pod) or host name."""
    return os.environ.get("POD_NAME") or socket.gethostname()
