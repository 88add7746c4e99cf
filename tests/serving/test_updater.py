"""The real-time updater against a real redis-server: features, order, duplicates, poison events, new tracks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest
import redis

from aitasks.serving.online import Keys, OnlineReader
from aitasks.serving.updater import Updater, UpdaterConfig, index_catalog, index_model_loader
from tests.serving.conftest import World

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


def event(i: int, user: str, track: str, *, minutes_ago: float, ms: int = 180_000, skipped: bool = False) -> dict:
    ts = NOW - timedelta(minutes=minutes_ago)
    return {
        "event_id": f"e{i:06d}",
        "user_id": user,
        "track_id": track,
        "ts": ts.isoformat().replace("+00:00", "Z"),
        "ms_played": str(ms),
        "context": "home",
        "skipped": "true" if skipped else "false",
    }


def make_updater(world: World, url: str, **overrides: Any) -> Updater:
    settings = world.settings(url)
    cfg = UpdaterConfig(consumer=overrides.pop("consumer", "c1"), block_ms=50, **overrides)
    up = Updater(
        redis.Redis.from_url(url),
        cfg,
        model_loader=index_model_loader(settings, world.source(), cfg.index_name),
        known_tracks=index_catalog(settings, cfg.index_name),
    )
    up.setup()
    return up


def drain(up: Updater, turns: int = 20) -> None:
    for _ in range(turns):
        up.step()


def batch_features(world: World, events: list[dict], user: str, as_of_us: int) -> dict[str, Any]:
    """What the batch feature code computes for ``user`` at ``as_of_us``, with the model's genre vocabulary."""
    from aitasks.data_processing.features import user_features_frame
    from aitasks.model_training.recommender import read_vocabularies

    vocab = read_vocabularies(world.models_dir / world.model_name / "v1")
    assert vocab is not None
    ev = pl.DataFrame(
        {
            "user_id": [e["user_id"] for e in events],
            "track_id": [e["track_id"] for e in events],
            "ts": [datetime.fromisoformat(e["ts"]) for e in events],
            "ms_played": [int(e["ms_played"]) for e in events],
            "skipped": [e["skipped"] == "true" for e in events],
        }
    ).with_columns(pl.col("ts").dt.cast_time_unit("us"))
    tracks = pl.DataFrame(
        {
            "track_id": world.track_ids,
            "genre": [world.genres[t] for t in world.track_ids],
            "duration_ms": [200_000] * len(world.track_ids),
            "release_year": [2020] * len(world.track_ids),
            "explicit": [False] * len(world.track_ids),
        }
    )
    t = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=as_of_us)
    frame = user_features_frame(ev, tracks, snapshots=[t], genre_vocabulary=vocab.genres)
    return frame.filter(pl.col("user_id") == user).row(0, named=True)


def seed_track_genres(world: World, client: redis.Redis, project: str = "aitasks") -> None:
    """Feast ``track_features`` rows with each track's genre id (what materialize writes)."""
    from aitasks.platform.feature_store.schema import TRACK_FEATURE_VIEW
    from aitasks.serving import feast_codec as fc
    from aitasks.serving.model import ServingModel
    from aitasks.serving.online import TRACK_DTYPES

    model = ServingModel(world.model_name, 1, world.models_dir / world.model_name / "v1")
    keys = Keys(project)
    pipe = client.pipeline()
    for t in world.track_ids:
        row = {"track_genre_id": model.genre_id(world.genres[t])}
        pipe.hset(keys.track_row(t), mapping=fc.encode_row(TRACK_FEATURE_VIEW, TRACK_DTYPES, row, 1))
    pipe.execute()


def test_features_match_the_batch_features_whatever_the_arrival_order(world: World, redis_server: str) -> None:
    client = redis.Redis.from_url(redis_server)
    seed_track_genres(world, client)
    rng = np.random.default_rng(3)
    # Windows are cut at day granularity (see aitasks.serving.state): no event near the day the 7-day
    # cut falls on, where the batch features cut at the microsecond.
    day = 60 * 24
    ages = [float(rng.uniform(1, 5 * day) if i % 2 else rng.uniform(9 * day, 20 * day)) for i in range(120)]
    events = [
        event(
            i,
            "u001",
            world.track_ids[int(rng.integers(50))],
            minutes_ago=ages[i],
            skipped=bool(rng.random() < 0.3),
            ms=int(rng.integers(1000, 300_000)),
        )
        for i in range(120)
    ]
    shuffled = [events[i] for i in rng.permutation(len(events))]
    for e in shuffled:
        client.xadd("aitasks:events", e)
    up = make_updater(world, redis_server, batch_size=17)
    drain(up)

    reader = OnlineReader(client, Keys("aitasks"))
    [row] = reader.users(["u001"])
    assert row is not None
    last = max(datetime.fromisoformat(e["ts"]) for e in events)
    as_of = int((last - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1)) + 1
    want = batch_features(world, events, "u001", as_of)
    for name, value in row.items():
        assert value == pytest.approx(want[name], rel=1e-5, abs=1e-6), name
    assert client.xpending("aitasks:events", "aitasks-updater")["pending"] == 0
    # The history holds the played tracks, newest first by play time.
    hist = [t.decode() for t in client.zrevrange(Keys("aitasks").hist("u001"), 0, -1)]
    latest: dict[str, datetime] = {}
    for e in events:
        latest[e["track_id"]] = max(
            latest.get(e["track_id"], NOW - timedelta(days=999)), datetime.fromisoformat(e["ts"])
        )
    assert hist == sorted(latest, key=lambda t: (latest[t], t), reverse=True)


