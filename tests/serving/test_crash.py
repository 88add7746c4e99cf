"""Crash safety of ``aitasks serve-updates``: SIGKILL mid-batch and restart lose nothing and apply nothing twice;
SIGTERM exits cleanly; the probes and metrics answer over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import redis
import requests

from aitasks.serving.online import Keys, OnlineReader
from tests.data_processing.conftest import free_port
from tests.serving.conftest import World
from tests.serving.test_updater import event

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def start(world: World, url: str, consumer: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AITASKS_REDIS_URL": url,
        "AITASKS_STORAGE_ROOT": world.storage_root,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
    }
    argv = [sys.executable, "-m", "aitasks.cli", "serve-updates", "--consumer", consumer]
    argv += ["--model-source", "dir", "--models-dir", str(world.models_dir), "--batch-size", "100"]
    argv += ["--claim-idle-ms", "300", "--block-ms", "50", *extra]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def applied(client: redis.Redis) -> int:
    return sum(1 for _ in client.scan_iter(match=Keys("aitasks").seen("*"), count=1000))


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise AssertionError(f"updater exited with {proc.returncode} while waiting for {what}:\n{out[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.slow
def test_sigkill_mid_batch_and_restart_lose_nothing_and_double_nothing(world: World, redis_server: str) -> None:
    client = redis.Redis.from_url(redis_server)
    rng = np.random.default_rng(11)
    events = [
        event(
            i,
            world.user_ids[int(rng.integers(len(world.user_ids)))],
            world.track_ids[int(rng.integers(300))],
            minutes_ago=float(rng.uniform(1, 60 * 24)),
        )
        for i in range(4000)
    ]
    redelivered = [events[int(j)] for j in rng.choice(len(events), 400, replace=False)]
    pipe = client.pipeline()
    for e in events + redelivered:
        pipe.xadd("aitasks:events", e)
    pipe.execute()
    total = len(events)

    first = start(world, redis_server, "c1")
    wait_until(lambda: applied(client) >= total // 5, 120, "a fifth of the events", first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    done_at_kill = applied(client)
    assert done_at_kill < total, "killed after the end: the test proves nothing"

    # A second consumer takes over the dead one's pending entries (XAUTOCLAIM), is killed too, and
    # restarts under its own name (its own pending entries first).
    second = start(world, redis_server, "c2")
    wait_until(lambda: applied(client) >= done_at_kill + (total - done_at_kill) // 3, 120, "progress", second)
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=10)
    third = start(world, redis_server, "c2")
    try:
        wait_until(
            lambda: (
                client.xpending("aitasks:events", "aitasks-updater")["pending"] == 0
                and applied(client) == total
                and (client.xinfo_groups("aitasks:events")[0]["lag"] or 0) == 0
            ),
            180,
            "every entry applied and acknowledged",
            third,
        )
    finally:
        third.send_signal(signal.SIGTERM)
        third.wait(timeout=30)

    per_user = Counter(e["user_id"] for e in events)
    rows = OnlineReader(client, Keys("aitasks")).users(sorted(per_user))
    got = {u: (r or {}).get("user_plays_28d") for u, r in zip(sorted(per_user), rows, strict=True)}
    assert got == dict(per_user), "every event applied exactly once"
    assert client.xlen("aitasks:events:dead") == 0


def test_sigterm_exits_cleanly_and_probes_answer(world: World, redis_server: str) -> None:
    port = free_port()
    proc = start(world, redis_server, "c9", "--port", str(port))
    try:

        def up() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
            except requests.RequestException:  # not listening yet, or busy loading the model
                return False

        wait_until(up, 60, "readiness", proc)
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        client = redis.Redis.from_url(redis_server)
        client.xadd("aitasks:events", event(1, "u001", world.track_ids[0], minutes_ago=1))
        client.xadd("aitasks:events", {**event(2, "u001", world.track_ids[0], minutes_ago=1), "ms_played": "x"})
        wait_until(lambda: applied(client) == 1 and client.xlen("aitasks:events:dead") == 1, 30, "the events", proc)
        time.sleep(0.3)
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'aitasks_updater_events_total{outcome="applied",stream="aitasks:events"} 1.0' in metrics
        assert 'aitasks_updater_errors_total{reason="bad_type:ms_played"} 1.0' in metrics
        assert "aitasks_updater_freshness_seconds_bucket" in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
