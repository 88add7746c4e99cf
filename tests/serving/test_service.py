"""The recommendation service against a real redis-server and a published index: answers, errors, hot reload."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
import requests

from aitasks.serving.online import Keys
from aitasks.serving.service import ServiceConfig, build
from aitasks.serving.updater import Updater, UpdaterConfig, index_catalog, index_model_loader
from tests.data_processing.conftest import free_port
from tests.serving.conftest import World, publish_for
from tests.serving.test_updater import event

pytestmark = pytest.mark.integration


def mark_materialized(url: str, project: str = "aitasks") -> None:
    redis.Redis.from_url(url).set(Keys(project).sentinel, "{}")


class Http:
    """``requests`` with a base URL."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.base_url + path, timeout=10, **kwargs)


@contextlib.contextmanager
def serving(world: World, url: str, **cfg: Any) -> Iterator[tuple[Http, Any]]:
    """A real uvicorn server on a free port, in a thread."""
    import uvicorn

    app, rec = build(world.settings(url), ServiceConfig(**cfg), world.source())
    rec.start()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Http(f"http://127.0.0.1:{port}"), rec
    finally:
        rec.stop()
        server.should_exit = True
        thread.join(timeout=10)


def test_answers_errors_and_cold_users(world: World, redis_server: str) -> None:
    mark_materialized(redis_server)
    with serving(world, redis_server) as (http, _):
        ok = http.get("/v1/users/u005/recommendations", params={"k": 5})
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["source"] == "model" and len(body["items"]) == 5 and body["index_version"] == 1
        assert body["embedding"] == "computed"
        scores = [i["score"] for i in body["items"]]
        assert scores == sorted(scores, reverse=True)
        assert "traceparent" in ok.headers

        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        traced = http.get("/v1/users/u005/recommendations", headers={"traceparent": parent})
        assert traced.headers["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"

        excluded = [i["track_id"] for i in body["items"][:2]]
        again = http.get("/v1/users/u005/recommendations", params={"k": 5, "exclude": ",".join(excluded)}).json()
        assert not set(excluded) & {i["track_id"] for i in again["items"]} and again["excluded"] == 2

        cold = http.get("/v1/users/never-seen/recommendations", params={"k": 3}).json()
        assert cold["source"] == "popularity" and cold["embedding"] == "none"
        assert [i["track_id"] for i in cold["items"]] == world.track_ids[:3]
        assert http.get("/v1/users/never-seen/recommendations", params={"fallback": "false"}).status_code == 404

        bad = http.get("/v1/users/bad%20user!/recommendations")
        assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "user_id"
        for params, field in (({"k": 0}, "k"), ({"k": "ten"}, "k"), ({"exclude": "ok,not ok"}, "exclude")):
            r = http.get("/v1/users/u005/recommendations", params=params)
            assert r.status_code == 422, params
            assert r.json()["detail"][0]["field"] == field, r.json()
        assert http.get("/openapi.json").json()["paths"]["/v1/users/{user_id}/recommendations"]
        assert http.get("/healthz").status_code == 200 and http.get("/readyz").status_code == 200
        metrics = http.get("/metrics").text
        assert "aitasks_api_request_duration_seconds_bucket" in metrics and "aitasks_api_index_version 1.0" in metrics

    redis.Redis.from_url(redis_server).delete(Keys("aitasks").sentinel)
    with serving(world, redis_server, ready_cache_s=0) as (http, _):
        r = http.get("/v1/users/u005/recommendations")
        assert r.status_code == 503 and "materialization" in r.json()["detail"]


def test_nothing_published_is_503(world: World, redis_server: str) -> None:
    mark_materialized(redis_server)
    with serving(world, redis_server, index_name="other-index") as (http, _):
        r = http.get("/v1/users/u005/recommendations")
        assert r.status_code == 503 and "other-index" in r.json()["detail"]
        assert http.get("/readyz").status_code == 503


def test_played_tracks_live_tracks_and_the_updaters_embedding(world: World, redis_server: str) -> None:
    mark_materialized(redis_server)
    client = redis.Redis.from_url(redis_server)
    settings = world.settings(redis_server)
    up = Updater(
        client,
        UpdaterConfig(consumer="c1", block_ms=20),
        model_loader=index_model_loader(settings, world.source(), "reco-tracks"),
        known_tracks=index_catalog(settings, "reco-tracks"),
    )
    up.setup()
    with serving(world, redis_server, reload_s=0.2) as (http, _):
        before = http.get("/v1/users/u007/recommendations", params={"k": 10}).json()
        top = [i["track_id"] for i in before["items"]]
        for n, t in enumerate(top[:3]):
            client.xadd("aitasks:events", event(100 + n, "u007", t, minutes_ago=5 + n))
        for _ in range(3):
            up.step()
        after = http.get("/v1/users/u007/recommendations", params={"k": 10}).json()
        assert after["embedding"] == "updater" and after["features_as_of"] is not None
        assert not set(top[:3]) & {i["track_id"] for i in after["items"]}, "played tracks are filtered"
        kept = http.get("/v1/users/u007/recommendations", params={"k": 300, "filter_played": "false"}).json()
        assert set(top[:3]) <= {i["track_id"] for i in kept["items"]}

        # A new track announced on the stream is served without a restart.
        client.xadd(
            "aitasks:tracks",
            {
                "track_id": "fresh-9",
                "artist_id": "a9",
                "genre": "Genre A",
                "duration_ms": "180000",
                "release_year": "2026",
                "explicit": "false",
            },
        )
        up.step()
        assert up.model is not None
        vec = np.frombuffer(client.hget(Keys("aitasks").items(up.model.key), "fresh-9"), dtype="<f4")
        # The user whose embedding is closest to the new track: it must come first for them.
        deadline = time.monotonic() + 10
        while True:
            got = http.get("/v1/users/u007/recommendations", params={"k": 301}).json()
            if got["live_items"] == 1:
                break
            assert time.monotonic() < deadline, "live track never loaded"
            time.sleep(0.1)
        assert "fresh-9" in {i["track_id"] for i in got["items"]}
        score = next(i["score"] for i in got["items"] if i["track_id"] == "fresh-9")
        emb = np.frombuffer(client.get(Keys("aitasks").emb(up.model.key, "u007")), dtype="<f4", offset=8)
        assert score == pytest.approx(float(vec @ emb), abs=1e-5)


def test_hot_reload_under_load_drops_no_request(world: World, redis_server: str) -> None:
    mark_materialized(redis_server)
    with serving(world, redis_server, reload_s=0.2) as (http, rec):
        # One list per client: each client's requests are sequential, so its own answers are in request order.
        # (A shared list is in completion order: a request in flight at the swap rightly finishes on the old
        # snapshot and may land after another client's first new answer.)
        per_client: list[list[int]] = [[], []]
        errors: list[str] = []
        stop = threading.Event()

        def load(seen: list[int]) -> None:
            c = Http(http.base_url)
            while not stop.is_set():
                r = c.get("/v1/users/u009/recommendations", params={"k": 10})
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")
                else:
                    seen.append(r.json()["model_version"])

        threads = [threading.Thread(target=load, args=(seen,)) for seen in per_client]
        for t in threads:
            t.start()
        time.sleep(0.5)
        publish_for(world, 2, seed=2)  # a new champion and its index
        deadline = time.monotonic() + 30
        while not all(seen and seen[-1] == 2 for seen in per_client):
            assert time.monotonic() < deadline, "never switched to the new version"
            time.sleep(0.05)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        for seen in per_client:
            assert seen[0] == 1 and seen[-1] == 2
            switch = seen.index(2)
            assert all(v == 2 for v in seen[switch:]), "no answer from the old version after the switch"
        assert rec.snapshot.manifest.version == 2


def test_the_cli_asks_a_running_service(world: World, redis_server: str) -> None:
    import json
    import os
    import subprocess
    import sys

    mark_materialized(redis_server)
    with serving(world, redis_server) as (http, _):
        want = http.get("/v1/users/u005/recommendations", params={"k": 4}).json()
        argv = [sys.executable, "-m", "aitasks.cli", "recommend", "--user", "u005", "--k", "4", "--json"]
        env = {**os.environ, "AITASKS_RECOMMEND_API": http.base_url}
        out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120, env=env)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["items"] == want["items"]
        bad = subprocess.run(
            [*argv[:4], "--user", "not valid!", "--api", http.base_url], check=False, capture_output=True, text=True
        )
        assert bad.returncode == 3 and "user_id" in bad.stderr, bad.stderr