def test_duplicates_apply_once(world: World, redis_server: str) -> None:
    client = redis.Redis.from_url(redis_server)
    events = [event(i, "u002", world.track_ids[i], minutes_ago=10 + i) for i in range(10)]
    for e in events + events[:4]:  # redelivered by the producer: same event ids
        client.xadd("aitasks:events", e)
    up = make_updater(world, redis_server)
    drain(up, 5)
    for e in events[5:]:  # and again, in a later batch
        client.xadd("aitasks:events", e)
    drain(up, 5)
    [row] = OnlineReader(client, Keys("aitasks")).users(["u002"])
    assert row is not None and row["user_plays_28d"] == 10
    assert up.metrics.events.labels("aitasks:events", "duplicate")._value.get() == 9


def test_poison_events_go_to_the_dead_letter_stream_with_their_reason(world: World, redis_server: str) -> None:
    client = redis.Redis.from_url(redis_server)
    good = event(1, "u003", world.track_ids[0], minutes_ago=5)
    poison = [
        {**good, "event_id": "p1", "user_id": "bad user!"},
        {**good, "event_id": "p2", "ms_played": "-4"},
        {**good, "event_id": "p3", "ts": "2026-01-01T00:00:00"},
        {**good, "event_id": "p4", "track_id": "no-such-track"},
        {k: v for k, v in good.items() if k != "context"} | {"event_id": "p5"},
        {**good, "event_id": "p6", "ts": (NOW + timedelta(days=2)).isoformat()},
        {**good, "event_id": "p7", "skipped": "maybe"},
    ]
    client.xadd("aitasks:events", good)
    for p in poison:
        client.xadd("aitasks:events", p)
    up = make_updater(world, redis_server)
    drain(up, 3)
    dead = client.xrange("aitasks:events:dead")
    reasons = {__import__("json").loads(f[b"payload"])["event_id"]: f[b"reason"].decode() for _, f in dead}
    assert reasons == {
        "p1": "bad_id:user_id",
        "p2": "out_of_range:ms_played",
        "p3": "naive_timestamp",
        "p4": "unknown_track_id",
        "p5": "missing_column_value:context",
        "p6": "future_timestamp",
        "p7": "bad_type:skipped",
    }
    [row] = OnlineReader(client, Keys("aitasks")).users(["u003"])
    assert row is not None and row["user_plays_28d"] == 1, "the good event of the batch is applied"
    assert client.xpending("aitasks:events", "aitasks-updater")["pending"] == 0
    assert up.metrics.errors.labels("bad_id:user_id")._value.get() == 1


def test_new_tracks_are_embedded_and_become_known(world: World, redis_server: str) -> None:
    client = redis.Redis.from_url(redis_server)
    up = make_updater(world, redis_server)
    client.xadd(
        "aitasks:tracks",
        {
            "track_id": "fresh-1",
            "artist_id": "a1",
            "genre": "Brand New Genre",
            "duration_ms": "200000",
            "release_year": "2026",
            "explicit": "false",
        },
    )
    client.xadd(
        "aitasks:tracks",
        {
            "track_id": "bad track",
            "artist_id": "a1",
            "genre": "Rock",
            "duration_ms": "200000",
            "release_year": "2026",
            "explicit": "false",
        },
    )
    drain(up, 2)
    keys = Keys("aitasks")
    assert up.model is not None
    vec = np.frombuffer(client.hget(keys.items(up.model.key), "fresh-1"), dtype="<f4")
    assert vec.shape == (16,) and abs(float(np.linalg.norm(vec)) - 1) < 1e-4
    assert client.sismember(keys.tracks, "fresh-1")
    [(_, dead)] = client.xrange("aitasks:events:dead")
    assert b"track_id" in dead[b"reason"]
    # An event for the new track is now valid.
    client.xadd("aitasks:events", event(9, "u004", "fresh-1", minutes_ago=1))
    drain(up, 2)
    assert client.xlen("aitasks:events:dead") == 1
    [row] = OnlineReader(client, keys).users(["u004"])
    assert row is not None and row["user_plays_28d"] == 1
